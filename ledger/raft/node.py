"""The Raft protocol core: a deterministic state machine with no I/O.

The I/O layer feeds it logical time (tick), peer messages (step) and client writes
(propose), and repeatedly does what ready() says: persist the hard state, truncate and
append entries, send messages, then call advance(). Replies that promise durability (an
AppendReply success, a granted vote) are only released in a Ready produced after the
advance() that confirmed what they promise, so nothing is acknowledged before it is on
disk, whatever the I/O layer overlaps.

Raft as in Ongaro's thesis: pre-vote (§9.6), check-quorum, a NOOP at the start of each
term, commit by counting only entries of the current term, single-server membership
changes (a config takes effect when appended), pipelined replication with fast backup,
and log compaction (§5): the I/O layer compacts what its state machine holds, and a
follower that needs compacted entries is sent the leader's snapshot instead.
"""

from __future__ import annotations

import random
from collections import deque

from ledger.errors import DecodeError
from ledger.raft.log import RaftLog
from ledger.raft.membership import Membership
from ledger.raft.messages import (
    AppendEntries,
    AppendReply,
    Entry,
    EntryKind,
    HardState,
    InstallSnapshot,
    Message,
    Ready,
    RequestVote,
    Snapshot,
    TimeoutNow,
    VoteReply,
    may_precede_persistence,
)

FOLLOWER = "follower"
PRE_CANDIDATE = "pre-candidate"
CANDIDATE = "candidate"
LEADER = "leader"

MAX_INFLIGHT = 16  # AppendEntries in flight to one follower before waiting for replies


class NotLeaderError(Exception):
    """A write reached a node that is not the leader; leader_hint is who may be."""

    def __init__(self, leader_hint: str | None) -> None:
        self.leader_hint = leader_hint
        super().__init__(f"not the leader (leader: {leader_hint or 'unknown'})")


class MembershipChangeError(Exception):
    """A membership change that may not be proposed now."""


class _Progress:
    """The leader's view of one follower."""

    __slots__ = ("active", "inflight", "leaving", "match", "next", "paused", "probing")

    def __init__(self, next_index: int) -> None:
        self.match = 0
        self.next = next_index
        # Probing: one AppendEntries at a time until a reply shows where the logs agree;
        # then replicating: pipelined, at most MAX_INFLIGHT unacknowledged.
        self.probing = True
        self.paused = False
        self.inflight: deque[int] = deque()  # last index of each AppendEntries in flight
        self.active = False  # heard from since the last check-quorum
        # A voter that a config removed (its index here): still sent entries until it
        # holds that config and knows it committed, so that it stops acting as a voter.
        self.leaving = 0


