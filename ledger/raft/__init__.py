"""Raft, sans I/O: the protocol core the clustered node drives (see node.py)."""

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
)
from ledger.raft.node import MembershipChangeError, NotLeaderError, RaftNode

__all__ = [
    "AppendEntries",
    "AppendReply",
    "Entry",
    "EntryKind",
    "HardState",
    "InstallSnapshot",
    "Membership",
    "MembershipChangeError",
    "Message",
    "NotLeaderError",
    "RaftLog",
    "RaftNode",
    "Ready",
    "RequestVote",
    "Snapshot",
    "TimeoutNow",
    "VoteReply",
]
