"""Strict canonical msgpack for the Raft messages peers exchange.

A frame is a msgpack array of messages; each message is an array led by its type code:

    RequestVote   [0, term, src, dst, last_index, last_term, pre_vote]
    VoteReply     [1, term, src, dst, granted, pre_vote]
    AppendEntries [2, term, src, dst, prev_index, prev_term, [entry...], commit]
                   entry = [index, term, kind, data]   (kind: 0 NOOP, 1 BATCH, 2 CONFIG)
    AppendReply   [3, term, src, dst, success, match_index, hint_index, refused]
    TimeoutNow    [4, term, src, dst]
    InstallSnapshot [5, term, src, dst, [index, snapshot_term, config, data]]

Numbers are non-negative 64-bit integers, ids are member ids, data is bin. The decoder
accepts exactly the bytes encode_messages produces (it re-encodes and compares), so a
peer cannot smuggle alternative encodings; a new message type gets a new code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ledger.codec import pack, unpack
from ledger.errors import (
    FieldTypeError,
    FieldValueError,
    NonCanonicalError,
    OversizeError,
)
from ledger.raft.membership import check_member_id
from ledger.raft.messages import (
    AppendEntries,
    AppendReply,
    Entry,
    EntryKind,
    InstallSnapshot,
    Message,
    RequestVote,
    Snapshot,
    TimeoutNow,
    VoteReply,
)

MAX_FRAME = 256 * 1024 * 1024
MAX_ENTRIES = 4096
_U64 = 2**63 - 1
_KINDS = {k.value: k for k in EntryKind}


def encode_messages(messages: Iterable[Message]) -> bytes:
    return pack([_to_wire(m) for m in messages])


def _to_wire(m: Message) -> list[Any]:
    if isinstance(m, AppendEntries):
        entries = []
        for e in m.entries:
            if e.data is None:
                raise ValueError(f"entry {e.index} has no data: attach it with with_data()")
            entries.append([e.index, e.term, int(e.kind), e.data])
        return [2, m.term, m.src, m.dst, m.prev_index, m.prev_term, entries, m.commit]
    if isinstance(m, AppendReply):
        return [3, m.term, m.src, m.dst, m.success, m.match_index, m.hint_index, m.refused]
    if isinstance(m, RequestVote):
        return [0, m.term, m.src, m.dst, m.last_index, m.last_term, m.pre_vote]
    if isinstance(m, VoteReply):
        return [1, m.term, m.src, m.dst, m.granted, m.pre_vote]
    if isinstance(m, TimeoutNow):
        return [4, m.term, m.src, m.dst]
    if isinstance(m, InstallSnapshot):
        s = m.snapshot
        return [5, m.term, m.src, m.dst, [s.index, s.term, s.config, s.data]]
    raise TypeError(f"not a Raft message: {type(m).__name__}")


def frames(messages: Iterable[Message], max_bytes: int) -> list[list[Message]]:
    """The messages in frames of about max_bytes of payload each, in order: a large
    AppendEntries (a follower catching up is sent up to 64 batches at once) is split at
    entry boundaries into consecutive ones, each naming the entry before it. A single
    entry larger than max_bytes travels alone."""
    out: list[list[Message]] = [[]]
    room = max_bytes
    for m in messages:
        pieces = _split_append(m, max_bytes) if isinstance(m, AppendEntries) else [m]
        for piece in pieces:
            size = _payload_size(piece)
            if out[-1] and size > room:
                out.append([])
                room = max_bytes
            out[-1].append(piece)
            room -= size
    return [f for f in out if f]


def _payload_size(m: Message) -> int:
    if isinstance(m, AppendEntries):
        return 64 + sum(16 + len(e.data or b"") for e in m.entries)
    return 64


def _split_append(m: AppendEntries, max_bytes: int) -> list[AppendEntries]:
    if _payload_size(m) <= max_bytes:
        return [m]
    pieces: list[AppendEntries] = []
    prev_index, prev_term = m.prev_index, m.prev_term
    chunk: list[Entry] = []
    room = max_bytes - 64
    for e in m.entries:
        size = 16 + len(e.data or b"")
        if chunk and size > room:
            pieces.append(AppendEntries(m.term, m.src, m.dst, prev_index, prev_term,
                                        tuple(chunk), m.commit))
            prev_index, prev_term = chunk[-1].index, chunk[-1].term
            chunk, room = [], max_bytes - 64
        chunk.append(e)
        room -= size
    pieces.append(AppendEntries(m.term, m.src, m.dst, prev_index, prev_term, tuple(chunk),
                                m.commit))
    return pieces


def decode_messages(data: bytes, *, max_size: int = MAX_FRAME) -> list[Message]:
    value = unpack(data, max_size=max_size)
    if type(value) is not list or (value and type(value[0]) is tuple):  # tuples: a map
        raise FieldTypeError("expected an array of messages")
    messages = [_message(item, f"[{i}]") for i, item in enumerate(value)]
    if pack([_to_wire(m) for m in messages]) != bytes(data):
        raise NonCanonicalError("not the canonical encoding")
    return messages


def _num(value: Any, field: str) -> int:
    if type(value) is not int:
        raise FieldTypeError("expected an integer", field=field)
    if not 0 <= value <= _U64:
        raise FieldValueError(f"{value} is outside [0, 2^63-1]", field=field)
    return value


def _flag(value: Any, field: str) -> bool:
    if type(value) is not bool:
        raise FieldTypeError("expected a boolean", field=field)
    return value


def _vote(v: list[Any], p: str) -> RequestVote:
    return RequestVote(_num(v[1], p + ".term"), check_member_id(v[2], p + ".src"),
                       check_member_id(v[3], p + ".dst"), _num(v[4], p + ".last_index"),
                       _num(v[5], p + ".last_term"), _flag(v[6], p + ".pre_vote"))


def _vote_reply(v: list[Any], p: str) -> VoteReply:
    return VoteReply(_num(v[1], p + ".term"), check_member_id(v[2], p + ".src"),
                     check_member_id(v[3], p + ".dst"), _flag(v[4], p + ".granted"),
                     _flag(v[5], p + ".pre_vote"))


def _append(v: list[Any], p: str) -> AppendEntries:
    term, prev_index = _num(v[1], p + ".term"), _num(v[4], p + ".prev_index")
    raw = v[6]
    if type(raw) is not list:
        raise FieldTypeError("expected an array", field=p + ".entries")
    if len(raw) > MAX_ENTRIES:
        raise OversizeError(f"more than {MAX_ENTRIES} entries", field=p + ".entries")
    entries = []
    for i, item in enumerate(raw):
        f = f"{p}.entries[{i}]"
        if type(item) is not list or len(item) != 4:
            raise FieldTypeError("expected [index, term, kind, data]", field=f)
        index, eterm = _num(item[0], f + ".index"), _num(item[1], f + ".term")
        if index != prev_index + 1 + i:
            raise FieldValueError(f"index {index} is not {prev_index + 1 + i}", field=f + ".index")
        if eterm > term:
            raise FieldValueError(f"term {eterm} is above the message's {term}", field=f + ".term")
        kind = _KINDS.get(_num(item[2], f + ".kind"))
        if kind is None:
            raise FieldValueError(f"unknown entry kind {item[2]}", field=f + ".kind")
        if type(item[3]) is not bytes:
            raise FieldTypeError("expected bytes", field=f + ".data")
        entries.append(Entry(index, eterm, kind, item[3]))
    return AppendEntries(term, check_member_id(v[2], p + ".src"),
                         check_member_id(v[3], p + ".dst"), prev_index,
                         _num(v[5], p + ".prev_term"), tuple(entries), _num(v[7], p + ".commit"))


def _append_reply(v: list[Any], p: str) -> AppendReply:
    return AppendReply(_num(v[1], p + ".term"), check_member_id(v[2], p + ".src"),
                       check_member_id(v[3], p + ".dst"), _flag(v[4], p + ".success"),
                       _num(v[5], p + ".match_index"), _num(v[6], p + ".hint_index"),
                       _flag(v[7], p + ".refused"))


def _timeout_now(v: list[Any], p: str) -> TimeoutNow:
    return TimeoutNow(_num(v[1], p + ".term"), check_member_id(v[2], p + ".src"),
                      check_member_id(v[3], p + ".dst"))


def _install_snapshot(v: list[Any], p: str) -> InstallSnapshot:
    term, raw, f = _num(v[1], p + ".term"), v[4], p + ".snapshot"
    if type(raw) is not list or len(raw) != 4:
        raise FieldTypeError("expected [index, term, config, data]", field=f)
    index, sterm = _num(raw[0], f + ".index"), _num(raw[1], f + ".term")
    if index < 1 or sterm < 1:
        raise FieldValueError("a snapshot starts at index 1 and term 1 or later", field=f)
    if sterm > term:
        raise FieldValueError(f"term {sterm} is above the message's {term}", field=f + ".term")
    for k, name in ((2, "config"), (3, "data")):
        if type(raw[k]) is not bytes:
            raise FieldTypeError("expected bytes", field=f"{f}.{name}")
    return InstallSnapshot(term, check_member_id(v[2], p + ".src"),
                           check_member_id(v[3], p + ".dst"),
                           Snapshot(index, sterm, raw[2], raw[3]))


_DECODERS: dict[int, tuple[int, Callable[[list[Any], str], Message]]] = {
    0: (7, _vote), 1: (6, _vote_reply), 2: (8, _append), 3: (8, _append_reply),
    4: (4, _timeout_now), 5: (5, _install_snapshot),
}


def _message(value: Any, path: str) -> Message:
    if type(value) is not list or not value:
        raise FieldTypeError("expected a non-empty array", field=path)
    code = _num(value[0], path + ".type")
    known = _DECODERS.get(code)
    if known is None:
        raise FieldValueError(f"unknown message type {code}", field=path + ".type")
    length, decode = known
    if len(value) != length:
        raise FieldValueError(f"expected {length} items, got {len(value)}", field=path)
    return decode(value, path)
