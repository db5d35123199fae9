"""A scripted consent log for state tests: drawn numbers in, events out (mostly valid,
some that must be refused), and every answer a state gives, to compare two states."""

from __future__ import annotations

import dataclasses
import hashlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from factories import DAY, T0, grant, revoke
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
from ledger.state import LedgerState

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
