"""Raft core throughput: step()/ready()/advance() of ledger.raft with no I/O at all.

    python -m bench.bench_raft [--budget SECONDS] [--proposals N]

One leader and 2 or 4 follower cores in one process, wired back to back: each Ready is
"persisted" by doing nothing and its messages are stepped straight into their
destination, after attaching the one payload every entry carries (the I/O layer's only
duty on that path). So the figures are the core's own cost (the ceiling it puts on a
node), not a cluster's: no disk, no network, no encoding. The leader
proposes a window of entries, then every core is pumped until they are committed; the
AppendEntries carry at most 1 or 64 entries. Printed per configuration: messages
stepped per second (all cores together), entries committed per second, and Readies
(ready() + advance() pairs) per second.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import deque

from ledger.raft import AppendEntries, Entry, HardState, Membership, Message, RaftLog, RaftNode

WINDOW = 64  # entries proposed before pumping (a node batching concurrent writes)
PAYLOAD = b"x" * 64


class Bench:
    def __init__(self, followers: int, max_entries: int) -> None:
        ids = [f"n{i}" for i in range(followers + 1)]
        members = Membership(frozenset(ids))
        rng = random.Random(1)
        self.cores = {i: RaftNode(i, membership=members, hard_state=HardState(0, None),
                                  log=RaftLog.restore([], []), rng=rng,
                                  max_entries_per_append=max_entries) for i in ids}
        self.leader = self.cores[ids[0]]
        self.queue: deque[Message] = deque()
        self.steps = 0
        self.readies = 0
        for _ in range(25):  # the first to time out is elected: make it ids[0]
            self.leader.tick()
        self.pump()
        if self.leader.role != "leader":
            raise RuntimeError("the benchmark leader was not elected")

    def pump(self) -> None:
        """Run every core's Readies and deliver every message until all is quiet."""
        cores, queue = self.cores, self.queue
        while True:
            for core in cores.values():
                while core.has_ready():
                    ready = core.ready()
                    for msg in ready.messages:
                        queue.append(_with_payloads(msg)
                                     if isinstance(msg, AppendEntries) else msg)
                    core.advance(ready)
                    self.readies += 1
            if not queue:
                return
            while queue:
                msg = queue.popleft()
                cores[msg.dst].step(msg)
                self.steps += 1

    def commit(self, proposals: int, budget: float) -> tuple[int, float]:
        """Propose and commit up to proposals entries; (entries committed, seconds)."""
        leader = self.leader
        start_commit = leader.commit_index
        start = time.perf_counter()
        deadline = start + budget
        done = 0
        while done < proposals and time.perf_counter() < deadline:
            for _ in range(WINDOW):
                leader.propose(PAYLOAD)
            done += WINDOW
            self.pump()
            leader.tick()  # heartbeats keep check-quorum satisfied on long runs
            self.pump()
        seconds = time.perf_counter() - start
        if leader.role != "leader" or leader.commit_index != leader.last_index:
            raise RuntimeError("the benchmark leader lost its lead or left entries uncommitted")
        return leader.commit_index - start_commit, seconds


def _with_payloads(msg: AppendEntries) -> AppendEntries:
    if all(e.data is not None for e in msg.entries):
        return msg
    entries = tuple(e if e.data is not None else Entry(e.index, e.term, e.kind, PAYLOAD)
                    for e in msg.entries)
    return AppendEntries(msg.term, msg.src, msg.dst, msg.prev_index, msg.prev_term, entries,
                         msg.commit)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_raft", description=__doc__)
    parser.add_argument("--budget", type=float, default=2.0, help="seconds per figure")
    parser.add_argument("--proposals", type=int, default=200_000)
    args = parser.parse_args(argv)
    for followers in (2, 4):
        for max_entries in (1, 64):
            bench = Bench(followers, max_entries)
            steps0, readies0 = bench.steps, bench.readies
            committed, seconds = bench.commit(args.proposals, args.budget)
            steps, readies = bench.steps - steps0, bench.readies - readies0
            name = f"leader + {followers} followers, {max_entries:>2} entries/append"
            print(f"{name:<40} {steps / seconds:>10,.0f} msgs/s {committed / seconds:>10,.0f} "
                  f"entries/s {readies / seconds:>9,.0f} readies/s   "
                  f"({committed:,} entries in {seconds:.2f} s)", flush=True)


if __name__ == "__main__":
    main()
