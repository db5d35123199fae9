"""A member that was away catches up: from the leader's Raft log, and from tiles.

    python -m bench.bench_catch_up [--events N]

A 3-member cluster (node/cluster_cli.init_cluster, all members on this machine) takes
N events in batches of 100 while one follower is stopped; the follower is then started
again and timed until it serves the leader's checkpoint. Twice: with Raft log
compaction off (`raft_log_keep = 0`: the leader replicates every batch it missed, as
AppendEntries), and with a small `raft_log_keep` (the leader has forgotten those rows:
the follower is sent a snapshot and fetches the entries as tile bundles, each checked,
then takes the last few batches from the Raft log). The time includes the process's
start and its recovery of what it held; the figure from the member's own log line
("caught up from tiles") is the fetch and check alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_cluster import BATCH, batches, spread_closed
from bench.bench_node import register_controller

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from clusterproc import LocalCluster

KEEP = 16


async def scenario(directory: Path, events: int, keep: int) -> None:
    local = LocalCluster(directory, env={"CONSENT_LEDGER_RAFT_LOG_KEEP": str(keep)})
    local.start()
    try:
        leader = local.wait_leader()
        away = next(m for m in sorted(local.members) if m != leader)
        key = await register_controller(local.url(leader), local.dir / "keys")
        local.kill(away)
        bodies = batches(key, events)
        rate, _ = await spread_closed([local.url(leader)], bodies, 16, seconds=3600)
        info = local.info(leader)
        assert info is not None
        size = info["checkpoint_size"]
        started = time.perf_counter()
        local.members[away].start(timeout=600)
        local.wait_published(away, size, timeout=600)
        took = time.perf_counter() - started
        lines = [json.loads(line) for line in local.members[away].stderr().splitlines()
                 if line.startswith("{")]
        tiles = [line for line in lines if line["msg"] == "caught up from tiles"]
        how = "Raft log (no compaction)" if keep == 0 else \
            f"tiles (raft_log_keep = {keep}; the leader kept Raft rows from " \
            f"{info['raft_first']} of {info['raft_last']})"
        print(f"from the {how}: {size:,} entries written at {rate:,.0f} events/s; "
              f"caught up in {took:.2f} s ({size / took:,.0f} entries/s, process start "
              "included)", flush=True)
        for line in tiles:
            print(f"    tiles: {line['fetched']:,} entries fetched and checked in "
                  f"{line['seconds']:.2f} s ({line['fetched'] / line['seconds']:,.0f} "
                  "entries/s)", flush=True)
    finally:
        local.stop_all()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000)
    args = parser.parse_args(argv)
    events = args.events // BATCH * BATCH
    with tempfile.TemporaryDirectory(prefix="bench-catch-up-") as tmp:
        for keep in (0, KEEP):
            asyncio.run(scenario(Path(tmp) / f"keep-{keep}", events, keep))


if __name__ == "__main__":
    main()
