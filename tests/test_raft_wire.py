"""The Raft wire codec: round trips, and one rejection per class of malformed input."""

import msgpack
import pytest

from ledger.errors import (
    DecodeError,
    FieldTypeError,
    FieldValueError,
    MalformedError,
    NonCanonicalError,
)
from ledger.raft import (
    AppendEntries,
    AppendReply,
    Entry,
    EntryKind,
    InstallSnapshot,
    Membership,
    RequestVote,
    Snapshot,
    TimeoutNow,
    VoteReply,
)
from ledger.raft.wire import decode_messages, encode_messages, frames

ALL = [
    RequestVote(3, "n1", "n2", 10, 2, pre_vote=True),
    VoteReply(3, "n2", "n1", granted=False, pre_vote=False),
    AppendEntries(4, "n1", "n3", 7, 2, (
        Entry(8, 4, EntryKind.NOOP, b""),
        Entry(9, 4, EntryKind.BATCH, b"\x00payload" * 100),
        Entry(10, 4, EntryKind.CONFIG, Membership.of("n1", "n3").encode()),
    ), commit=6),
    AppendEntries(4, "n1", "n3", 10, 4, (), commit=10),
    AppendReply(4, "n3", "n1", success=True, match_index=10, hint_index=0, refused=False),
    TimeoutNow(4, "n1", "n2"),
    InstallSnapshot(5, "n1", "n2", Snapshot(90, 4, Membership.of("n1", "n2").encode(),
                                            b"\x00" * 8)),
]


def test_every_message_round_trips() -> None:
    assert decode_messages(encode_messages(ALL)) == ALL
    assert decode_messages(encode_messages([])) == []


def test_entries_without_data_cannot_be_sent() -> None:
    bare = AppendEntries(1, "n1", "n2", 0, 0, (Entry(1, 1, EntryKind.BATCH, None),), 0)
    with pytest.raises(ValueError, match="with_data"):
        encode_messages([bare])


def raw(*items: object) -> bytes:
    return msgpack.packb(list(items), use_bin_type=True)


@pytest.mark.parametrize(("data", "error", "field"), [
    (b"\x91", MalformedError, None),  # truncated
    (encode_messages(ALL[:1]) + b"\x00", MalformedError, None),  # trailing bytes
    (msgpack.packb({"a": 1}), FieldTypeError, None),  # not an array of messages
    (raw([9, 1, "n1", "n2"]), FieldValueError, "[0].type"),  # unknown kind
    (raw([4, 1, "n1"]), FieldValueError, "[0]"),  # missing field
    (raw([4, 1, "n1", "n2", 0]), FieldValueError, "[0]"),  # extra field
    (raw([4, -1, "n1", "n2"]), FieldValueError, "[0].term"),  # negative number
    (raw([4, 1.0, "n1", "n2"]), FieldTypeError, "[0].term"),  # float
    (raw([4, True, "n1", "n2"]), FieldTypeError, "[0].term"),  # bool for int
    (raw([1, 1, "n1", "n2", 1, False]), FieldTypeError, "[0].granted"),  # int for bool
    (raw([4, 1, "N1", "n2"]), FieldValueError, "[0].src"),  # bad member id
    (raw([4, 1, b"n1", "n2"]), FieldTypeError, "[0].src"),  # bytes for str
    (raw([2, 1, "n1", "n2", 0, 0, [[2, 1, 0, b""]], 0]), FieldValueError,
     "[0].entries[0].index"),  # not contiguous
    (raw([2, 1, "n1", "n2", 0, 0, [[1, 2, 0, b""]], 0]), FieldValueError,
     "[0].entries[0].term"),  # entry above the message term
    (raw([2, 1, "n1", "n2", 0, 0, [[1, 1, 7, b""]], 0]), FieldValueError,
     "[0].entries[0].kind"),  # unknown entry kind
    (raw([2, 1, "n1", "n2", 0, 0, [[1, 1, 0, "x"]], 0]), FieldTypeError,
     "[0].entries[0].data"),  # str for bin
    (raw([2, 1, "n1", "n2", 0, 0, [[1, 1, 0]], 0]), FieldTypeError, "[0].entries[0]"),
    (raw([5, 1, "n1", "n2", [0, 1, b"", b""]]), FieldValueError, "[0].snapshot"),
    (raw([5, 1, "n1", "n2", [3, 2, b"", b""]]), FieldValueError, "[0].snapshot.term"),
    (raw([5, 1, "n1", "n2", [3, 1, "x", b""]]), FieldTypeError, "[0].snapshot.config"),
    (raw([5, 1, "n1", "n2", [3, 1, b""]]), FieldTypeError, "[0].snapshot"),
    (b"\x91\x94\x04\xcc\x01\xa2n1\xa2n2", NonCanonicalError, None),  # 1 as uint8
])
def test_malformed_input_is_rejected_naming_the_field(data: bytes, error: type[DecodeError],
                                                      field: str | None) -> None:
    with pytest.raises(error) as exc:
        decode_messages(data)
    assert exc.value.field == field


def test_membership_decoding_is_strict() -> None:
    m = Membership.of("n2", "n1")
    assert Membership.decode(m.encode()) == m and m.quorum == 2
    for bad, error in [
        (msgpack.packb({"voters": ["n2", "n1"]}), NonCanonicalError),
        (msgpack.packb({"voters": ["n1"], "x": 1}), DecodeError),
        (msgpack.packb({"voters": "n1"}), FieldTypeError),
        (msgpack.packb({"voters": ["N1"]}), FieldValueError),
        (msgpack.packb({"voters": []}), FieldValueError),
    ]:
        with pytest.raises(error):
            Membership.decode(bad)


def test_a_large_append_travels_in_frames_a_follower_takes_in_order() -> None:
    entries = tuple(Entry(i, 3, EntryKind.BATCH, bytes([i]) * (100 * i)) for i in range(5, 15))
    big = AppendEntries(3, "n1", "n2", 4, 2, entries, commit=9)
    vote = VoteReply(3, "n1", "n3", granted=False, pre_vote=False)
    out = frames([vote, big, vote], max_bytes=2500)
    assert len(out) > 2
    flat = [m for f in out for m in f]
    assert flat[0] == vote and flat[-1] == vote
    pieces = [m for m in flat if isinstance(m, AppendEntries)]
    assert tuple(e for p in pieces for e in p.entries) == entries
    # Each piece names the entry before it, as the whole message did for its first.
    assert [(p.prev_index, p.prev_term) for p in pieces] == \
        [(4, 2)] + [(p.entries[-1].index, 3) for p in pieces[:-1]]
    assert all(p.commit == 9 and p.term == 3 for p in pieces)
    for f in out:  # within the budget, but for an entry larger than it alone
        pieces_in = [m for m in f if isinstance(m, AppendEntries)]
        size = sum(len(e.data or b"") for m in pieces_in for e in m.entries)
        assert size <= 2500 or (len(pieces_in) == 1 and len(pieces_in[0].entries) == 1)
    assert frames([], 100) == [] and frames([vote], 100) == [[vote]]
