"""Cluster members take state snapshots of what was published, and a member killed and
restarted replays only the entries after its newest one, then catches up with the rest."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
from clusterproc import LocalCluster
from factories import grant
from nodeclient import now_ms, post, register_controller
from test_snapshots import recoveries, snapshot_sizes

from ledger.signed import sign_batch
from node.snapshots import due_after

EVERY = 40  # entries between snapshots, so that a few dozen events make several


def wait_for_snapshot(cluster: LocalCluster, member: str, above: int,
                      timeout: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sizes = snapshot_sizes(cluster.members[member])
        if sizes and sizes[0] > above:
            return sizes
        time.sleep(0.02)  # polling a condition with a deadline
    raise AssertionError(f"{member} stored no snapshot above {above}: "
                         f"{snapshot_sizes(cluster.members[member])}")


async def write_batches(cluster: LocalCluster, member: str, count: int, first: int,
                        per_batch: int = 10) -> int:
    """`count` requests of `per_batch` grants each (a Raft entry each, if small), one
    after the other; the last checkpoint size."""
    async with aiohttp.ClientSession() as s:
        key = await register_controller(s, cluster.url(member), cluster.operator_key)
        size = 0
        for b in range(first, first + count):
            t = now_ms()
            events = [grant(subject=bytes([b]) * 28 + i.to_bytes(4, "big"), consented_at=t,
                            valid_until=t + 10**9) for i in range(per_batch)]
            status, body, _ = await post(s, cluster.url(member), sign_batch(events, key))
            assert status == 200, body
            size = int(body["checkpoint"].split("\n")[1])
        return size


def test_members_snapshot_what_was_published_and_restart_from_it(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "cluster")
    for member in cluster.members:
        with open(cluster.dir / f"{member}.toml", "a") as toml:
            # Builds at full priority: at nice 19 they would wait on the suite's other
            # worker.
            toml.write(f"snapshot_every = {EVERY}\nsnapshot_nice = 0\n")
    cluster.start()
    try:
        leader = cluster.wait_leader()
        size = asyncio.run(write_batches(cluster, leader, 12, first=0))
        follower = next(m for m in sorted(cluster.members) if m != leader)
        # Every member snapshots sizes it published: committed, on its own disk; each
        # at its own first size (n1 at 40, n2 at 53, n3 at 66 or later), not all at once;
        # the leader, on whom every write waits, one interval later than that.
        for position, member in enumerate(sorted(cluster.members)):
            sizes = wait_for_snapshot(cluster, member, above=0)
            assert all(0 < s <= size for s in sizes), (member, sizes, size)
            first = due_after(0, EVERY, EVERY * position // 3)
            if member == leader:
                first = due_after(first, EVERY)
            assert sizes[-1] >= first, (member, leader, sizes)
        taken = wait_for_snapshot(cluster, follower, above=EVERY)

        cluster.kill(follower)
        size = asyncio.run(write_batches(cluster, leader, 4, first=12))
        cluster.members[follower].start()
        cluster.wait_published(follower, size)

        first_start, recovered = recoveries(cluster.members[follower])
        assert first_start["size"] == 0
        newest = max(taken)
        assert recovered["snapshot"] >= newest  # not a replay from genesis
        assert recovered["replayed"] == recovered["size"] - recovered["snapshot"]
        assert recovered["replayed"] < recovered["size"] - EVERY
        # What it serves after catching up is the whole log, verified from genesis.
        assert cluster.verified_size(follower) >= size
    finally:
        cluster.stop_all()
