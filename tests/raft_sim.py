"""A seeded, deterministic simulator for the Raft core (ledger/raft).

Every random choice comes from one random.Random(seed), so a failing seed replays
exactly; the failure names the seed and the last events. The simulator plays the I/O
layer of every node (persisting Readies in order, attaching batch payloads from the
persisted log, verifying entries: a payload starting with b"BAD" is invalid) and an
adversarial network (loss, duplication, reordering, delay, partitions), crashes nodes
(a crash between ready() and advance() loses that Ready), restarts them from their
disks, proposes to whoever leads, changes membership, hands leadership over and makes
leaders propose invalid payloads. Nodes compact their logs at random committed points,
so that lagging followers are sent snapshots (whose data is the chain root there, checked
against the committed log when installed). After every step it checks the safety invariants; at
the end it heals everything and checks that a leader emerges and a proposal commits on
every member.

    python -m tests.raft_sim --seeds 10000 [--steps N] [--nodes 5] [--seed S]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ledger.raft import (
    AppendEntries,
    AppendReply,
    Entry,
    EntryKind,
    HardState,
    Membership,
    MembershipChangeError,
    Message,
    NotLeaderError,
    RaftLog,
    RaftNode,
    Snapshot,
    VoteReply,
)
from ledger.raft.cosigning import CosignGuard, CosignRefused
from ledger.raft.messages import may_precede_persistence

GENESIS_ROOT = b"\0" * 32
LIVENESS_TICKS = 1500


class SimFailure(AssertionError):
    pass


@dataclass
class Disk:
    """What survives a crash."""

    hard_state: HardState = field(default_factory=lambda: HardState(0, None))
    snapshot: Snapshot | None = None
    log: list[Entry] = field(default_factory=list)  # after the snapshot, data present
    cosigned_size: int = 0
    cosigned_root: bytes | None = None

    @property
    def base(self) -> int:
        return self.snapshot.index if self.snapshot is not None else 0

    @property
    def last(self) -> int:
        return self.base + len(self.log)

    def term_at(self, index: int) -> int | None:
        if index == self.base:
            return self.snapshot.term if self.snapshot is not None else 0
        entry = self.entry(index)
        return None if entry is None else entry.term

    def entry(self, index: int) -> Entry | None:
        k = index - self.base - 1
        return self.log[k] if 0 <= k < len(self.log) else None


class SimNode:
    def __init__(self, node_id: str, sim: Simulation) -> None:
        self.id = node_id
        self.sim = sim
        self.disk = Disk()
        self.core: RaftNode | None = None
        self.chain: list[bytes] = [GENESIS_ROOT]  # chain[i]: root over committed entries 1..i
        self.guard = CosignGuard()
        self.start()

    def start(self) -> None:
        disk = self.disk
        log = RaftLog.restore(((e.index, e.term) for e in disk.log),
                              (e for e in disk.log if e.kind is EntryKind.CONFIG),
                              snapshot=disk.snapshot)
        self.core = RaftNode(self.id, membership=self.sim.initial, hard_state=disk.hard_state,
                             log=log, rng=self.sim.rng, election_ticks=(10, 20),
                             heartbeat_ticks=2, max_entries_per_append=self.sim.max_entries)
        # The state machine: the snapshot's state, then re-applied as commits are learnt.
        self.chain = self.sim.snapshot_chain(self, disk.snapshot)
        self.guard = CosignGuard(disk.cosigned_size, disk.cosigned_root)

    @property
    def alive(self) -> bool:
        return self.core is not None

    def crash(self) -> None:
        self.core = None


class Simulation:
    def __init__(self, seed: int, *, nodes: int = 3, steps: int = 300, faults: bool = True,
                 trace_len: int = 60, max_entries: int | None = None,
                 compaction: bool = True) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        # Small batches let a new leader bring a follower up to date one old-term entry
        # at a time, ahead of its own entries: the setting of the paper's Figure 8.
        self.max_entries = max_entries or self.rng.choice((1, 2, 8))
        self.steps = steps
        self.faults = faults
        self.compaction = compaction
        self.canonical: list[bytes] = [GENESIS_ROOT]
        ids = [f"n{i}" for i in range(1, nodes + 2)]  # one spare to add later
        self.initial = Membership(frozenset(ids[:nodes]))
        self.min_voters = 3
        self.max_voters = nodes + 1
        self.trace: deque[str] = deque(maxlen=trace_len)
        self.now = 0
        self.seq = 0
        self.network: list[tuple[int, int, Message]] = []
        self.partition: tuple[frozenset[str], frozenset[str]] | None = None
        self.loss = 0.05
        self.dup = 0.03
        self.max_delay = 4
        self.nodes = {i: SimNode(i, self) for i in ids}
        # Observations the invariants are checked against.
        self.leaders: dict[int, str] = {}  # term -> leader
        self.committed: dict[int, tuple[int, bytes]] = {}  # index -> (term, data)
        self.commit_term: dict[int, int] = {}  # index -> a term by which it was committed
        self.entries_seen: dict[tuple[int, int], tuple[EntryKind, bytes]] = {}
        self.proposed: dict[tuple[str, int, int], Entry] = {}  # (leader, index, term)
        self.acked: dict[int, bytes] = {}
        self.counts = {"elections": 0, "commits": 0, "faults": 0, "proposals": 0,
                       "cosigned": 0, "refused": 0, "config_changes": 0, "transfers": 0,
                       "compactions": 0, "snapshots_installed": 0}

    # ------------------------------------------------------------ driving

    def log(self, event: str) -> None:
        self.trace.append(f"t={self.now} {event}")

    def fail(self, why: str) -> None:
        trace = "\n  ".join(self.trace)
        raise SimFailure(f"seed {self.seed}: {why}\n  last events:\n  {trace}")

    def run(self) -> None:
        try:
            for _ in range(self.steps):
                self.step(faults=self.faults)
            self.heal()
            self.check_liveness()
        except SimFailure:
            raise
        except Exception as exc:  # the core raising is a failure to replay, like any other
            self.fail(f"{type(exc).__name__}: {exc}")

    def step(self, *, faults: bool, clients: bool = True) -> None:
        self.now += 1
        for node in self.nodes.values():
            if node.core is not None:
                node.core.tick()
        self.deliver()
        if faults:
            self.inject_faults()
        if clients:
            self.client_actions(faults=faults)
        for node in self.nodes.values():
            self.process_ready(node, crash_chance=0.01 if faults else 0.0)
        self.check_step()

    def deliver(self) -> None:
        due = [item for item in self.network if item[0] <= self.now]
        if not due:
            return
        self.network = [item for item in self.network if item[0] > self.now]
        due.sort(key=lambda item: (item[0], item[1]))
        for _, _, msg in due:
            node = self.nodes.get(msg.dst)
            if node is None or node.core is None or self.cut(msg):
                continue
            node.core.step(msg)

    def cut(self, msg: Message) -> bool:
        """Whether the partition separates sender and receiver (checked at sending and at
        delivery: a partition also loses what was in flight across it)."""
        if self.partition is None:
            return False
        a, _ = self.partition
        return (msg.src in a) != (msg.dst in a)

    def send(self, msg: Message, *, faults: bool) -> None:
        if self.cut(msg):
            return
        copies = 1
        if faults:
            if self.rng.random() < self.loss:
                return
            if self.rng.random() < self.dup:
                copies = 2
        for _ in range(copies):
            delay = self.rng.randint(1, self.max_delay) if faults else 1
            self.seq += 1
            self.network.append((self.now + delay, self.seq, msg))

    def process_ready(self, node: SimNode, *, crash_chance: float) -> None:
        for _ in range(4):
            core = node.core
            if core is None or not core.has_ready():
                return
            ready = core.ready()
            # As node/replica.py does: a leader's AppendEntries leave before its own write.
            # A crash comes before anything, or (half the time, when there are such
            # messages) after they left and before the write.
            crash = bool(crash_chance) and self.rng.random() < crash_chance
            early = [m for m in ready.messages if may_precede_persistence(m)]
            if crash and (not early or self.rng.random() < 0.5):
                self.counts["faults"] += 1
                self.log(f"{node.id} crashes between ready() and advance()")
                node.crash()
                return
            for msg in early:
                self.check_durable_promise(node, msg)
                self.send(self.with_data(node, msg, ready.entries), faults=self.faults_on)
            if crash:
                self.counts["faults"] += 1
                self.log(f"{node.id} crashes after sending entries, before persisting them")
                node.crash()
                return
            disk = node.disk
            if ready.hard_state is not None:
                disk.hard_state = ready.hard_state
            if ready.snapshot is not None:
                snap = ready.snapshot
                node.chain = self.snapshot_chain(node, snap)
                disk.snapshot, disk.log = snap, []
                self.counts["snapshots_installed"] += 1
                self.log(f"{node.id} installs a snapshot at {snap.index}")
            if ready.truncate_after is not None:
                if ready.truncate_after < self.applied(node):
                    self.fail(f"{node.id} truncates committed entries after "
                              f"{ready.truncate_after}")
                if ready.truncate_after < disk.base:
                    self.fail(f"{node.id} truncates into its snapshot")
                del disk.log[ready.truncate_after - disk.base:]
            refused_from = None
            for entry in ready.entries:
                if entry.index != disk.last + 1 or entry.data is None:
                    self.fail(f"{node.id} persists entry {entry.index} out of order or bare")
                if (entry.kind is EntryKind.BATCH and entry.data.startswith(b"BAD")
                        and (node.id, entry.index, entry.term) not in self.proposed):
                    refused_from = entry.index
                    self.counts["refused"] += 1
                    self.log(f"{node.id} verifier refuses entry {entry.index}")
                    break
                self.record_entry(entry)
                disk.log.append(entry)
            if ready.newly_committed is not None:
                self.apply(node, ready.commit_index)
            for msg in ready.messages:
                if may_precede_persistence(msg):
                    continue
                self.check_durable_promise(node, msg)
                self.send(self.with_data(node, msg, ()), faults=self.faults_on)
            core.advance(ready, refused_from=refused_from)
            if self.compaction and self.rng.random() < 0.05:
                self.compact(node)

    def compact(self, node: SimNode) -> None:
        """As an I/O layer whose state machine holds the applied entries: forget a
        random applied prefix of the log."""
        core = node.core
        assert core is not None
        lo, hi = core.log.first_index, self.applied(node)
        if lo > hi:
            return
        index = self.rng.randint(lo, hi)
        snap = core.compact(index, node.chain[index])
        disk = node.disk
        del disk.log[:index - disk.base]
        disk.snapshot = snap
        self.counts["compactions"] += 1

    def snapshot_chain(self, node: SimNode, snap: Snapshot | None) -> list[bytes]:
        """The state a snapshot stands for, as a real I/O layer would fetch it and check
        it against its data: here the committed chain, which must end at that root."""
        if snap is None:
            return [GENESIS_ROOT]
        if snap.index >= len(self.canonical) or self.canonical[snap.index] != snap.data:
            self.fail(f"{node.id} takes a snapshot at {snap.index} that is not the "
                      "committed log")
        return self.canonical[:snap.index + 1]

    def with_data(self, node: SimNode, msg: Message, unwritten: tuple[Entry, ...]) -> Message:
        """The message with its entries' payloads: from disk, or from the Ready being
        written (what a leader sends before persisting it)."""
        if not isinstance(msg, AppendEntries) or all(e.data is not None for e in msg.entries):
            return msg
        fresh = {(e.index, e.term): e for e in unwritten}
        return AppendEntries(msg.term, msg.src, msg.dst, msg.prev_index, msg.prev_term,
                             tuple(fresh.get((e.index, e.term)) or self.attach(node, e)
                                   for e in msg.entries), msg.commit)

    faults_on = True

    def attach(self, node: SimNode, entry: Entry) -> Entry:
        if entry.data is not None:
            return entry
        stored = node.disk.entry(entry.index)
        if stored is None or stored.term != entry.term or stored.data is None:
            self.fail(f"{node.id} sends entry {entry.index} it has not persisted")
        assert stored is not None and stored.data is not None
        return entry.with_data(stored.data)

    def check_durable_promise(self, node: SimNode, msg: Message) -> None:
        disk = node.disk
        if isinstance(msg, AppendReply) and msg.success:
            if msg.match_index > disk.last:
                self.fail(f"{node.id} acknowledges {msg.match_index} with only "
                          f"{disk.last} entries on disk")
            core = node.core
            assert core is not None
            held = core.log.term_at(msg.match_index)
            if held is not None and disk.term_at(msg.match_index) != held:
                self.fail(f"{node.id} acknowledges {msg.match_index} of term {held}, but its "
                          f"disk holds term {disk.term_at(msg.match_index)} there")
            if disk.hard_state.term < msg.term:
                self.fail(f"{node.id} replies in term {msg.term} before persisting it")
        if isinstance(msg, VoteReply) and msg.granted and not msg.pre_vote:
            hs = disk.hard_state
            if hs.term > msg.term:
                self.fail(f"{node.id} sends a vote of term {msg.term} from term {hs.term}")
            if hs != HardState(msg.term, msg.dst):
                self.fail(f"{node.id} grants a vote before persisting it")

    def record_entry(self, entry: Entry) -> None:
        assert entry.data is not None
        key = (entry.index, entry.term)
        seen = self.entries_seen.get(key)
        if seen is None:
            self.entries_seen[key] = (entry.kind, entry.data)
        elif seen != (entry.kind, entry.data):
            self.fail(f"two different entries at index {entry.index} term {entry.term}")

    def applied(self, node: SimNode) -> int:
        return len(node.chain) - 1

    def apply(self, node: SimNode, commit: int) -> None:
        core = node.core
        assert core is not None
        disk = node.disk
        if commit > disk.last:
            self.fail(f"{node.id} reports commit {commit} beyond its {disk.last} "
                      "persisted entries")
        for index in range(self.applied(node) + 1, commit + 1):
            entry = disk.entry(index)
            if entry is None:
                self.fail(f"{node.id} applies {index}, compacted before it was applied")
            assert entry is not None and entry.data is not None
            if entry.kind is EntryKind.BATCH and entry.data.startswith(b"BAD"):
                self.fail(f"refused payload committed at {index} on {node.id}")
            known = self.committed.get(index)
            if known is None:
                if index != len(self.canonical):
                    self.fail(f"commit at {index} skips {len(self.canonical)}")
                self.committed[index] = (entry.term, entry.data)
                self.commit_term[index] = core.term
                self.canonical.append(chain_root(self.canonical[-1], entry))
                self.counts["commits"] += 1
            elif known != (entry.term, entry.data):
                self.fail(f"{node.id} commits a different entry at {index}")
            node.chain.append(chain_root(node.chain[-1], entry))
            own = self.proposed.get((node.id, index, entry.term))
            if own is not None and own.term == entry.term and core.role == "leader":
                self.acked[index] = entry.data

    # ------------------------------------------------------------ faults and clients

    def inject_faults(self) -> None:
        rng = self.rng
        dead = [n for n in self.nodes.values() if not n.alive]
        if dead and rng.random() < 0.06:
            node = rng.choice(dead)
            node.start()
            self.log(f"{node.id} restarts with {node.disk.last} entries "
                     f"(snapshot at {node.disk.base})")
        if self.crash_leader_mid_replication():
            return
        alive = [n for n in self.nodes.values() if n.alive]
        roll = rng.random()
        if roll < 0.01 and alive:
            victim = rng.choice(alive)
            self.log(f"{victim.id} crashes")
            victim.crash()
            self.counts["faults"] += 1
        elif roll < 0.02 and self.partition is None:
            self.partition = self.split()
            self.counts["faults"] += 1
            self.log(f"partition {sorted(self.partition[0])} | {sorted(self.partition[1])}")
        elif roll < 0.05 and self.partition is not None:
            self.partition = None
            self.log("partition heals")

    def crash_leader_mid_replication(self) -> bool:
        """Sometimes crash a leader whose newest entry is on a minority, most often one
        that has not yet committed an entry of its own term: the moves behind Figure 8
        of the Raft paper, where successive leaders disagree about an uncommitted entry
        and one of them may count replicas of an earlier term's entry."""
        for node in self.nodes.values():
            core = node.core
            if core is None or core.role != "leader" or core.last_index <= core.commit_index:
                continue
            young = core.log.term_at(core.commit_index) != core.term
            if self.rng.random() >= (0.15 if young else 0.01):
                continue
            last = core.last_index
            term = core.log.term_at(last)
            holders = sum(1 for n in self.nodes.values() if n is not node and n.core is not None
                          and n.core.log.term_at(last) == term)
            if holders + 1 < core.membership.quorum:
                self.log(f"{node.id} crashes with entry {last} on {holders} other(s) only")
                node.crash()
                self.counts["faults"] += 1
                return True
        return False

    def split(self) -> tuple[frozenset[str], frozenset[str]]:
        rng = self.rng
        ids = sorted(self.nodes)
        leader = next((n.id for n in self.nodes.values()
                       if n.core is not None and n.core.role == "leader"), None)
        size = rng.randint(1, len(ids) // 2)
        if leader is not None and rng.random() < 0.5:
            # Cut the leader off in a minority.
            others = [i for i in ids if i != leader]
            minority = frozenset([leader, *rng.sample(others, size - 1)])
        else:
            minority = frozenset(rng.sample(ids, size))
        return minority, frozenset(ids) - minority

    def client_actions(self, *, faults: bool) -> None:
        rng = self.rng
        leaders = [n for n in self.nodes.values() if n.core is not None
                   and n.core.role == "leader"]
        if not leaders:
            return
        node = rng.choice(leaders)
        core = node.core
        assert core is not None
        roll = rng.random()
        try:
            if roll < 0.3:
                bad = faults and rng.random() < 0.03
                data = (b"BAD" if bad else b"ok") + rng.randbytes(6)
                entry = core.propose(data)
                self.proposed[(node.id, entry.index, entry.term)] = entry
                self.counts["proposals"] += 1
                if rng.random() < 0.5:
                    # As node/replica.py does: the new entries leave at once, before
                    # the Ready that will persist them (and maybe before an earlier one).
                    unwritten = tuple(e for (n, _, _), e in self.proposed.items()
                                      if n == node.id)
                    for msg in core.take_early_messages():
                        self.send(self.with_data(node, msg, unwritten),
                                  faults=self.faults_on)
                if bad:
                    self.log(f"{node.id} proposes an invalid payload at {entry.index}")
            elif roll < 0.31 and faults:
                voters = set(core.membership.voters)
                spare = sorted(set(self.nodes) - voters)
                if spare and len(voters) < self.max_voters and rng.random() < 0.5:
                    voters.add(rng.choice(spare))
                elif len(voters) > self.min_voters:
                    voters.discard(rng.choice(sorted(voters)))
                else:
                    return
                entry = core.propose_membership(Membership(frozenset(voters)))
                self.counts["config_changes"] += 1
                self.log(f"{node.id} proposes voters {sorted(voters)} at {entry.index}")
            elif roll < 0.32 and faults:
                others = sorted(core.membership.voters - {node.id})
                if others:
                    to = rng.choice(others)
                    core.transfer_leadership(to)
                    self.counts["transfers"] += 1
                    self.log(f"{node.id} hands leadership to {to}")
            elif roll < 0.4:
                self.publish_checkpoint(node)
        except (NotLeaderError, MembershipChangeError):
            pass

    def publish_checkpoint(self, leader: SimNode) -> None:
        size = self.applied(leader)
        root = leader.chain[size]
        for member in self.nodes.values():
            if member.core is None:
                continue
            try:
                member.guard.check(size, root, local_size=self.applied(member),
                                   local_root_at=member.chain.__getitem__)
            except CosignRefused:
                continue
            member.disk.cosigned_size = member.guard.last_size
            member.disk.cosigned_root = member.guard.last_root
            if size >= len(self.canonical) or self.canonical[size] != root:
                self.fail(f"{member.id} cosigned ({size}, {root.hex()[:12]}) that is not "
                          "the committed log")
            self.counts["cosigned"] += 1

    # ------------------------------------------------------------ invariants

    def check_step(self) -> None:
        cores = [n.core for n in self.nodes.values() if n.core is not None]
        for core in cores:
            if core.role == "leader":
                known = self.leaders.get(core.term)
                if known is None:
                    self.leaders[core.term] = core.node_id
                    self.counts["elections"] += 1
                    self.log(f"{core.node_id} leads term {core.term}")
                    self.check_leader_completeness(core)
                elif known != core.node_id:
                    self.fail(f"two leaders in term {core.term}: {known} and {core.node_id}")
        for i, a in enumerate(cores):
            for b in cores[i + 1:]:
                check_log_matching(self, a.log, b.log, a.node_id, b.node_id)

    def check_leader_completeness(self, leader: RaftNode) -> None:
        log = leader.log
        for index, (term, _) in self.committed.items():
            if index < log.first_index:
                continue  # compacted: the leader's state machine holds it (checked then)
            if self.commit_term[index] < leader.term and log.term_at(index) != term:
                self.fail(f"leader {leader.node_id} of term {leader.term} lacks committed "
                          f"entry {index}")

    # ------------------------------------------------------------ liveness

    def heal(self) -> None:
        self.partition = None
        self.faults_on = False
        self.log("faults stop: all nodes up, network healed")
        for node in self.nodes.values():
            if not node.alive:
                node.start()

    def check_liveness(self) -> None:
        deadline = self.now + LIVENESS_TICKS
        final: tuple[str, int] | None = None
        while self.now < deadline:
            self.step(faults=False)
            leader = next((n for n in self.nodes.values() if n.core is not None
                           and n.core.role == "leader"), None)
            if leader is None or leader.core is None:
                continue
            core = leader.core
            if final is None or final[0] != leader.id:
                try:
                    entry = core.propose(b"ok-final")
                except NotLeaderError:
                    continue
                self.proposed[(leader.id, entry.index, entry.term)] = entry
                final = (leader.id, entry.index)
            members = core.membership.voters
            index = final[1]
            if all(self.applied(self.nodes[m]) >= index for m in members) \
                    and self.committed.get(index, (0, b""))[1] == b"ok-final":
                for index_acked, data in self.acked.items():
                    if self.committed.get(index_acked, (0, b""))[1] != data:
                        self.fail(f"acknowledged proposal at {index_acked} was lost")
                return
        self.fail(f"no proposal committed on every member within {LIVENESS_TICKS} ticks "
                  "after the faults stopped")


def figure8(seed: int) -> Simulation:
    """Figure 8 of the Raft paper, scripted on five nodes with one entry per message.

    (a) S1 leads and replicates entry x to S2 only, then crashes. (b) S5 is elected by
    the other three and appends its own entry at x's index, then is cut off and crashes.
    (c) S1 (or S2) leads again and brings the other two up to date one entry at a time:
    x, of an earlier term, is on a majority while its own term's NOOP is not yet; it is
    cut off and crashes. (d) S5 comes back and, with those two votes, leads and replaces
    x. Counting replicas of x in (c) would have committed an entry that (d) erases, so a
    core without the current-term rule fails the leader-completeness check here. Which
    node plays which part depends on the seed's election timers; the script checks
    that every stage happened, so a passing run really replayed the figure.
    """
    sim = Simulation(seed, nodes=5, faults=False, max_entries=1, compaction=False)
    sim.faults_on = False
    voters = sorted(sim.initial.voters)
    nodes = sim.nodes

    def until(what: str, done: Callable[[], bool], ticks: int = 400) -> None:
        for _ in range(ticks):
            sim.step(faults=False, clients=False)
            if done():
                return
        sim.fail(f"figure 8: {what} did not happen within {ticks} ticks")

    def leader(among: list[str]) -> SimNode | None:
        return next((nodes[i] for i in among if nodes[i].core is not None
                     and nodes[i].core.role == "leader"), None)

    def holds(node_id: str, entry: Entry) -> bool:
        core = nodes[node_id].core
        return core is not None and core.log.term_at(entry.index) == entry.term

    def propose(node: SimNode, data: bytes) -> Entry:
        assert node.core is not None
        entry = node.core.propose(data)
        sim.proposed[(node.id, entry.index, entry.term)] = entry
        return entry

    until("a first leader", lambda: leader(voters) is not None)
    s1 = leader(voters)
    assert s1 is not None
    first = propose(s1, b"ok-first")
    until("the first entry on every node", lambda: all(
        sim.applied(nodes[i]) >= first.index for i in voters))
    s2 = next(i for i in voters if i != s1.id)
    three = [i for i in voters if i not in (s1.id, s2)]

    sim.log(f"figure 8 (a): {s1.id} replicates x to {s2} only, then crashes")
    sim.partition = (frozenset({s1.id, s2}), frozenset(three))
    x = propose(s1, b"ok-x")
    until("x reaching S2", lambda: holds(s2, x))
    s1.crash()

    sim.log(f"figure 8 (b): {three} elect a leader that appends at x's index alone")
    until("a leader among the other three", lambda: leader(three) is not None)
    s5 = leader(three)
    assert s5 is not None and s5.core is not None
    own = s5.core.log.entries(x.index, x.index)[0]
    if own.term <= x.term:
        sim.fail("figure 8: S5 did not append an entry of its term at x's index")
    sim.partition = (frozenset({s5.id}), frozenset(voters) - {s5.id})
    s5.crash()

    followers = [i for i in three if i != s5.id]
    sim.log(f"figure 8 (c): {s1.id} restarts; a holder of x brings {followers} up to date")
    s1.start()
    until("a leader holding x", lambda: leader([s1.id, s2]) is not None)
    s1_again = leader([s1.id, s2])
    assert s1_again is not None and s1_again.core is not None
    until("x on the other two", lambda: all(holds(i, x) for i in followers))
    sim.step(faults=False, clients=False)  # their acknowledgements reach the leader
    for i in followers:
        core = nodes[i].core
        if core is None or core.last_index != x.index:
            sim.fail(f"figure 8: {i} got past x before the leader was cut off")
    sim.partition = (frozenset({s1.id, s2}), frozenset({s5.id, *followers}))
    s1_again.crash()

    sim.log(f"figure 8 (d): {s5.id} restarts and, with {followers}' votes, replaces x")
    s5.start()
    until("S5 leading again", lambda: leader([s5.id]) is not None)
    until("x replaced on the other two", lambda: all(holds(i, own) for i in followers))
    sim.heal()
    sim.check_liveness()
    return sim


def chain_root(prev: bytes, entry: Entry) -> bytes:
    assert entry.data is not None
    return hashlib.sha256(prev + entry.term.to_bytes(8, "big")
                          + bytes([entry.kind]) + entry.data).digest()


def check_log_matching(sim: Simulation, a: RaftLog, b: RaftLog, an: str, bn: str) -> None:
    """Same index and term => same terms at every earlier index both logs still hold (the
    data of equal (index, term) pairs is checked as entries are persisted, compacted
    prefixes as snapshots are taken)."""
    start = max(a.first_index - 1, b.first_index - 1, 1)
    end = min(a.last_index, b.last_index)
    bounds = sorted({s for s, _ in _runs(a)} | {s for s, _ in _runs(b)} | {start})
    diverged = False
    for lo in bounds:
        if lo < start:
            continue
        if lo > end:
            break
        same = a.term_at(lo) == b.term_at(lo)
        if same and diverged:
            sim.fail(f"log matching: {an} and {bn} agree at {lo} after diverging")
        if not same:
            diverged = True


def _runs(log: RaftLog) -> list[tuple[int, int]]:
    return list(zip(log._starts, log._terms, strict=True))


def run_seeds(seeds: range | list[int], *, nodes: int, steps: int) -> dict[str, int]:
    total = {"seeds": 0, "steps": 0}
    for seed in seeds:
        sim = Simulation(seed, nodes=nodes, steps=steps)
        sim.run()
        total["seeds"] += 1
        total["steps"] += sim.now
        for key, value in sim.counts.items():
            total[key] = total.get(key, 0) + value
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.raft_sim", description=__doc__)
    parser.add_argument("--seeds", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--nodes", type=int, choices=(3, 5), default=3)
    parser.add_argument("--seed", type=int, help="run only this seed (replays exactly)")
    args = parser.parse_args(argv)
    seeds = [args.seed] if args.seed is not None else range(args.seeds)
    started = time.perf_counter()
    try:
        total = run_seeds(seeds, nodes=args.nodes, steps=args.steps)
    except SimFailure as exc:
        print(f"FAILED {exc}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - started
    print(", ".join(f"{k} {v}" for k, v in total.items()) + f", time {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
