"""A cluster member: the thin I/O around the Raft core (ledger/raft).

The core decides; this module persists, verifies, sends and publishes, in the order the
core's Ready demands:

1. truncation of a conflicting suffix, then the in-memory ledger goes back to the log:
   the entries past it taken back (ledger/undo.py), or, failing that, reloaded from
   disk; so too when a deposed leader holds writes it admitted but never proposed;
2. every batch a leader sends is decoded and re-checked here, as an auditor would
   (encoding, signatures on both cores, key validity, chain, status roots); an invalid
   batch is refused and never stored, so a leader cannot make this member accept it;
3. vote, truncation and new entries in one SQLite transaction, synced;
4. only then the messages, then `advance`: nothing is promised before it is durable.

Each member compacts its Raft log (`raft_log_keep` rows behind the commit point, at a
checkpoint it stored); a member whose leader no longer holds the rows it needs is sent
a snapshot instead and catches up from tiles (node/catch_up.py).

Committed entries are published by one task: on the leader it signs the checkpoint
with the log key, gathers a majority of cosignatures (each member checks the checkpoint
against its own tree, node/cosigning.py) and stores tiles and checkpoint; the write
that waits on it is acknowledged with the cosigned checkpoint. Followers store the tiles
of what is committed and serve the checkpoints the leader publishes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from bisect import bisect_right
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from ledger.entry import LogEntry
from ledger.errors import DecodeError, LedgerError, RejectedError
from ledger.events import StatusRoot
from ledger.note import Ed25519Signer, Verifier
from ledger.raft.log import RaftLog
from ledger.raft.membership import Membership
from ledger.raft.messages import (
    AppendEntries,
    Entry,
    EntryKind,
    HardState,
    InstallSnapshot,
    Message,
    Ready,
    Snapshot,
    may_precede_persistence,
)
from ledger.raft.node import MembershipChangeError, NotLeaderError, RaftNode
from ledger.signed import SignedEvent
from ledger.state import LedgerState
from ledger.tree import MerkleTree
from node.batch_payload import batch_entries, encode_batch
from node.catch_up import (
    CatchUpError,
    checkpoint_size,
    entry_chunks,
    open_snapshot_checkpoint,
)
from node.cluster_config import ClusterConfig
from node.cosigning import Cosigner, CosignError
from node.decode_worker import MIN_BODY as DECODE_ELSEWHERE
from node.local_commit import touched_tiles
from node.peers import PeerLink
from node.recovery import recover, replay_entries, restore_snapshot
from node.replica_storage import RaftRow, ReplicaStorage
from node.sequencer import UnavailableError
from node.snapshots import Snapshotter
from node.storage import StoredEntry

if TYPE_CHECKING:
    from node.runtime import NodeRuntime

log = logging.getLogger("consent_ledger.replica")

_PAYLOAD_CACHE = 512
# A batch is checked in chunks of this many entries, with the event loop free in between:
# heartbeats, cosign requests and forwarded writes do not wait for a whole batch.
_CHUNK = 200
_DECODING_AHEAD = 16  # batches decoded before the Ready loop reaches them, at most
_CATCH_UP_RETRY_S = (0.2, 5.0)  # after every source failed: first and longest pause


class Replica:
    def __init__(self, *, rt: NodeRuntime, cluster: ClusterConfig, member: str,
                 node_key: Ed25519PrivateKey, storage: ReplicaStorage, raft: RaftNode,
                 ends: dict[int, int], log_signer: Ed25519Signer,
                 log_verifier: Verifier, cosigner: Cosigner,
                 published_size: int, snapshots: Snapshotter | None = None) -> None:
        self._rt = rt
        self._snapshots = snapshots
        self.cluster = cluster
        self.member = member
        self.raft = raft
        self._storage = storage
        self._node_key = node_key
        self._log_signer = log_signer
        self._log_verifier = log_verifier
        self.cosigner = cosigner
        self._ends = ends  # Raft index → ledger size after it (every entry kind)
        self._persisted_last = raft.last_index
        self._state_last = raft.last_index  # the last Raft entry the ledger state holds
        self._dirty = False
        self.committed_size = published_size
        self.published_size = published_size
        self._proposed: dict[int, list[tuple[int, bytes, bytes, bytes]]] = {}
        self._waiters: dict[int, asyncio.Future[bytes]] = {}
        self._config_waiters: dict[int, asyncio.Future[bytes]] = {}
        self._payloads: dict[int, bytes] = {}
        # A leader's batches being decoded by the decoding process, from their arrival:
        # the Ready loop checks one batch while the next ones decode (Raft index → both).
        self._decoding: dict[int, tuple[bytes, asyncio.Future[list[LogEntry] | None]]] = {}
        self._wake = asyncio.Event()
        self._publish = asyncio.Event()
        self._unstored: tuple[int, bytes] | None = None  # a follower's newest served checkpoint
        self._own: tuple[int, bytes] | None = None  # the last checkpoint this leader signed
        self._was_leader = False
        self._session: aiohttp.ClientSession | None = None
        self.links: dict[str, PeerLink] = {}
        # Parsed once: every peer request is checked against them.
        self.peer_keys = {m.id: Ed25519PublicKey.from_public_bytes(m.public_key)
                          for m in cluster.members}
        self._tasks: list[asyncio.Task[None]] = []
        self.failed: BaseException | None = None
        self.stopped = asyncio.Event()  # set with `failed`
        self._installing = False  # catching up from tiles: vouch only for the old prefix
        self._snapshot_checked: Snapshot | None = None  # the last one whose data opened

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self._rt.state.keep_undo()  # what it applies beyond its disk can be taken back
        self._session = aiohttp.ClientSession()
        for m in self.cluster.members:
            if m.id != self.member:
                link = PeerLink(me=self.member, peer=m.id, url=m.url, key=self._node_key,
                                session=self._session, load_payloads=self._load_payloads)
                self.links[m.id] = link
                self._tasks.append(asyncio.create_task(link.run(), name=f"peer-{m.id}"))
        self._tasks.append(asyncio.create_task(self._ticker(), name="raft-ticker"))
        self._tasks.append(asyncio.create_task(self._guarded(self._ready_loop), name="raft"))
        self._tasks.append(asyncio.create_task(self._guarded(self._publisher), name="publish"))
        self._tasks.append(asyncio.create_task(self._recosigner(), name="recosign"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._fail_waiters(lambda i: True, "the node is shutting down")
        if self._session is not None:
            await self._session.close()

    async def _guarded(self, body: Callable[[], Awaitable[None]]) -> None:
        try:
            await body()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            # Disk state is behind memory or unknown: stop; a restart recovers from disk.
            log.exception("replica stopped")
            self.failed = exc
            self.stopped.set()
            self._fail_waiters(lambda i: True, f"storage failure: {exc}")
            for task in self._tasks:  # a member that cannot persist takes no part in Raft
                if task is not asyncio.current_task():
                    task.cancel()

    @property
    def durable_size(self) -> int:
        """How many ledger entries this member has on disk (while it installs a snapshot:
        its committed prefix, the rest being about to go)."""
        if self._installing:
            return self.committed_size
        return self._ends.get(self._persisted_last, 0)

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "start() first"
        return self._session

    # ---------------------------------------------------------------- roles

    @property
    def is_leader(self) -> bool:
        """Leader, and its ledger in memory is the one on disk: it may sequence."""
        return (self.raft.role == "leader" and self.failed is None and not self._dirty
                and not self._installing)

    def leader_url(self) -> str | None:
        leader = self.raft.leader_id
        if leader is None or leader == self.member:
            return None
        return self.cluster.member(leader).url

    # ---------------------------------------------------------------- inbound

    def receive(self, src: str, messages: list[Message]) -> None:
        for m in messages:
            if m.src != src or m.dst != self.member:
                continue  # an authenticated peer may only speak for itself
            if isinstance(m, AppendEntries):
                self._start_decoding(m.entries)
            elif isinstance(m, InstallSnapshot) and not self._snapshot_opens(m.snapshot):
                continue
            self.raft.step(m)
        if self.raft.role == "leader":
            # The acknowledgement that completes a majority commits at once: the Ready
            # loop may be waiting for this member's own write of a later batch. (Only a
            # leader: a follower's disk may still hold a suffix its leader overwrote.)
            self._note_commit(self.raft.commit_index)
            self._send(self.raft.take_early_messages())  # entries an acknowledgement let go
        self._wake.set()

    # ---------------------------------------------------------------- the leader's writes

    async def commit_batch(self, rows: list[tuple[int, bytes, bytes, bytes]], old_size: int,
                           new_size: int) -> bytes:
        """Replicate one sequenced batch; return the cosigned checkpoint that publishes it."""
        if self.failed is not None:
            raise UnavailableError("the replica has stopped after a storage failure")
        if self._dirty:
            self._wake.set()
            raise UnavailableError("the node is reloading its ledger; retry")
        payload = encode_batch([r[3] for r in rows])
        try:
            entry = self.raft.propose(payload)
        except NotLeaderError as exc:
            self._dirty = True  # the sequencer admitted these rows into memory only
            raise UnavailableError(f"not the leader (leader: {exc.leader_hint or 'unknown'}); "
                                   "retry: writes are idempotent") from None
        self._proposed[entry.index] = rows
        self._state_last = entry.index
        self._cache_payload(entry.index, payload)
        # Out at once, even while the Ready loop waits for this member's write of an
        # earlier batch (under load that wait was 8 ms at the median).
        self._send(self.raft.take_early_messages())
        waiter: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiters[entry.index] = waiter
        self._wake.set()
        return await waiter

    async def change_membership(self, *, add: str | None = None,
                                remove: str | None = None) -> frozenset[str]:
        """Add or remove one voter (a member pinned in the cluster file); the new voters
        once the change is committed. A change already in force is answered as done, so
        that an operator may safely retry one whose answer was lost."""
        if add is not None:
            self.cluster.member(add)  # pinned, with a URL and a key
        raft = self.raft
        # A leader elected moments ago (the one a removed leader handed over to) commits
        # an entry of its term, and an earlier change commits, within a few heartbeats.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._election_timeout_s()
        while raft.role == "leader" and loop.time() < deadline and (
                raft.log.term_at(raft.commit_index) != raft.term
                or raft.log.config_after(raft.commit_index)):
            await asyncio.sleep(self.cluster.tick_ms / 1000)  # polls the core's state
        voters = set(raft.membership.voters)
        if add is not None:
            voters.add(add)
        if remove is not None:
            voters.discard(remove)
        if not voters:
            raise ValueError(f"{remove} is the last voter: add another before removing it")
        if voters == raft.membership.voters and raft.role == "leader" \
                and not raft.log.config_after(raft.commit_index):
            return frozenset(voters)
        try:
            entry = raft.propose_membership(Membership(frozenset(voters)))
        except NotLeaderError as exc:
            raise UnavailableError(f"not the leader (leader: {exc.leader_hint or 'unknown'})"
                                   ) from None
        except MembershipChangeError as exc:
            raise ValueError(str(exc)) from None
        waiter: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._config_waiters[entry.index] = waiter
        self._wake.set()
        await waiter
        return frozenset(voters)

    async def hand_over_leadership(self) -> str:
        """Make the most caught-up other voter the leader (before this one is removed);
        the new leader once this member follows it. Writes pause meanwhile (503)."""
        matches = self.raft.voter_match_indexes()
        if not matches:
            raise UnavailableError("this member leads no other voter to hand over to")
        to = max(sorted(matches), key=matches.__getitem__)
        try:
            self.raft.transfer_leadership(to)
        except NotLeaderError as exc:
            raise UnavailableError(f"not the leader (leader: {exc.leader_hint or 'unknown'})"
                                   ) from None
        self._wake.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2 * self._election_timeout_s()
        while loop.time() < deadline:
            leader = self.raft.leader_id
            if self.raft.role != "leader" and leader is not None and leader != self.member:
                return leader
            await asyncio.sleep(self.cluster.tick_ms / 1000)  # polls the core's state
        raise UnavailableError(f"leadership did not pass to {to} in time; retry")

    def _election_timeout_s(self) -> float:
        return self.cluster.election_ticks[1] * self.cluster.tick_ms / 1000

    def _fail_waiters(self, which: Callable[[int], bool], reason: str) -> None:
        for waiters in (self._waiters, self._config_waiters):
            for index in [i for i in waiters if which(i)]:
                waiter = waiters.pop(index)
                if not waiter.done():
                    waiter.set_exception(UnavailableError(reason))

    # ---------------------------------------------------------------- the Ready loop

    async def _ticker(self) -> None:
        period = self.cluster.tick_ms / 1000
        while True:
            await asyncio.sleep(period)  # Raft's logical clock, not synchronisation
            role = self.raft.role
            self.raft.tick()
            # Most ticks change nothing: waking the Ready loop for them cost 3-5 % of
            # a member's event loop.
            if self.raft.has_ready() or self.raft.role != role:
                self._wake.set()

    async def _ready_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.raft.has_ready():
                await self._process(self.raft.ready())
            self._role_changes()
            if self._dirty:
                await self._reload()

    def _role_changes(self) -> None:
        leader = self.raft.role == "leader"
        if leader and not self._was_leader:
            log.info("became leader", extra={"term": self.raft.term})
            # Its followers' copy of the log may be ahead of the last checkpoint they
            # were shown (the old leader died before announcing it): a checkpoint of its
            # own, now, or reads wait for the next write.
            self._own = None
            self._publish.set()
            if self._rt.state.size == 0 and self.cluster.genesis is not None \
                    and not self._installing:  # installing: its log is not empty
                self._tasks.append(asyncio.create_task(self._submit_genesis(), name="genesis"))
        if self._was_leader and not leader:
            log.info("lost leadership", extra={"term": self.raft.term,
                                               "leader": self.raft.leader_id})
            if self._rt.state.size != self._size_in_memory():
                # Writes admitted into memory but never proposed: back to the log. (What
                # was proposed is in the log; a new leader that overwrites it truncates.)
                self._dirty = True
            self._fail_waiters(lambda i: True, "leadership changed while this write was "
                               "being replicated; it may be committed: resubmit it (writes are "
                               "idempotent)")
        self._was_leader = leader

    def _size_in_memory(self) -> int | None:
        """The ledger's size after the last Raft entry memory holds, as the log says."""
        proposed = self._proposed.get(self._state_last)
        return proposed[-1][0] + 1 if proposed else self._ends.get(self._state_last)

    async def _submit_genesis(self) -> None:
        assert self.cluster.genesis is not None
        try:
            genesis = SignedEvent.decode(self.cluster.genesis)
            (outcome,) = await self._rt.sequencer.submit([(genesis, False)])
            log.info("genesis written", extra={
                "outcome": getattr(outcome, "index", None) if not isinstance(
                    outcome, Exception) else str(outcome)})
        except Exception as exc:  # a later leader tries again
            log.warning("genesis not written", extra={"error": str(exc)})

    async def _process(self, rd: Ready) -> None:
        storage = self._storage
        if rd.snapshot is not None:
            await self._install(rd.snapshot)
        if rd.truncate_after is not None and rd.truncate_after < self._state_last:
            # The core may already count the new leader's entries as committed; what must
            # never be truncated is what this member published, applied or cosigned.
            keeps = self._ends.get(rd.truncate_after, 0)
            if keeps < max(self.committed_size, self.cosigner.cosigned_size):
                raise RuntimeError(f"asked to truncate committed or cosigned entries "
                                   f"(after Raft entry {rd.truncate_after}, ledger size {keeps})")
            if rd.truncate_after < self._persisted_last:
                await storage.persist(hard_state=None, truncate_after=rd.truncate_after,
                                      rows=[], entries=[])
                self._persisted_last = rd.truncate_after
            for index in [i for i in self._ends if i > rd.truncate_after]:
                del self._ends[index]
                self._payloads.pop(index, None)
                self._proposed.pop(index, None)
            after = rd.truncate_after
            self._fail_waiters(lambda i: i > after,
                               "the write was overwritten by a new leader; resubmit it")
            self._dirty = True
        first_batch = next((e for e in rd.entries if e.kind == EntryKind.BATCH), None)
        if first_batch is not None and first_batch.index not in self._proposed \
                and self._rt.state.size != self._ends.get(rd.entries[0].index - 1, 0):
            # A leader's batch, and memory holds entries the log does not (this member
            # admitted writes as the leader it no longer is): back to the log first.
            self._dirty = True
        if self._dirty:
            await self._reload()
        rows: list[RaftRow] = []
        ledger_rows: list[tuple[int, bytes, bytes, bytes]] = []
        refused: int | None = None
        size = self._ends.get(rd.entries[0].index - 1, 0) if rd.entries else 0
        for entry in rd.entries:
            if entry.kind == EntryKind.BATCH:
                own = self._proposed.pop(entry.index, None)
                batch = own if own is not None else await self._admit(entry)
                if batch is None:
                    refused = entry.index
                    break
                rows.append(RaftRow(entry.index, entry.term, entry.kind, batch[0][0],
                                    batch[-1][0] + 1, None))
                ledger_rows.extend(batch)
                size = batch[-1][0] + 1
            else:
                rows.append(RaftRow(entry.index, entry.term, entry.kind, size, size,
                                    entry.data or b""))
            self._ends[entry.index] = size
            self._state_last = entry.index
        hard = None if rd.hard_state is None else (rd.hard_state.term,
                                                   rd.hard_state.voted_for)
        early = [m for m in rd.messages if may_precede_persistence(m)]
        self._send(early)  # a leader's entries go out while it writes them itself
        if hard is not None or rows:
            await storage.persist(hard_state=hard, truncate_after=None, rows=rows,
                                  entries=ledger_rows)
        if rows:
            self._persisted_last = rows[-1].index
            self.cosigner.entries_persisted()
        self._send([m for m in rd.messages if not may_precede_persistence(m)])
        self.raft.advance(rd, refused_from=refused)
        if rd.newly_committed is not None:
            for index in [i for i in self._config_waiters if i <= rd.commit_index]:
                waiter = self._config_waiters.pop(index)
                if not waiter.done():
                    waiter.set_result(b"")
            self._note_commit(rd.commit_index)
        self._wake.set()

    def _note_commit(self, raft_commit: int) -> None:
        """Publish what Raft committed and this member holds on disk."""
        committed = self._ends.get(min(raft_commit, self._persisted_last))
        if committed is not None and committed > self.committed_size:
            self.committed_size = committed
            self._rt.state.forget_undo(committed)  # never taken back now
            self._publish.set()

    def _send(self, messages: list[Message]) -> None:
        for message in messages:
            link = self.links.get(message.dst)
            if link is not None:
                link.send(message)

    async def _admit(self, entry: Entry) -> list[tuple[int, bytes, bytes, bytes]] | None:
        """Check a leader's batch as an auditor would; its rows, or None to refuse it."""
        try:
            entries = await self._decode(entry)
        except (ValueError, LedgerError) as exc:
            log.warning("refused a batch", extra={"raft_index": entry.index,
                                                  "error": str(exc)})
            return None
        size = self._rt.state.size
        try:
            return await self._check(entries, self._rt.state, self._rt.tree)
        except LedgerError as exc:
            log.warning("refused a batch", extra={"raft_index": entry.index,
                                                  "error": str(exc)})
            if self._rt.state.size != size or self._rt.tree.size != size:
                self._dirty = True  # memory holds part of it
            return None

    async def _check(self, entries: list[LogEntry], state: LedgerState, tree: MerkleTree
                     ) -> list[tuple[int, bytes, bytes, bytes]]:
        """Check entries (signatures on both cores, then the consent state machine) and
        apply them to state and tree; the rows to store. Raises LedgerError, leaving
        state and tree unchanged if it is a signature's (else holding part of them)."""
        signed = [(i, e.signed) for i, e in enumerate(entries)
                  if not isinstance(e.signed.body, StatusRoot)]
        verdicts = await self._rt.verifier.verify(state, [s for _, s in signed])
        checked = {i for (i, _), v in zip(signed, verdicts, strict=True) if v is True}
        rejected = next((v for v in verdicts if isinstance(v, RejectedError)), None)
        if rejected is not None:
            raise LedgerError(f"bad signature: {rejected}")
        rows = []
        for i, e in enumerate(entries):
            if e.index != state.size:
                raise LedgerError(f"entry {e.index} where entry {state.size} belongs")
            state.replay(e, verify_signatures=i not in checked)
            tree.append(e.leaf_hash)
            rows.append((e.index, e.signed.id, e.leaf_hash, e.encoded))
            if i % _CHUNK == _CHUNK - 1:
                await asyncio.sleep(0)
        return rows

    # ---------------------------------------------------------------- snapshots

    def _snapshot_opens(self, snapshot: Snapshot) -> bool:
        """Whether a leader's snapshot holds a checkpoint a majority cosigned (checked
        before the core takes it: once taken, it must be installed)."""
        if snapshot == self._snapshot_checked:
            return True
        try:
            voters = Membership.decode(snapshot.config).voters
            checkpoint = open_snapshot_checkpoint(snapshot.data, log_verifier=self._log_verifier,
                                                  cluster=self.cluster, voters=voters)
            if checkpoint.size < self.committed_size:
                raise CatchUpError(f"its checkpoint ({checkpoint.size} entries) is older "
                                   f"than the {self.committed_size} committed here")
        except (CatchUpError, DecodeError) as exc:
            log.warning("ignored a snapshot", extra={"raft_index": snapshot.index,
                                                      "error": str(exc)})
            return False
        self._snapshot_checked = snapshot
        return True

    async def _install(self, snapshot: Snapshot) -> None:
        """Catch up to a leader's snapshot from tiles, then make it this member's log:
        the committed prefix stays, the rest is replaced by entries fetched and checked
        one by one, the tree's root by the snapshot's cosigned checkpoint."""
        started = time.perf_counter()
        voters = Membership.decode(snapshot.config).voters
        checkpoint = open_snapshot_checkpoint(snapshot.data, log_verifier=self._log_verifier,
                                              cluster=self.cluster, voters=voters)
        keep, size = self.committed_size, checkpoint.size
        if keep > size:
            raise RuntimeError(f"a snapshot of {size} entries below the {keep} committed here")
        self._installing = True
        leader = self.raft.leader_id
        sources = [m.url for m in sorted(self.cluster.members, key=lambda m: m.id != leader)
                   if m.id != self.member]
        if not sources:
            raise RuntimeError("a snapshot, but no other member to fetch its entries from")
        state, tree = await self._state_at(keep)
        await self._storage.discard_staged()
        pause = _CATCH_UP_RETRY_S[0]
        for url in itertools.cycle(sources):
            try:
                await self._fetch_checked(url, state, tree, size)
                if tree.root(size) != checkpoint.root:
                    raise _Refused(f"{url}: the entries do not make the snapshot's root")
                if not self.cosigner.agrees_with(tree):
                    # A majority cosigned a history this member cosigned otherwise: a fork
                    # it must never take part in; it keeps asking, and refusing, loudly.
                    raise _Refused(f"{url}: the entries differ from what this member "
                                   f"cosigned at size {self.cosigner.cosigned_size}")
                break
            except CatchUpError as exc:
                log.warning("catching up from tiles: a source failed",
                            extra={"source": url, "error": str(exc)})
                if isinstance(exc, _Refused):  # what it served may be in state and tree
                    state, tree = await self._state_at(keep)
                    await self._storage.discard_staged()
                # else the next source goes on from where this one stopped
            if url == sources[-1]:
                await asyncio.sleep(pause)  # every source failed once more: a retry timer
                pause = min(pause * 2, _CATCH_UP_RETRY_S[1])
        await self._storage.install_snapshot(snapshot, keep=keep)
        self._ends = {snapshot.index: size}
        self._persisted_last = self._state_last = snapshot.index
        self._proposed.clear()
        self._payloads.clear()
        self._decoding.clear()
        self._adopt(state, tree)
        self._dirty = False
        self._installing = False
        self.cosigner.entries_persisted()
        self._rt.metrics.caught_up_from_tiles(size - keep)
        log.info("caught up from tiles", extra={
            "raft_index": snapshot.index, "size": size, "fetched": size - keep,
            "seconds": round(time.perf_counter() - started, 3)})

    async def _fetch_checked(self, url: str, state: LedgerState, tree: MerkleTree,
                             size: int) -> None:
        """Entries from tree.size to size from `url`, each checked and applied, staged."""
        async for chunk in entry_chunks(self.session, url, tree.size, size):
            try:
                entries = await _decode_entries([raw for _, raw in chunk])
                for (index, _), entry in zip(chunk, entries, strict=True):
                    if entry.index != index:
                        raise LedgerError(f"entry {index} says it is entry {entry.index}")
                rows = await self._check(entries, state, tree)
            except LedgerError as exc:
                raise _Refused(f"{url}: {exc}") from None
            await self._storage.stage_entries(rows)

    async def _state_at(self, size: int) -> tuple[LedgerState, MerkleTree]:
        """A new copy of the ledger's state and tree over the first `size` entries on
        disk (the live ones keep serving reads until the snapshot is whole)."""
        restored = await restore_snapshot(self._storage)
        if restored is None or restored[0].size > size:
            restored = LedgerState(), MerkleTree()
        state, tree = restored
        await replay_entries(self._storage, state, tree, until=size)
        return state, tree

    def _start_decoding(self, entries: tuple[Entry, ...]) -> None:
        decoder = self._rt.decoder
        if decoder is None or not decoder.alive:
            return
        for e in entries:
            if len(self._decoding) >= _DECODING_AHEAD:
                return  # catching up: the rest decode on the loop, memory stays bounded
            # An entry this member holds already is a resend: Raft drops it (or, from a
            # new leader, replaces it, and then it decodes on the loop).
            if e.kind == EntryKind.BATCH and e.data is not None \
                    and len(e.data) >= DECODE_ELSEWHERE and e.index > self.raft.last_index \
                    and e.index not in self._decoding:
                self._decoding[e.index] = (e.data, decoder.submit_batch(e.data))

    async def _decode(self, entry: Entry) -> list[LogEntry]:
        """A leader's batch decoded strictly: by the decoding process if it is large."""
        payload = entry.data or b""
        started = self._decoding.pop(entry.index, None)
        for index in [i for i in self._decoding if i < entry.index]:
            del self._decoding[index]  # replaced by a later leader's before they were reached
        # An index may have come again with other data (a new leader's): that decodes anew.
        if started is not None and started[0] == payload:
            decoded = await started[1]
            if decoded is not None:
                return decoded
        # Refused, small, or no process: decoded here.
        return await _decode_entries(batch_entries(payload))

    async def _reload(self) -> None:
        """Bring the ledger in memory back to what is durable (after a truncation, or
        writes admitted that the log never took): the entries beyond the disk taken
        back, or, if memory cannot, the ledger reloaded from disk."""
        started = time.perf_counter()
        # First of all: no batch admitted so far may still be committed, nor admission
        # go on (the sequencer checks between chunks) while the ledger goes back.
        self._rt.sequencer.reset(self._rt.state, self._rt.tree)
        size = self._ends.get(self._persisted_last)
        last = await self._storage.iter_entries(size - 1, chunk=1) if size else []
        state, beyond = self._rt.state, self._rt.state.size
        if size is not None and self._rolled_back(state, size, last):
            tree = self._rt.tree.prefix(size)
            log.info("took back the entries the log did not keep", extra={
                "size": size, "taken_back": beyond - size,
                "seconds": round(time.perf_counter() - started, 3)})
        else:
            state, tree, _ = await recover(self._storage, self._open_note,
                                           uncommitted_tail=True)
            log.info("reloaded the ledger from disk", extra={"size": state.size})
        self._adopt(state, tree)
        self._state_last = self._persisted_last
        self._proposed.clear()
        self._dirty = False
        if self.raft.role == "leader":
            self._publish.set()  # a leader's first checkpoint may have waited for this

    @staticmethod
    def _rolled_back(state: LedgerState, size: int, last: list[StoredEntry] | None) -> bool:
        """Take back the state's entries from `size` on; whether it then ends as the log
        on disk does (`last`: its entry size - 1). If not, the caller reloads from disk."""
        try:
            state.roll_back(size)
        except ValueError as exc:  # applied before its journal began: a restart's tail
            log.info("reloading the ledger from disk", extra={"reason": str(exc)})
            return False
        if size and (not last or last[0].index != size - 1 or last[0].leaf != state.prev):
            log.error("the ledger taken back does not end as the log on disk does; "
                      "reloading from disk", extra={"size": size})
            return False
        return True

    def _adopt(self, state: LedgerState, tree: MerkleTree) -> None:
        """Make `state` and `tree` the ledger in memory that the sequencer builds on;
        what it applies beyond the disk from now on can be taken back."""
        state.keep_undo()
        self._rt.state, self._rt.tree = state, tree
        self._rt.sequencer.reset(state, tree)

    def _open_note(self, note: bytes) -> Checkpoint:
        return open_checkpoint(note, self._log_verifier)[0]

    # ---------------------------------------------------------------- payloads

    def _cache_payload(self, index: int, payload: bytes) -> None:
        self._payloads[index] = payload
        if len(self._payloads) > _PAYLOAD_CACHE:
            del self._payloads[next(iter(self._payloads))]

    async def _load_payloads(self, indexes: list[int]) -> dict[int, bytes]:
        out = {i: self._payloads[i] for i in indexes if i in self._payloads}
        todo = sorted(set(indexes) - set(out))
        if todo:
            for row in await self._storage.raft_range(todo[0], todo[-1] + 1):
                if row.index in todo and row.kind == EntryKind.BATCH:
                    out[row.index] = encode_batch(
                        await self._storage.entry_data(row.first, row.end))
        return out

    # ---------------------------------------------------------------- publishing

    def keep_checkpoint(self, size: int, note: bytes) -> None:
        """A checkpoint the leader published, now served here: it is stored with this
        member's next tiles rather than in a synced write of its own (after a crash this
        member serves an older checkpoint until the leader's next one reaches it)."""
        self._unstored = (size, note)
        self._publish.set()

    async def _publisher(self) -> None:
        refusals = 0  # checkpoints in a row without a majority of cosignatures
        while True:
            await self._publish.wait()
            self._publish.clear()
            size = self.committed_size
            if self.is_leader:
                if size == 0 or (self._own is not None and size <= self._own[0]):
                    continue  # nothing yet, or signed and published already
            elif size <= self.published_size and self._unstored is None:
                continue
            tree = self._rt.tree
            tiles = [(t.level, t.index, t.hashes)
                     for t in touched_tiles(tree, self.published_size, size)
                     ] if size > self.published_size else []
            if self.is_leader:
                signed = sign_checkpoint(Checkpoint(self._rt.origin, size, tree.root(size)),
                                         self._log_signer)
                try:
                    note = await self.cosigner.gather(signed, self.links,
                                                      quorum=self.raft.membership.quorum)
                except CosignError as exc:
                    # Unpublished, the writes wait: clients would refuse a checkpoint
                    # without a majority of cosignatures. Asked again after a pause.
                    log.warning("checkpoint not published", extra={"size": size,
                                                                   "error": str(exc)})
                    refusals += 1
                    await asyncio.sleep(min(0.05 * 2 ** refusals, 1.0))  # a back-off timer
                    self._publish.set()
                    continue
                refusals = 0
                self._own = (size, signed)
                await self._storage.store_published(tiles, (size, note))
                self._rt.sequencer.published(size, note)
            else:
                checkpoint, self._unstored = self._unstored, None
                await self._storage.store_published(tiles, checkpoint)
            size = max(size, self.published_size)
            self.published_size = size
            for index in [i for i in self._waiters if self._ends.get(i, size + 1) <= size]:
                waiter = self._waiters.pop(index)
                if not waiter.done():
                    waiter.set_result(self._rt.sequencer.checkpoint)
            if self._snapshots is not None:
                await self._snapshots.after_commit(size)  # committed, on this member's disk
            await self._maybe_compact()

    async def _maybe_compact(self) -> None:
        """Forget the Raft rows `raft_log_keep` behind the commit point, in steps of as
        many, at a checkpoint this member stored: it becomes the snapshot's data, which a
        member sent the snapshot checks the entries it fetches against."""
        keep = self._rt.config.raft_log_keep
        raft = self.raft
        base = raft.log.first_index - 1
        target = min(raft.commit_index, self._persisted_last) - keep
        if keep == 0 or target - base < keep:
            return
        ends = self._ends
        found = await self._storage.checkpoint_at_most(ends[target])
        if found is None:
            return
        size, note = found
        # The last Raft index at or before target whose entries end at that size.
        index = base + bisect_right(range(base + 1, target + 1), size, key=ends.__getitem__)
        if index <= base or ends[index] != size:
            return
        try:
            snapshot = raft.compact(index, note)
        except ValueError:
            return  # its Ready is not advanced yet: at the next publication
        await self._storage.compact_raft(snapshot)
        for i in range(base, index):
            ends.pop(i, None)
        log.info("compacted the Raft log", extra={"raft_index": index, "size": size})

    async def _recosigner(self) -> None:
        """Re-cosign the latest checkpoint now and then: cosignature times show freshness."""
        period = self.cluster.recosign_ms / 1000
        while True:
            await asyncio.sleep(period * (0.9 + 0.2 * random.random()))  # a timer
            if not self.is_leader or self.published_size == 0:
                continue
            if self.published_size < self.committed_size:
                continue  # the publisher is about to cosign a newer one
            if self._own is None or self._own[0] != self.published_size:
                continue  # only the checkpoint this leader published last, whole
            size, signed = self._own
            try:
                note = await self.cosigner.gather(signed, self.links, wait_all=True,
                                                  timeout=period,
                                                  quorum=self.raft.membership.quorum)
                self._rt.sequencer.published(size, note)
            except Exception as exc:
                log.warning("re-cosigning failed", extra={"error": str(exc)})


