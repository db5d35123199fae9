"""State snapshots: a loaded snapshot behaves exactly as the state it was taken from."""

from __future__ import annotations

import hashlib
import os

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from state_script import Script, answers, genesis_state, ops

from ledger.smt import StatusMap
from ledger.state import LedgerState
from ledger.state_snapshot import (
    MAGIC,
    SnapshotError,
    load_snapshot,
    map_from_sorted_leaves,
    snapshot_bytes,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=ops, after=ops)
def test_a_loaded_snapshot_behaves_as_the_original(before: list[tuple[int, int, int, int]],
                                                   after: list[tuple[int, int, int, int]]) -> None:
    state, script = genesis_state(), Script()
    for op in before:
        script.run(op, state)
    data = snapshot_bytes(state)
    loaded = load_snapshot(data)
    assert snapshot_bytes(loaded) == data  # canonical: one state, one byte string
    for (_, subject, _), status in loaded.statuses.items():  # held once, as when live
        assert subject is loaded.grants[status.grant].subject
    seen = [*state.event_index, bytes(32)]
    assert answers(loaded, seen) == answers(state, seen)
    for op in after:
        original, restored = script.run(op, state, loaded)
        assert restored == original
    seen = list(state.event_index) + [g.id for g in script.grants]
    assert answers(loaded, seen) == answers(state, seen)
    assert snapshot_bytes(loaded) == snapshot_bytes(state)


def test_the_map_built_from_sorted_leaves_is_the_map_set_many_builds() -> None:
    for n in (0, 1, 2, 3, 17, 300):
        items = sorted((os.urandom(32), os.urandom(32)) for _ in range(n))
        expected = StatusMap()
        expected.set_many(items)
        built = map_from_sorted_leaves(b"".join(k + v for k, v in items))
        assert built.root() == expected.root() and len(built) == n
        assert built.leaves() == expected.leaves()
        probe = os.urandom(32)
        assert built.prove(probe) == expected.prove(probe)
        # The built map keeps growing as one that set_many built.
        more = [(os.urandom(32), os.urandom(32)) for _ in range(5)]
        built.set_many(more)
        expected.set_many(more)
        assert built.root() == expected.root()


def test_unsorted_leaves_are_refused() -> None:
    a, b = sorted([os.urandom(32), os.urandom(32)])
    with pytest.raises(SnapshotError, match="increasing order"):
        map_from_sorted_leaves(b + bytes(32) + a + bytes(32))


@pytest.fixture(scope="module")
def sample() -> bytes:
    state, script = genesis_state(), Script()
    for i in range(60):
        script.run((i % 9, i % 5, i % 4, i % 6), state)
    assert state.grants and state.statuses
    return snapshot_bytes(state)


def repack(data: bytes, edit: object) -> bytes:
    """The snapshot with its body changed by `edit` and its digest recomputed."""
    magic, version, _, body = msgpack.unpackb(data)
    fields = msgpack.unpackb(body)
    edit(fields)  # type: ignore[operator]
    body = msgpack.packb(fields, use_bin_type=True)
    return msgpack.packb([magic, version, hashlib.sha256(body).digest(), body],
                         use_bin_type=True)


def _set(i: int, value: object) -> object:
    return lambda f: f.__setitem__(i, value)


@pytest.mark.parametrize(("edit", "message"), [
    (_set(0, -1), "header"),
    (_set(1, b"short"), "header"),
    (_set(7, b"x" * 31), "ids: expected"),
    (_set(8, ["a", "a"]), "strings: expected a list of distinct"),
    (lambda f: f[11][0].__setitem__(2, b"short"), r"grants\[0\]: subject is invalid"),
    (lambda f: f[11][0].__setitem__(0, 10**9), r"grants\[0\]: a reference out of range"),
    (lambda f: f[11][0].__setitem__(3, []), r"grants\[0\]: purposes is invalid"),
    (lambda f: f[12][0].__setitem__(6, "nobody"), r"statuses\[0\]: withdrawn_by is invalid"),
    (lambda f: f[12][0].__setitem__(4, 999_999), r"statuses\[0\]: a reference out of range"),
    (lambda f: f[12].append(f[12][0]), r"statuses\[\d+\]: a second status"),
    (lambda f: f[12][0].__setitem__(3, True), r"statuses\[0\]: index is invalid"),
    (lambda f: f[9][0].__setitem__(0, b"k"), r"keys\[0\]: key id is invalid"),
    (lambda f: f[10].__setitem__(0, b"\x80"), r"controllers\[0\]"),
    (lambda f: f.__setitem__(13, f[13][:-64]), "leaves: .* map leaves for"),
    (lambda f: f.__setitem__(13, f[13][:-1] + bytes([f[13][-1] ^ 1])),
     "leaves: the status map they make does not have the snapshot's root"),
    (lambda f: f.append(0), "not a list of 14 fields"),
])
def test_a_bad_snapshot_is_refused_saying_why(sample: bytes, edit: object,
                                              message: str) -> None:
    with pytest.raises(SnapshotError, match=message):
        load_snapshot(repack(sample, edit))


def test_torn_foreign_or_future_bytes_are_refused(sample: bytes) -> None:
    flipped = bytearray(sample)
    flipped[len(flipped) // 2] ^= 1
    with pytest.raises(SnapshotError, match="does not match its digest"):
        load_snapshot(bytes(flipped))
    with pytest.raises(SnapshotError, match="not msgpack"):
        load_snapshot(sample[:-10])
    with pytest.raises(SnapshotError, match="not msgpack"):
        load_snapshot(sample + b"\x00")  # trailing bytes
    _, _, digest, body = msgpack.unpackb(sample)
    with pytest.raises(SnapshotError, match="version 2"):
        load_snapshot(msgpack.packb([MAGIC, 2, digest, body]))
    with pytest.raises(SnapshotError, match="not a state snapshot"):
        load_snapshot(msgpack.packb(["pickle", 1, digest, body]))
    with pytest.raises(SnapshotError, match="extension type"):
        load_snapshot(msgpack.packb([MAGIC, 1, digest, msgpack.ExtType(1, b"x")]))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_altered_body_is_loaded_or_refused_with_a_snapshot_error(
        sample: bytes, data: st.DataObject) -> None:
    """Even with its digest recomputed, a changed body never escapes as another error."""
    _, _, _, body = msgpack.unpackb(sample)
    at = data.draw(st.integers(0, len(body) - 1))
    changed = body[:at] + bytes([data.draw(st.integers(0, 255))]) + body[at + 1:]
    resealed = msgpack.packb([MAGIC, 1, hashlib.sha256(changed).digest(), changed])
    try:
        state = load_snapshot(resealed)
    except SnapshotError:
        return
    assert isinstance(state, LedgerState)