class RaftNode:
    def __init__(self, node_id: str, *, membership: Membership, hard_state: HardState,
                 log: RaftLog, rng: random.Random, election_ticks: tuple[int, int] = (10, 20),
                 heartbeat_ticks: int = 2, max_entries_per_append: int = 64) -> None:
        lo, hi = election_ticks
        if not 0 < heartbeat_ticks < lo <= hi:
            raise ValueError("need 0 < heartbeat_ticks < election_ticks[0] <= election_ticks[1]")
        self._id = node_id
        self._initial_membership = membership
        self._log = log
        self._rng = rng
        self._election_lo, self._election_hi = lo, hi
        self._heartbeat_ticks = heartbeat_ticks
        self._max_entries = max(1, max_entries_per_append)

        self._term = hard_state.term
        self._voted_for = hard_state.voted_for
        self._role = FOLLOWER
        self._leader_id: str | None = None
        self._membership = membership
        self._apply_membership()

        # What the log's snapshot holds is committed, and applied by the I/O layer.
        self._commit = log.first_index - 1
        self._reported_commit = self._commit
        # Persistence bookkeeping. Everything in self._log is either durable (<= _durable)
        # or waiting: in _unstable (not yet in a Ready) or in the Ready in flight.
        self._durable = log.last_index
        self._disk_hi = log.last_index  # highest index that may be on disk
        self._unstable: list[Entry] = []
        self._truncate_pending: int | None = None
        self._snapshot_pending: Snapshot | None = None  # a leader's, not yet in a Ready
        self._saved_hard_state = HardState(self._term, self._voted_for)
        self._in_flight: Ready | None = None
        self._in_flight_last = 0
        self._truncated_since_ready: int | None = None
        self._readies = 0  # Readies produced
        self._advanced = 0  # Readies advanced
        self._outbox: list[Message] = []
        self._waiting: list[tuple[int, Message]] = []  # (Ready that must be advanced, reply)

        self._election_elapsed = 0
        self._election_timeout = lo
        self._heartbeat_elapsed = 0
        self._reset_election_timer()
        self._votes: dict[str, bool] = {}
        self._progress: dict[str, _Progress] = {}
        self._distrusted: tuple[int, str] | None = None  # (term, leader) whose entry we refused
        self._transfer_to: str | None = None
        self._transfer_elapsed = 0

    # ------------------------------------------------------------ read-only state

    @property
    def node_id(self) -> str:
        return self._id

    @property
    def role(self) -> str:
        return self._role

    @property
    def term(self) -> int:
        return self._term

    @property
    def leader_id(self) -> str | None:
        return self._leader_id

    @property
    def commit_index(self) -> int:
        return self._commit

    @property
    def last_index(self) -> int:
        return self._log.last_index

    @property
    def membership(self) -> Membership:
        return self._membership

    @property
    def transferring(self) -> bool:
        """A leader handing leadership over: it refuses proposals meanwhile."""
        return self._role == LEADER and self._transfer_to is not None

    def voter_match_indexes(self) -> dict[str, int]:
        """The leader's view of how far each other voter's log matches its own (empty
        on a follower or candidate)."""
        if self._role != LEADER:
            return {}
        return {p: pr.match for p, pr in sorted(self._progress.items()) if not pr.leaving}

    @property
    def log(self) -> RaftLog:
        """The core's view of the log (including entries not yet persisted); read only."""
        return self._log

    # ------------------------------------------------------------ inputs

    def tick(self) -> None:
        if self._role == LEADER:
            self._tick_leader()
            return
        self._election_elapsed += 1
        if self._election_elapsed >= self._election_timeout and self._is_voter():
            self._pre_campaign()

    def step(self, msg: Message) -> None:
        if msg.dst != self._id or msg.src == self._id:
            return
        if msg.term > self._term:
            if isinstance(msg, RequestVote) and msg.pre_vote:
                pass  # a pre-vote does not move terms
            elif isinstance(msg, VoteReply) and msg.pre_vote and msg.granted:
                pass  # granted pre-votes carry the term we would campaign in
            else:
                leader = (msg.src if isinstance(msg, AppendEntries | TimeoutNow | InstallSnapshot)
                          else None)
                self._become_follower(msg.term, leader)
        elif msg.term < self._term:
            self._step_stale(msg)
            return
        if isinstance(msg, AppendEntries):
            self._on_append(msg)
        elif isinstance(msg, AppendReply):
            self._on_append_reply(msg)
        elif isinstance(msg, RequestVote):
            self._on_request_vote(msg)
        elif isinstance(msg, VoteReply):
            self._on_vote_reply(msg)
        elif isinstance(msg, InstallSnapshot):
            self._on_install_snapshot(msg)
        elif isinstance(msg, TimeoutNow) and self._role != LEADER and self._is_voter():
            self._campaign()

    def propose(self, data: bytes) -> Entry:
        """Append a BATCH (leader only) and start replicating it."""
        self._require_leader()
        entry = Entry(self._log.last_index + 1, self._term, EntryKind.BATCH, data)
        self._append_local(entry)
        self._broadcast_append()
        return entry

    def propose_membership(self, membership: Membership) -> Entry:
        """Append a CONFIG adding or removing exactly one voter (leader only)."""
        self._require_leader()
        if self._log.config_after(self._commit):
            raise MembershipChangeError("a membership change is still pending")
        if self._log.term_at(self._commit) != self._term:
            raise MembershipChangeError("the leader has not yet committed an entry of its term")
        changed = membership.voters ^ self._membership.voters
        if len(changed) != 1:
            raise MembershipChangeError(
                f"exactly one voter may be added or removed at a time, not {sorted(changed)}")
        entry = Entry(self._log.last_index + 1, self._term, EntryKind.CONFIG,
                      membership.encode())
        self._append_local(entry)
        self._broadcast_append()
        return entry

    def compact(self, index: int, data: bytes) -> Snapshot:
        """Forget the log up to index, which the I/O layer's state machine holds (`data`
        is what it needs to hand that state to a follower). Only committed, durable
        entries may go."""
        if not self._log.first_index <= index <= min(self._commit, self._durable):
            raise ValueError(f"compact to {index}: outside {self._log.first_index}.."
                             f"{min(self._commit, self._durable)} (committed and durable)")
        term = self._log.term_at(index)
        assert term is not None
        config = self._log.config_at(index)
        snapshot = Snapshot(index, term, config.data if config is not None and
                            config.data is not None else self._initial_membership.encode(),
                            data)
        self._log.compact(snapshot)
        return snapshot

    def transfer_leadership(self, to: str) -> None:
        """Hand leadership to a voter: catch it up, then tell it to campaign at once.

        Proposals are refused while the transfer runs (at most an election timeout)."""
        self._require_leader()
        if to == self._id or to not in self._membership.voters:
            raise ValueError(f"{to!r} is not another voter")
        self._transfer_to = to
        self._transfer_elapsed = 0
        self._maybe_send_timeout_now()
        if self._transfer_to is not None:
            self._send_append(to)

    # ------------------------------------------------------------ Ready / advance

    def take_early_messages(self) -> list[Message]:
        """The messages that may leave before anything is persisted (a leader's
        AppendEntries, see may_precede_persistence), taken out of the next Ready.

        Callable at any time, even while a Ready is in flight: a leader's new entries
        then leave at once instead of after its write of an earlier batch."""
        early = [m for m in self._outbox if may_precede_persistence(m)]
        if early:
            self._outbox = [m for m in self._outbox if not may_precede_persistence(m)]
        return early

    def has_ready(self) -> bool:
        if self._in_flight is not None:
            return False
        return bool(self._unsaved() or self._outbox
                    or min(self._commit, self._durable) > self._reported_commit)

    def ready(self) -> Ready:
        if self._in_flight is not None:
            raise RuntimeError("advance() the previous Ready first")
        hard_state = HardState(self._term, self._voted_for)
        commit = max(self._reported_commit, min(self._commit, self._durable))
        ready = Ready(
            hard_state=None if hard_state == self._saved_hard_state else hard_state,
            snapshot=self._snapshot_pending,
            truncate_after=self._truncate_pending,
            entries=tuple(self._unstable),
            messages=tuple(self._outbox),
            commit_index=commit,
            newly_committed=(self._reported_commit, commit)
            if commit > self._reported_commit else None,
        )
        self._readies += 1
        self._in_flight = ready
        self._in_flight_last = self._log.last_index
        self._truncated_since_ready = None
        self._saved_hard_state = hard_state
        self._disk_hi = self._log.last_index
        self._unstable = []
        self._truncate_pending = None
        self._snapshot_pending = None
        self._outbox = []
        self._reported_commit = commit
        return ready

    def advance(self, ready: Ready, *, refused_from: int | None = None) -> None:
        """The I/O layer did what ready said (persisting only entries below refused_from,
        if its verifier refused that entry)."""
        if ready is not self._in_flight:
            raise ValueError("advance() takes the Ready in flight")
        if refused_from is not None and not (
                ready.entries and ready.entries[0].index <= refused_from
                <= ready.entries[-1].index):
            raise ValueError(f"refused_from={refused_from} is not an entry of this Ready")
        self._in_flight = None
        self._advanced = self._readies
        durable = self._in_flight_last
        if self._truncated_since_ready is not None:
            durable = min(durable, self._truncated_since_ready)
        self._durable = durable
        if refused_from is not None:
            self._refuse(refused_from)
        if self._waiting:
            still: list[tuple[int, Message]] = []
            for need, msg in self._waiting:
                (self._outbox.append(msg) if need <= self._advanced
                 else still.append((need, msg)))
            self._waiting = still
        if self._role == LEADER:
            self._maybe_commit()

    # ------------------------------------------------------------ persistence helpers

    def _unsaved(self) -> bool:
        return bool(self._unstable or self._truncate_pending is not None
                    or self._snapshot_pending is not None
                    or self._term != self._saved_hard_state.term
                    or self._voted_for != self._saved_hard_state.voted_for)

    def _send(self, msg: Message) -> None:
        self._outbox.append(msg)

    def _send_when_durable(self, msg: Message) -> None:
        """Send msg only once everything the node holds now is on disk."""
        if self._unsaved():
            self._waiting.append((self._readies + 1, msg))
        elif self._in_flight is not None:
            self._waiting.append((self._readies, msg))
        else:
            self._outbox.append(msg)

    def _append_local(self, *entries: Entry) -> None:
        self._log.append(entries)
        self._unstable.extend(entries)
        if any(e.kind is EntryKind.CONFIG for e in entries):
            self._apply_membership()

    def _truncate(self, after: int) -> None:
        self._log.truncate_after(after)
        if self._unstable and self._unstable[-1].index > after:
            self._unstable = [e for e in self._unstable if e.index <= after]
        if after < self._disk_hi:
            pending = self._truncate_pending
            self._truncate_pending = after if pending is None else min(pending, after)
        if self._in_flight is not None:
            since = self._truncated_since_ready
            self._truncated_since_ready = after if since is None else min(since, after)
        self._durable = min(self._durable, after)
        # Acknowledgements of entries that are now gone must not be sent (they would be
        # released once the Ready that held those entries is advanced).
        self._waiting = [(need, m) for need, m in self._waiting
                         if not (isinstance(m, AppendReply) and m.success
                                 and m.match_index > after)]
        self._outbox = [m for m in self._outbox
                        if not (isinstance(m, AppendReply) and m.success
                                and m.match_index > after)]
        self._apply_membership()

    def _refuse(self, index: int) -> None:
        """The I/O layer's verifier refused entry index: it and what follows are gone."""
        self._disk_hi = min(self._disk_hi, index - 1)
        self._truncate(index - 1)
        self._commit = min(self._commit, index - 1)
        if self._role == LEADER:
            # A leader's log only grows; one whose own entry is refused stops leading.
            self._become_follower(self._term, None)
            return
        leader = self._leader_id
        if leader is not None:
            # A leader that sends invalid content is no longer trusted as a heartbeat
            # source in this term, so the honest members elect another.
            self._distrusted = (self._term, leader)
            self._send(AppendReply(self._term, self._id, leader, success=False,
                                   match_index=index - 1, hint_index=index, refused=True))

    # ------------------------------------------------------------ membership

    def _apply_membership(self) -> None:
        config = self._log.latest_config()
        if config is None:
            membership = self._initial_membership
        else:
            assert config.data is not None  # CONFIG entries always carry their data
            membership = Membership.decode(config.data)
        if membership == self._membership:
            return
        self._membership = membership
        if self._role == LEADER:
            for voter in sorted(membership.voters):  # sorted: deterministic send order
                if voter != self._id and voter not in self._progress:
                    self._progress[voter] = _Progress(self._log.last_index + 1)
                elif voter in self._progress:
                    self._progress[voter].leaving = 0
            config = self._log.latest_config()
            for peer, pr in list(self._progress.items()):
                if peer not in membership.voters:
                    if config is None:
                        del self._progress[peer]
                    elif not pr.leaving:
                        pr.leaving = config.index
            if self._transfer_to is not None and self._transfer_to not in membership.voters:
                self._transfer_to = None

    def _is_voter(self) -> bool:
        return self._id in self._membership.voters

    def _has_quorum(self, members: set[str]) -> bool:
        voters = self._membership.voters
        return sum(1 for v in voters if v in members) >= self._membership.quorum

    # ------------------------------------------------------------ roles

    def _reset_election_timer(self) -> None:
        self._election_elapsed = 0
        self._election_timeout = (self._rng.randrange(self._election_lo, self._election_hi)
                                  if self._election_hi > self._election_lo
                                  else self._election_lo)

    def _become_follower(self, term: int, leader: str | None) -> None:
        if self._role == LEADER:
            # Unsent AppendEntries may name entries that a new leader will truncate
            # before the I/O layer could attach their payloads; they are stale anyway.
            self._outbox = [m for m in self._outbox if not isinstance(m, AppendEntries)]
        if term > self._term:
            self._enter_term(term)
        self._role = FOLLOWER
        self._leader_id = leader
        self._votes = {}
        self._progress = {}
        self._transfer_to = None
        self._reset_election_timer()

    def _enter_term(self, term: int) -> None:
        self._term = term
        self._voted_for = None
        # A vote granted in an earlier term and not yet sent may never reach the disk
        # (the hard state of the new term replaces it), so it must not be sent at all.
        self._waiting = [(need, m) for need, m in self._waiting if not _stale_grant(m, term)]
        self._outbox = [m for m in self._outbox if not _stale_grant(m, term)]

    def _pre_campaign(self) -> None:
        self._role = PRE_CANDIDATE
        self._leader_id = None
        self._votes = {self._id: True}
        self._reset_election_timer()
        if self._has_quorum({self._id}):
            self._campaign()
            return
        for voter in sorted(self._membership.voters):
            if voter != self._id:
                self._send(RequestVote(self._term + 1, self._id, voter, self._log.last_index,
                                       self._log.last_term, pre_vote=True))

    def _campaign(self) -> None:
        self._enter_term(self._term + 1)
        self._voted_for = self._id
        self._role = CANDIDATE
        self._leader_id = None
        self._votes = {self._id: True}
        self._reset_election_timer()
        if self._has_quorum({self._id}):
            self._become_leader()
            return
        # Sent after the vote for ourselves is persisted: the Ready orders it so.
        for voter in sorted(self._membership.voters):
            if voter != self._id:
                self._send(RequestVote(self._term, self._id, voter, self._log.last_index,
                                       self._log.last_term, pre_vote=False))

    def _become_leader(self) -> None:
        self._role = LEADER
        self._leader_id = self._id
        self._votes = {}
        self._heartbeat_elapsed = 0
        self._election_elapsed = 0
        self._transfer_to = None
        nxt = self._log.last_index + 1
        self._progress = {v: _Progress(nxt) for v in sorted(self._membership.voters)
                          if v != self._id}
        self._append_local(Entry(nxt, self._term, EntryKind.NOOP, b""))
        self._broadcast_append()
        self._maybe_commit()

    def _require_leader(self) -> None:
        if self._role != LEADER:
            raise NotLeaderError(self._leader_id)
        if self._transfer_to is not None:
            raise NotLeaderError(self._transfer_to)

    # ------------------------------------------------------------ leader

    def _tick_leader(self) -> None:
        self._election_elapsed += 1
        if self._election_elapsed >= self._election_lo:
            self._election_elapsed = 0
            # Check-quorum: a leader cut off from a majority stops claiming to lead.
            active = {p for p, pr in self._progress.items() if pr.active} | {self._id}
            for peer, pr in list(self._progress.items()):
                if pr.leaving and not pr.active:
                    del self._progress[peer]  # a removed member that is gone: stop sending
                pr.active = False
            if not self._has_quorum(active):
                self._become_follower(self._term, None)
                return
        if self._transfer_to is not None:
            self._transfer_elapsed += 1
            if self._transfer_elapsed >= self._election_lo:
                self._transfer_to = None
        self._heartbeat_elapsed += 1
        if self._heartbeat_elapsed >= self._heartbeat_ticks:
            self._heartbeat_elapsed = 0
            for peer in self._progress:
                self._send_append(peer, heartbeat=True)

    def _broadcast_append(self) -> None:
        for peer in self._progress:
            self._send_append(peer)

    def _send_append(self, peer: str, *, heartbeat: bool = False) -> None:
        pr = self._progress[peer]
        log = self._log
        last = log.last_index
        if pr.next < log.first_index:
            # What it needs next was compacted away: it gets the snapshot, then entries
            # once its reply (success at the snapshot's index) arrives.
            if not pr.paused or heartbeat or not pr.probing:
                self._send_snapshot(peer)
            return
        if pr.probing:
            if pr.paused and not heartbeat:
                return
            hi = min(last, pr.next + self._max_entries - 1)
            self._send_entries(peer, pr.next, hi)
            pr.paused = True
            return
        sent = False
        while pr.next <= last and len(pr.inflight) < MAX_INFLIGHT:
            hi = min(last, pr.next + self._max_entries - 1)
            self._send_entries(peer, pr.next, hi)
            pr.inflight.append(hi)
            pr.next = hi + 1
            sent = True
        if heartbeat and not sent:
            # Also detects lost AppendEntries: a follower missing pr.next - 1 rejects it.
            self._send_entries(peer, pr.next, pr.next - 1)

    def _send_snapshot(self, peer: str) -> None:
        snapshot = self._log.snapshot
        assert snapshot is not None
        pr = self._progress[peer]
        pr.probing, pr.paused = True, True
        pr.inflight.clear()
        self._send(InstallSnapshot(self._term, self._id, peer, snapshot))

    def _send_entries(self, peer: str, lo: int, hi: int) -> None:
        prev_term = self._log.term_at(lo - 1)
        if prev_term is None:  # compacted since it was decided to send these
            self._send_snapshot(peer)
            return
        self._send(AppendEntries(self._term, self._id, peer, lo - 1, prev_term,
                                 self._log.entries(lo, hi), self._commit))

    def _on_append_reply(self, msg: AppendReply) -> None:
        if self._role != LEADER:
            return
        pr = self._progress.get(msg.src)
        if pr is None:
            return
        pr.active = True
        if msg.refused:
            # Invalid content by that follower's rules: never count it, retry it only on
            # the next heartbeat.
            pr.probing, pr.paused = True, True
            pr.inflight.clear()
            pr.next = max(pr.match + 1, min(msg.match_index + 1, self._log.last_index + 1))
            return
        if msg.success:
            if msg.match_index > self._log.last_index:
                return  # not a reply to anything this leader sent
            if msg.match_index > pr.match:
                pr.match = msg.match_index
                self._maybe_commit()
                if self._role != LEADER:
                    return
            if pr.probing:
                pr.probing, pr.paused = False, False
                pr.next = pr.match + 1
            else:
                pr.next = max(pr.next, pr.match + 1)
            while pr.inflight and pr.inflight[0] <= pr.match:
                pr.inflight.popleft()
            if msg.src == self._transfer_to:
                self._maybe_send_timeout_now()
            if pr.leaving and min(pr.match, self._commit) >= pr.leaving:
                # It holds the config that removed it: tell it that config committed (an
                # empty append carrying the commit index), then stop replicating to it.
                self._send_entries(msg.src, pr.match + 1, pr.match)
                del self._progress[msg.src]
                return
            self._send_append(msg.src)
            return
        rejected = msg.match_index
        if rejected < pr.match or (pr.probing and rejected != pr.next - 1):
            return  # stale: answers an AppendEntries overtaken by later ones
        pr.next = max(pr.match + 1, min(msg.hint_index, rejected, self._log.last_index + 1))
        pr.probing, pr.paused = True, False
        pr.inflight.clear()
        self._send_append(msg.src)

    def _maybe_commit(self) -> None:
        membership = self._membership
        matches = sorted(
            (self._durable if v == self._id else
             (self._progress[v].match if v in self._progress else 0)
             for v in membership.voters),
            reverse=True)
        candidate = matches[membership.quorum - 1]
        # Only entries of the current term are committed by counting (thesis §3.6.2).
        if candidate > self._commit and self._log.term_at(candidate) == self._term:
            self._commit = candidate
            if not self._is_voter() and not self._log.config_after(self._commit):
                self._step_down_removed()

    def _step_down_removed(self) -> None:
        """Our removal is committed: hand over to the most up-to-date voter, then follow."""
        matches = self.voter_match_indexes()
        if matches:
            best = max(matches, key=lambda p: matches[p])
            if matches[best] == self._log.last_index:
                self._send(TimeoutNow(self._term, self._id, best))
        self._become_follower(self._term, None)

    def _maybe_send_timeout_now(self) -> None:
        to = self._transfer_to
        if to is not None and self._progress[to].match == self._log.last_index:
            self._send(TimeoutNow(self._term, self._id, to))

    # ------------------------------------------------------------ follower and candidates

    def _step_stale(self, msg: Message) -> None:
        """A message from an older term: tell the sender about ours so it steps down."""
        if isinstance(msg, AppendEntries):
            self._send(AppendReply(self._term, self._id, msg.src, success=False,
                                   match_index=msg.prev_index, hint_index=0, refused=False))
        elif isinstance(msg, InstallSnapshot):
            self._send(AppendReply(self._term, self._id, msg.src, success=False,
                                   match_index=msg.snapshot.index, hint_index=0,
                                   refused=False))
        elif isinstance(msg, RequestVote):
            self._send(VoteReply(self._term, self._id, msg.src, granted=False,
                                 pre_vote=msg.pre_vote))

    def _heard_from_leader(self, msg: AppendEntries | InstallSnapshot) -> bool:
        """Follow the sender of msg, a leader of our term; False to ignore msg."""
        if self._role == LEADER:
            return False  # cannot happen: one leader per term
        if self._distrusted == (self._term, msg.src):
            # It sent content our verifier refused: ignore it for the rest of its term, so
            # that the honest members elect another leader (and check-quorum unseats it).
            return False
        if self._role != FOLLOWER:
            self._become_follower(self._term, msg.src)
        self._election_elapsed = 0
        self._leader_id = msg.src
        return True

    def _on_append(self, msg: AppendEntries) -> None:
        if not self._heard_from_leader(msg):
            return
        log = self._log
        if msg.prev_index < log.first_index - 1:
            # Compacted here, so committed: only a resend from before the compaction.
            self._send_when_durable(AppendReply(self._term, self._id, msg.src, success=True,
                                                match_index=log.first_index - 1,
                                                hint_index=0, refused=False))
            return
        if log.term_at(msg.prev_index) != msg.prev_term:
            if msg.prev_index > log.last_index:
                hint = log.last_index + 1
            else:
                hint = log.term_start(msg.prev_index)  # skip the whole conflicting term
            hint = min(max(hint, self._commit + 1), msg.prev_index)
            self._send(AppendReply(self._term, self._id, msg.src, success=False,
                                   match_index=msg.prev_index, hint_index=max(hint, 1),
                                   refused=False))
            return
        entries = msg.entries
        new_from = len(entries)
        for k, entry in enumerate(entries):
            if log.term_at(entry.index) != entry.term:
                new_from = k
                break
        if new_from < len(entries):
            new = entries[new_from:]
            if not self._acceptable(new, msg):
                return
            if new[0].index <= log.last_index:
                self._truncate(new[0].index - 1)
            self._append_local(*new)
        last_new = msg.prev_index + len(entries)
        if msg.commit > self._commit:
            self._commit = max(self._commit, min(msg.commit, last_new))
        self._send_when_durable(AppendReply(self._term, self._id, msg.src, success=True,
                                            match_index=last_new, hint_index=0, refused=False))

    def _on_install_snapshot(self, msg: InstallSnapshot) -> None:
        if not self._heard_from_leader(msg):
            return
        snap = msg.snapshot
        matches = self._log.term_at(snap.index) == snap.term
        if matches or snap.index <= self._commit:
            # Already held: the log agrees up to there, or it is committed here.
            if matches:
                self._commit = max(self._commit, snap.index)
            match = snap.index if matches else self._commit
            self._send_when_durable(AppendReply(self._term, self._id, msg.src, success=True,
                                                match_index=match, hint_index=0,
                                                refused=False))
            return
        if snap.term > msg.term or snap.index < 1:
            return  # not a real leader's snapshot
        try:
            Membership.decode(snap.config)
        except DecodeError:
            return
        # Everything after the commit point goes (what is committed here is part of the
        # snapshot); the I/O layer then replaces its whole persisted log by the snapshot.
        self._truncate(self._commit)
        self._log.reset_to(snap)
        self._unstable = []
        self._truncate_pending = None
        self._snapshot_pending = snap
        self._disk_hi = snap.index
        self._commit = snap.index
        self._apply_membership()
        self._send_when_durable(AppendReply(self._term, self._id, msg.src, success=True,
                                            match_index=snap.index, hint_index=0,
                                            refused=False))

    def _acceptable(self, new: tuple[Entry, ...], msg: AppendEntries) -> bool:
        """Whether a leader's entries are well formed (step() never raises on them)."""
        first = new[0].index
        if first <= self._commit:
            return False  # would rewrite committed entries: not a real leader's message
        if self._log.check_append(new, after=first - 1) is not None:
            return False
        for e in new:
            if e.term > msg.term:
                return False
            if e.kind is EntryKind.CONFIG:
                try:
                    Membership.decode(e.data or b"")
                except DecodeError:
                    return False
        return True

    def _on_request_vote(self, msg: RequestVote) -> None:
        log = self._log
        up_to_date = (msg.last_term, msg.last_index) >= (log.last_term, log.last_index)
        if msg.pre_vote:
            # Pre-vote does not disrupt: refuse while a trusted leader was heard lately.
            in_lease = self._role == LEADER or (
                self._role == FOLLOWER and self._leader_id is not None
                and self._distrusted != (self._term, self._leader_id)
                and self._election_elapsed < self._election_lo)
            granted = msg.term > self._term and up_to_date and not in_lease
            self._send(VoteReply(msg.term if granted else self._term, self._id, msg.src,
                                 granted=granted, pre_vote=True))
            return
        granted = (self._role != LEADER and up_to_date
                   and self._voted_for in (None, msg.src))
        if granted:
            self._voted_for = msg.src
            self._reset_election_timer()
            self._send_when_durable(VoteReply(self._term, self._id, msg.src, granted=True,
                                              pre_vote=False))
        else:
            self._send(VoteReply(self._term, self._id, msg.src, granted=False,
                                 pre_vote=False))

    def _on_vote_reply(self, msg: VoteReply) -> None:
        if msg.pre_vote:
            if self._role != PRE_CANDIDATE:
                return
            if msg.granted and msg.term != self._term + 1:
                return
        elif self._role != CANDIDATE:
            return
        self._votes[msg.src] = msg.granted
        if self._has_quorum({v for v, granted in self._votes.items() if granted}):
            if self._role == PRE_CANDIDATE:
                self._campaign()
            else:
                self._become_leader()

    def __repr__(self) -> str:
        return (f"RaftNode({self._id} {self._role} term={self._term} "
                f"last={self._log.last_index} commit={self._commit})")


def _stale_grant(msg: Message, term: int) -> bool:
    return isinstance(msg, VoteReply) and msg.granted and not msg.pre_vote and msg.term < term
