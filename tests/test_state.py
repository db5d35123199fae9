"""The consent state machine: every admission rule, status transitions, replay."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from factories import CONTROLLER, DAY, T0, grant, revoke

from ledger.commitment import token_hash
from ledger.entry import LogEntry
from ledger.errors import RejectedError, SignatureError
from ledger.events import ControllerRegister, ControllerRetire, ControllerRotate, Genesis
from ledger.signed import (
    SignedEvent,
    key_id,
    public_bytes,
    sign_batch,
    sign_event,
    token_revocation,
    verify_signature,
)
from ledger.state import ConsentStatus, LedgerState

SKEW = 60_000


@dataclasses.dataclass
class Log:
    state: LedgerState
    operator: Ed25519PrivateKey
    controller: Ed25519PrivateKey
    entries: list[LogEntry]

    def add(self, signed: SignedEvent, at: int = T0) -> LogEntry:
        entry = self.state.admit(signed, at, signature_verified=False)
        self.entries.append(entry)
        return entry

    def reject(self, signed: SignedEvent, code: str, at: int = T0) -> None:
        size = self.state.size
        with pytest.raises(RejectedError) as err:
            self.add(signed, at)
        assert err.value.code == code, err.value
        assert self.state.size == size


def register(key: Ed25519PrivateKey, controller: str = CONTROLLER) -> ControllerRegister:
    return ControllerRegister(controller=controller, name="Shop", contact="dpo@shop.example",
                              key=public_bytes(key), registered_at=T0)


@pytest.fixture
def log() -> Log:
    operator, controller = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    log = Log(LedgerState(), operator, controller, [])
    log.add(sign_event(Genesis(origin="log.example/test", operator_key=public_bytes(operator),
                               created_at=T0, max_skew_ms=SKEW), operator))
    log.add(sign_event(register(controller), operator))
    return log


def test_genesis_must_come_first() -> None:
    operator = Ed25519PrivateKey.generate()
    state = LedgerState()
    with pytest.raises(RejectedError) as err:
        state.admit(sign_event(grant(), operator), T0, signature_verified=False)
    assert err.value.code == "no-genesis"


def test_genesis_must_be_signed_by_its_operator_key() -> None:
    operator, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    genesis = Genesis(origin="x.example/l", operator_key=public_bytes(operator), created_at=T0,
                      max_skew_ms=0)
    with pytest.raises(RejectedError) as err:
        LedgerState().admit(sign_event(genesis, other), T0, signature_verified=False)
    assert err.value.code == "not-operator"


def test_second_genesis_is_refused(log: Log) -> None:
    genesis = Genesis(origin="x.example/l", operator_key=public_bytes(log.operator),
                      created_at=T0, max_skew_ms=0)
    log.reject(sign_event(genesis, log.operator), "genesis-exists")


def test_grant_by_registered_key_is_admitted(log: Log) -> None:
    entry = log.add(sign_event(grant(), log.controller))
    assert entry.index == 2
    assert entry.prev == log.entries[1].leaf_hash
    assert log.state.index_of(entry.signed.id) == 2


def test_unregistered_key(log: Log) -> None:
    stranger = Ed25519PrivateKey.generate()
    log.reject(sign_event(grant(), stranger), "unknown-key")


def test_key_of_another_controller(log: Log) -> None:
    other = Ed25519PrivateKey.generate()
    log.add(sign_event(register(other, "other.example"), log.operator))
    log.reject(sign_event(grant(), other), "wrong-controller")


def test_only_the_operator_registers_keys(log: Log) -> None:
    log.reject(sign_event(register(Ed25519PrivateKey.generate()), log.controller),
               "not-operator")


def test_same_key_twice(log: Log) -> None:
    log.reject(sign_event(dataclasses.replace(register(log.controller), registered_at=T0 + 1),
                          log.operator), "duplicate-key")


def test_bad_signature_is_refused(log: Log) -> None:
    good = sign_event(grant(), log.controller)
    forged = dataclasses.replace(good, sig=bytes(64))
    with pytest.raises(SignatureError):
        log.add(forged)
    assert log.state.size == 2


def test_clock_skew(log: Log) -> None:
    log.reject(sign_event(grant(consented_at=T0 - SKEW - 1, valid_until=T0 + DAY),
                          log.controller), "clock-skew")
    log.add(sign_event(grant(consented_at=T0 - SKEW), log.controller))


def test_retired_key_signs_nothing_more(log: Log) -> None:
    before = log.add(sign_event(grant(), log.controller))
    log.add(sign_event(ControllerRetire(controller=CONTROLLER,
                                        key_id=key_id(public_bytes(log.controller)),
                                        retired_at=T0), log.operator))
    log.reject(sign_event(grant(consented_at=T0 + 1), log.controller), "key-retired")
    # What the key signed before its retirement stays valid on replay.
    replayed = LedgerState()
    for entry in log.entries:
        replayed.replay(entry)
    assert replayed.index_of(before.signed.id) == before.index


def test_rotation(log: Log) -> None:
    new = Ed25519PrivateKey.generate()
    log.add(sign_event(ControllerRotate(controller=CONTROLLER,
                                        old_key_id=key_id(public_bytes(log.controller)),
                                        key=public_bytes(new), rotated_at=T0), log.operator))
    log.reject(sign_event(grant(), log.controller), "key-retired")
    log.add(sign_event(grant(), new))


def test_revoke_by_controller(log: Log) -> None:
    g = log.add(sign_event(grant(), log.controller))
    log.add(sign_event(revoke(grant=g.signed.id, by="controller"), log.controller))
    status, latest = log.state.status(CONTROLLER, grant().subject, "dpv:Marketing", T0)
    assert status is ConsentStatus.REVOKED
    assert latest is not None and latest.index == 3


def test_revoke_unknown_grant(log: Log) -> None:
    log.reject(sign_event(revoke(grant=bytes(32)), log.controller), "unknown-grant")


def test_revoke_twice(log: Log) -> None:
    g = log.add(sign_event(grant(), log.controller))
    log.add(sign_event(revoke(grant=g.signed.id), log.controller))
    log.reject(sign_event(revoke(grant=g.signed.id, reason="again"), log.controller),
               "already-revoked")


def test_token_withdraws_once_and_only_its_grant(log: Log) -> None:
    token = b"t" * 32
    g1 = log.add(sign_event(grant(token_hash=token_hash(token)), log.controller))
    g2 = log.add(sign_event(grant(token_hash=token_hash(b"u" * 32), consented_at=T0 + 1),
                            log.controller))
    log.reject(token_revocation(revoke(grant=g2.signed.id), token), "bad-token")
    log.add(token_revocation(revoke(grant=g1.signed.id), token))
    log.reject(token_revocation(revoke(grant=g1.signed.id, revoked_at=T0 + 5), token),
               "already-revoked")
    status, _ = log.state.status(CONTROLLER, grant().subject, "dpv:Marketing", T0)
    # g2 is newer and still in force for the same subject and purposes.
    assert status is ConsentStatus.GIVEN


def test_token_revocation_must_be_by_the_subject() -> None:
    from ledger.errors import FieldValueError

    with pytest.raises(FieldValueError):
        token_revocation(revoke(by="controller"), b"t" * 32)


def test_revoke_by_subject_and_purposes(log: Log) -> None:
    log.reject(sign_event(revoke(grant=None, subject=grant().subject,
                                 purposes=("dpv:Marketing",)), log.controller),
               "nothing-to-revoke")
    log.add(sign_event(grant(), log.controller))
    log.add(sign_event(revoke(grant=None, subject=grant().subject,
                              purposes=("dpv:Marketing",)), log.controller))
    assert log.state.status(CONTROLLER, grant().subject, "dpv:Marketing", T0)[0] \
        is ConsentStatus.WITHDRAWN
    assert log.state.status(CONTROLLER, grant().subject, "shop.example:newsletter", T0)[0] \
        is ConsentStatus.GIVEN


def test_expiry_and_unknown(log: Log) -> None:
    log.add(sign_event(grant(valid_until=T0 + DAY), log.controller))
    subject = grant().subject
    assert log.state.status(CONTROLLER, subject, "dpv:Marketing", T0 + DAY - 1)[0] \
        is ConsentStatus.GIVEN
    assert log.state.status(CONTROLLER, subject, "dpv:Marketing", T0 + DAY)[0] \
        is ConsentStatus.EXPIRED
    assert log.state.status(CONTROLLER, subject, "dpv:Research", T0)[0] \
        is ConsentStatus.UNKNOWN


def test_replay_detects_a_broken_chain(log: Log) -> None:
    log.add(sign_event(grant(), log.controller))
    replayed = LedgerState()
    replayed.replay(log.entries[0])
    replayed.replay(log.entries[1])
    tampered = dataclasses.replace(log.entries[2], prev=bytes(32))
    with pytest.raises(RejectedError) as err:
        replayed.replay(tampered)
    assert err.value.code == "broken-chain"


def test_replay_detects_a_wrong_index(log: Log) -> None:
    replayed = LedgerState()
    with pytest.raises(RejectedError) as err:
        replayed.replay(log.entries[1])
    assert err.value.code == "bad-index"


def test_entry_round_trip(log: Log) -> None:
    entry = log.add(sign_event(grant(), log.controller))
    assert LogEntry.decode(entry.encoded) == entry


def test_batch_signature_covers_each_event(log: Log) -> None:
    events = [grant(consented_at=T0 + i) for i in range(5)]
    batch = sign_batch(events, log.controller)
    assert len({s.sig for s in batch}) == 1
    for signed in batch:
        verify_signature(signed, public_bytes(log.controller))
        log.add(signed)
    # Swapping one event for another breaks its path to the signed root.
    forged = dataclasses.replace(batch[0], event=grant(consented_at=T0 + 99).encode())
    with pytest.raises(SignatureError):
        verify_signature(forged, public_bytes(log.controller))
    wrong_index = dataclasses.replace(batch[1], batch=dataclasses.replace(batch[1].batch, index=2))
    with pytest.raises(SignatureError):
        verify_signature(wrong_index, public_bytes(log.controller))


def test_signed_event_round_trip(log: Log) -> None:
    for signed in [sign_event(grant(), log.controller),
                   *sign_batch([grant(), grant(consented_at=T0 + 1)], log.controller),
                   token_revocation(revoke(), b"t" * 32)]:
        assert SignedEvent.decode(signed.encode()) == signed


def test_log_time_never_runs_backwards(log: Log) -> None:
    log.add(sign_event(grant(), log.controller), at=T0 + 10)
    log.reject(sign_event(grant(consented_at=T0 + 1), log.controller), "time-regressed", at=T0)
    replayed = LedgerState()
    for entry in log.entries[:2]:
        replayed.replay(entry)
    late = log.entries[2]
    replayed.replay(late)
    with pytest.raises(RejectedError) as err:
        replayed.replay(LogEntry(index=3, time=T0, prev=late.leaf_hash, signed=late.signed))
    assert err.value.code == "time-regressed"


def test_replay_refuses_an_event_logged_twice(log: Log) -> None:
    first = log.add(sign_event(grant(), log.controller))
    replayed = LedgerState()
    for entry in log.entries:
        replayed.replay(entry)
    again = LogEntry(index=3, time=T0, prev=first.leaf_hash, signed=first.signed)
    with pytest.raises(RejectedError) as err:
        replayed.replay(again)
    assert err.value.code == "duplicate-event"
