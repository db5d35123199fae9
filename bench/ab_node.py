"""One node, this checkout against another revision, run in alternation.

    python -m bench.ab_node REV [--pairs N] [--seconds S] [--rate EVENTS_PER_S]

This machine's speed moves by a third within minutes, so two benchmark runs an hour
apart compare the hours, not the code. Here the two versions take turns (ABBA: the
order flips every pair, so a drift favours neither), each run on a fresh node: 16
clients sending pre-signed batches of 100 for S seconds (events/s, and the node's CPU
per event, its decoding process included), then an open loop at a fixed rate for S
seconds (p50 and p99; the same rate for both, so the latencies compare). REV is checked
out in a temporary git worktree; the node runs from each checkout's own code.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.bench_cluster import batches, cpu_seconds, percentile, spread_closed, spread_open
from bench.bench_node import register_controller

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from nodeproc import NodeProcess

HERE = Path(__file__).resolve().parents[1]
CLIENTS = 16


@dataclass
class Run:
    version: str
    events_per_s: float
    cpu_us_per_event: float
    p50_ms: float
    p99_ms: float


def _family(pid: int) -> list[int]:
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [pid, *(int(c) for c in children.stdout.split())]


async def one_run(version: str, root: Path, directory: Path, seconds: float,
                  rate: float) -> Run:
    node = NodeProcess(directory / "data", "--origin", "bench.example/ab", root=root)
    url = node.start()
    try:
        assert node.proc is not None
        key = await register_controller(url, node.data_dir)
        closed_bodies = batches(key, int(20_000 * seconds))
        open_bodies = batches(key, int(rate * seconds) + 100)
        pids = _family(node.proc.pid)
        before = sum(cpu_seconds(p) for p in pids)
        events_per_s, _ = await spread_closed([url], closed_bodies, CLIENTS, seconds)
        spent = sum(cpu_seconds(p) for p in pids) - before
        latencies = await spread_open([url], open_bodies, rate / 100, seconds)
    finally:
        node.stop()
    return Run(version, events_per_s, 1e6 * spent / (events_per_s * seconds),
               percentile(latencies, 50), percentile(latencies, 99))


def _show(run: Run) -> None:
    print(f"{run.version:6} {run.events_per_s:10,.0f} {run.cpu_us_per_event:10.1f} "
          f"{run.p50_ms:8.1f} {run.p99_ms:8.1f}", flush=True)


async def compare(rev: str, pairs: int, seconds: float, rate: float) -> None:
    with tempfile.TemporaryDirectory(prefix="ab-node-") as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(HERE), "worktree", "add", "--detach", "-q",
                        str(base), rev], check=True)
        try:
            print(f"{'':6} {'events/s':>10} {'CPU µs/ev':>10} {'p50 ms':>8} {'p99 ms':>8}"
                  f"   (16 clients; open loop at {rate:,.0f}/s)")
            runs: list[Run] = []
            for i in range(pairs):
                order = [("base", base), ("head", HERE)]
                for version, root in order if i % 2 == 0 else reversed(order):
                    run = await one_run(version, root, Path(tmp) / f"{i}-{version}",
                                        seconds, rate)
                    _show(run)
                    runs.append(run)
        finally:
            subprocess.run(["git", "-C", str(HERE), "worktree", "remove", "--force",
                            str(base)], check=False)
    head = [r for r in runs if r.version == "head"]
    base_runs = [r for r in runs if r.version == "base"]
    ratios = [h.events_per_s / b.events_per_s for h, b in zip(head, base_runs, strict=True)]
    print(f"medians: events/s {statistics.median(r.events_per_s for r in base_runs):,.0f} "
          f"-> {statistics.median(r.events_per_s for r in head):,.0f} (pairs, head/base: "
          f"{' '.join(f'{x:.2f}' for x in ratios)}); p99 ms "
          f"{statistics.median(r.p99_ms for r in base_runs):.1f} -> "
          f"{statistics.median(r.p99_ms for r in head):.1f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rev", help="the revision to compare this checkout with")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rate", type=float, default=4000.0,
                        help="events/s offered in the open loop (default 4,000)")
    args = parser.parse_args(argv)
    asyncio.run(compare(args.rev, args.pairs, args.seconds, args.rate))


if __name__ == "__main__":
    main()