async def _decode_entries(raws: list[bytes]) -> list[LogEntry]:
    """Entries decoded strictly, _CHUNK at a time with the event loop free in between."""
    entries: list[LogEntry] = []
    for chunk in range(0, len(raws), _CHUNK):
        entries.extend(LogEntry.decode(r) for r in raws[chunk:chunk + _CHUNK])
        await asyncio.sleep(0)  # let peers' messages and requests in between
    return entries


class _Refused(CatchUpError):
    """A source served entries that do not check out (not merely no entries)."""


def restore_raft(member: str, cluster: ClusterConfig, hard: tuple[int, str | None],
                 rows: list[RaftRow], snapshot: Snapshot | None = None
                 ) -> tuple[RaftNode, dict[int, int]]:
    log_view = RaftLog.restore(((r.index, r.term) for r in rows),
                               (Entry(r.index, r.term, EntryKind(r.kind), r.data or b"")
                                for r in rows if r.kind == EntryKind.CONFIG),
                               snapshot=snapshot)
    raft = RaftNode(member, membership=Membership(cluster.voters),
                    hard_state=HardState(hard[0], hard[1]), log=log_view,
                    rng=random.Random(time.time_ns() ^ hash(member)),
                    election_ticks=cluster.election_ticks,
                    heartbeat_ticks=cluster.heartbeat_ticks)
    ends = {r.index: r.end for r in rows}
    if snapshot is not None:
        ends[snapshot.index] = checkpoint_size(snapshot.data)
    return raft, ends
