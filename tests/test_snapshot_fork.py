"""A snapshot encoded by a forked child: the state as it was at the fork, or a clear error."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from factories import grant
from nodeclient import now_ms

from ledger.events import ControllerRegister, Genesis, StatusRoot
from ledger.signed import log_authored, public_bytes, sign_batch, sign_event
from ledger.state import LedgerState
from ledger.state_snapshot import snapshot_bytes
from node.snapshot_fork import FORKS, ForkedSnapshot

pytestmark = pytest.mark.skipif(not FORKS, reason="snapshots are forked on Linux only")

OPERATOR, CONTROLLER = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()


def ledger(grants: int) -> LedgerState:
    t = now_ms()
    state = LedgerState()
    state.admit(sign_event(Genesis(origin="test.example/fork", operator_key=public_bytes(
        OPERATOR), created_at=t, max_skew_ms=60_000), OPERATOR), t, signature_verified=False)
    state.admit(sign_event(ControllerRegister(
        controller="shop.example", name="Shop", contact="dpo@shop.example",
        key=public_bytes(CONTROLLER), registered_at=t), OPERATOR), t, signature_verified=False)
    add_grants(state, grants, first=0)
    return state


def add_grants(state: LedgerState, n: int, first: int) -> None:
    t = now_ms()
    for signed in sign_batch([grant(subject=(first + i).to_bytes(32, "big"), consented_at=t,
                                    valid_until=t + 10**9) for i in range(n)], CONTROLLER):
        state.admit(signed, t, signature_verified=True)
    state.admit(log_authored(StatusRoot(size=state.size, map_root=state.map_root())), t,
                signature_verified=True)


async def test_the_child_encodes_the_state_as_it_was_at_the_fork() -> None:
    state = ledger(300)
    expected = snapshot_bytes(state)
    forked = ForkedSnapshot(state)
    add_grants(state, 50, first=1000)  # the parent moves on at once
    assert await forked.data() == expected
    assert snapshot_bytes(state) != expected
    with pytest.raises(ChildProcessError):
        os.waitpid(forked.pid, os.WNOHANG)  # reaped: no zombie left behind


async def test_a_child_that_fails_is_reported() -> None:
    state = ledger(10)
    t = now_ms()
    state.admit(sign_batch([grant(subject=bytes(32), consented_at=t, valid_until=t + 10**9)],
                           CONTROLLER)[0], t, signature_verified=True)
    assert state.map_pending  # mid-batch: no snapshot may be taken of it
    with pytest.raises(RuntimeError, match="exit status 1"):
        await ForkedSnapshot(state).data()


async def test_a_child_out_of_time_is_killed() -> None:
    with pytest.raises(RuntimeError, match="ran over"):
        await ForkedSnapshot(ledger(2_000)).data(timeout=0)
