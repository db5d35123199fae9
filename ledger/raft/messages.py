"""The values the Raft core exchanges with its I/O layer: log entries, the persisted
hard state, snapshots, the six peer messages, and Ready (what to persist and send now).

All are frozen, slotted dataclasses: they are built on the hot path and never copied.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace


class EntryKind(enum.IntEnum):
    NOOP = 0    # the first entry of every leader's term (lets it commit earlier terms)
    BATCH = 1   # an opaque batch of ledger entries
    CONFIG = 2  # a Membership, encoded


@dataclass(frozen=True, slots=True)
class Entry:
    index: int  # 1-based Raft index
    term: int
    kind: EntryKind
    # CONFIG: Membership.encode(); NOOP: b""; BATCH: the payload. The core never holds
    # BATCH payloads, so in the AppendEntries it emits they are None and the I/O layer
    # attaches them from its storage (with_data) before sending. Everywhere else
    # (messages given to step(), Ready.entries) data is present.
    data: bytes | None

    def with_data(self, data: bytes) -> Entry:
        return replace(self, data=data)


@dataclass(frozen=True, slots=True)
class HardState:
    term: int
    voted_for: str | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The compacted start of a log: entries up to `index` (of `term`) are committed and
    held by the state machine, not the log. `config` is the Membership in force there,
    encoded; `data` belongs to the I/O layer (what it needs to fetch and check that
    state, which the Raft messages never carry)."""

    index: int
    term: int
    config: bytes
    data: bytes


@dataclass(frozen=True, slots=True)
class RequestVote:
    term: int  # for a pre-vote, the term the sender would campaign in (not yet its own)
    src: str
    dst: str
    last_index: int
    last_term: int
    pre_vote: bool


@dataclass(frozen=True, slots=True)
class VoteReply:
    term: int
    src: str
    dst: str
    granted: bool
    pre_vote: bool


@dataclass(frozen=True, slots=True)
class AppendEntries:
    term: int
    src: str
    dst: str
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int


@dataclass(frozen=True, slots=True)
class AppendReply:
    term: int
    src: str
    dst: str
    # success: the follower's log matches the leader's through match_index, durably.
    # failure: match_index echoes the prev_index that did not match (so the leader can
    #   tell a stale rejection from a fresh one) and hint_index is where to retry.
    # refused: the follower's verifier refused the entry at match_index + 1.
    success: bool
    match_index: int
    hint_index: int
    refused: bool


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Leadership transfer: campaign now, without waiting for a timeout or a pre-vote."""

    term: int
    src: str
    dst: str


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """A leader whose log no longer holds what a follower needs next: take this snapshot
    (answered with an AppendReply, success at snapshot.index, once it is durable)."""

    term: int
    src: str
    dst: str
    snapshot: Snapshot


Message = RequestVote | VoteReply | AppendEntries | AppendReply | TimeoutNow | InstallSnapshot


@dataclass(frozen=True, slots=True)
class Ready:
    """What the I/O layer must do now, in this order, then call advance(ready)."""

    hard_state: HardState | None  # persist if not None (before sending messages)
    # If not None: the persisted log is replaced by this snapshot (every persisted entry
    # goes, the state machine takes the snapshot's state), before the entries below.
    snapshot: Snapshot | None
    truncate_after: int | None  # first delete persisted entries with index > truncate_after
    entries: tuple[Entry, ...]  # then durably append these (data always present)
    messages: tuple[Message, ...]  # then send these (only after the above is durable,
    #   except what may_precede_persistence allows)
    commit_index: int  # entries <= commit_index are committed AND persisted here
    newly_committed: tuple[int, int] | None  # (lo, hi] committed since the last Ready


def may_precede_persistence(message: Message) -> bool:
    """Whether the I/O layer may send `message` before it persists the Ready holding it.

    Only a leader sends AppendEntries, and a leader may replicate entries while it writes
    them to its own disk (Raft thesis, 10.2.1): it counts itself toward a commit only
    once advance() reports them durable, and a follower's acknowledgement is a promise
    about the follower's disk, not the leader's. Overlapping the two writes takes one
    disk write off every commit's path. Every other message carries a promise (a vote,
    an acknowledgement) or a term that must be durable first.
    """
    return isinstance(message, AppendEntries)

