"""State snapshots: a loaded snapshot behaves exactly as the state it was taken from."""

from __future__ import annotations

import dataclasses
import hashlib
import os

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from factories import DAY, T0, grant, revoke
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.commitment import subject_commitment, token_hash
from ledger.errors import LedgerError, RejectedError
from ledger.events import (
    ControllerRegister,
    ControllerRetire,
    ControllerRotate,
    Genesis,
    Grant,
    StatusRoot,
)
from ledger.signed import (
    SignedEvent,
    key_id,
    log_authored,
    public_bytes,
    sign_event,
    token_revocation,
)
from ledger.smt import StatusMap
from ledger.state import LedgerState
from ledger.state_snapshot import (
    MAGIC,
    SnapshotError,
    load_snapshot,
    map_from_sorted_leaves,
    snapshot_bytes,
)

CONTROLLERS = ("shop.example", "bank.example")
PURPOSES = ("dpv:Marketing", "dpv:ServiceProvision", "dpv:Personalisation")
SUBJECTS = tuple(subject_commitment("shop.example", f"customer-{i}", bytes(32)) for i in range(4))
TOKENS = tuple(bytes([i]) * 32 for i in range(4))
OPERATOR = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"operator").digest())
KEYS = tuple(Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"key %d" % i).digest())
             for i in range(5))


@dataclasses.dataclass
class Script:
    """Turns drawn numbers into events: valid ones mostly, some that must be refused."""

    grants: list[SignedEvent] = dataclasses.field(default_factory=list)
    clock: int = T0

    def event(self, op: tuple[int, int, int, int], state: LedgerState) -> SignedEvent:
        kind, a, b, c = op
        self.clock += 1
        controller, key = CONTROLLERS[a % 2], KEYS[b % len(KEYS)]
        if kind == 0:
            return sign_event(ControllerRegister(
                controller=controller, name="C", contact="dpo@c.example",
                key=public_bytes(key), registered_at=self.clock), OPERATOR)
        if kind == 1:
            return sign_event(ControllerRotate(
                controller=controller, old_key_id=key_id(public_bytes(key)),
                key=public_bytes(KEYS[c % len(KEYS)]), rotated_at=self.clock), OPERATOR)
        if kind == 2:
            return sign_event(ControllerRetire(controller=controller,
                                               key_id=key_id(public_bytes(key)),
                                               retired_at=self.clock), OPERATOR)
        if kind == 3 and self.grants:
            target = self.grants[c % len(self.grants)]
            by = "subject" if a % 3 == 0 else "controller"
            event = revoke(controller=target.body.controller,  # type: ignore[attr-defined]
                           by=by, revoked_at=self.clock, grant=target.id)
            if b % 2:
                return token_revocation(dataclasses.replace(event, by="subject"),
                                        TOKENS[c % len(TOKENS)])
            return sign_event(event, key)
        if kind == 4:
            return sign_event(revoke(controller=controller, revoked_at=self.clock, grant=None,
                                     subject=SUBJECTS[b % len(SUBJECTS)],
                                     purposes=tuple(sorted({PURPOSES[c % 3]}))), key)
        if kind == 5:
            return log_authored(StatusRoot(size=state.size, map_root=state.map_root()))
        purposes = tuple(sorted({PURPOSES[b % 3], PURPOSES[c % 3]}))
        return sign_event(grant(controller=controller, subject=SUBJECTS[c % len(SUBJECTS)],
                                purposes=purposes, consented_at=self.clock,
                                valid_until=self.clock + 1 + (a % 3) * DAY,
                                token_hash=token_hash(TOKENS[c % len(TOKENS)])), key)

    def run(self, op: tuple[int, int, int, int], *states: LedgerState) -> list[object]:
        """The event `op` makes, admitted to each state: what each said."""
        signed = self.event(op, states[0])
        results = [outcome(state, signed, self.clock) for state in states]
        if isinstance(signed.body, Grant) and states[0].index_of(signed.id) is not None:
            self.grants.append(signed)
        return results


def genesis_state() -> LedgerState:
    state = LedgerState()
    state.admit(sign_event(Genesis(origin="log.example/snap", operator_key=public_bytes(OPERATOR),
                                   created_at=T0, max_skew_ms=DAY), OPERATOR), T0,
                signature_verified=False)
    state.admit(sign_event(ControllerRegister(
        controller=CONTROLLERS[0], name="Shop", contact="dpo@shop.example",
        key=public_bytes(KEYS[0]), registered_at=T0), OPERATOR), T0, signature_verified=False)
    return state


def outcome(state: LedgerState, signed: SignedEvent, at: int) -> object:
    try:
        return state.admit(signed, at, signature_verified=False).encoded
    except RejectedError as exc:
        return ("rejected", exc.code, str(exc))
    except LedgerError as exc:
        return (type(exc).__name__, str(exc))


def answers(state: LedgerState, seen: list[bytes]) -> object:
    now = T0 + DAY // 2
    return (
        state.size, state.prev, state.last_time, state.map_root(), len(state.map),
        [state.status(c, s, p, now) for c in CONTROLLERS for s in SUBJECTS for p in PURPOSES],
        [state.index_of(i) for i in seen],
        [(kid, dataclasses.astuple(k)) for kid, k in state.keys.items()],
        [list(state.active_keys(c)) for c in CONTROLLERS],
        [(gid, dataclasses.astuple(g)) for gid, g in state.grants.items()],
        [state.map.prove(hashlib.sha256(s).digest()) for s in SUBJECTS],
    )


ops = st.lists(st.tuples(st.integers(0, 8), st.integers(0, 5), st.integers(0, 5),
                         st.integers(0, 5)), min_size=1, max_size=40)


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
