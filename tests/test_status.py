"""Proven current status: the map root closing every batch, GET /v1/status, client checks."""

from __future__ import annotations

import base64
import copy
import dataclasses
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from factories import CONTROLLER, grant, revoke
from nodeclient import now_ms, post, register_controller
from nodeproc import NodeProcess

from client.errors import LogVerificationError
from client.status import verify_status
from client.verify_log import verify_log
from ledger.checkpoint import Checkpoint, open_checkpoint
from ledger.commitment import token_hash
from ledger.entry import LogEntry
from ledger.errors import LedgerError, RejectedError
from ledger.events import StatusRoot
from ledger.note import new_verifier
from ledger.signed import log_authored, sign_event, token_revocation
from ledger.state import LedgerState
from ledger.status import ConsentStatus


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = NodeProcess(tmp_path_factory.mktemp("status") / "data", "--origin",
                       "test.example/status")
    proc.start()
    yield proc
    assert proc.stop() == 0, proc.stderr()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def log_key(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(f"{url}/v1/keys") as resp:
        return str((await resp.json())["log"])


async def status_of(session: aiohttp.ClientSession, url: str, subject: bytes,
                    purpose: str) -> dict[str, Any]:
    async with session.get(f"{url}/v1/status", params={
            "controller": CONTROLLER, "subject": subject.hex(), "purpose": purpose}) as resp:
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())


def opener(vkey: str):  # type: ignore[no-untyped-def]
    verifier = new_verifier(vkey)

    def open_note(note: bytes) -> Checkpoint:
        return open_checkpoint(note, verifier)[0]

    return open_note


async def test_status_through_a_grants_life(node: NodeProcess,
                                            session: aiohttp.ClientSession) -> None:
    key = await register_controller(session, node.url, node.data_dir / "operator.key")
    vkey = await log_key(session, node.url)
    t = now_ms()
    subject, token = b"p" * 32, b"w" * 32
    g = sign_event(grant(subject=subject, consented_at=t, valid_until=t + 3_600_000,
                         token_hash=token_hash(token)), key)
    status, _, _ = await post(session, node.url, g)
    assert status == 200

    def check(answer: dict[str, Any], purpose: str, at: int = t):  # type: ignore[no-untyped-def]
        return verify_status(answer, controller=CONTROLLER, subject=subject, purpose=purpose,
                             open_checkpoint=opener(vkey), now_ms=at)

    given = check(await status_of(session, node.url, subject, "dpv:Marketing"), "dpv:Marketing")
    assert given.status is ConsentStatus.GIVEN
    assert given.value is not None and given.value.grant == g.id
    expired = check(await status_of(session, node.url, subject, "dpv:Marketing"),
                    "dpv:Marketing", at=t + 3_600_000)
    assert expired.status is ConsentStatus.EXPIRED
    never = check(await status_of(session, node.url, subject, "dpv:Research"), "dpv:Research")
    assert never.status is ConsentStatus.UNKNOWN and never.value is None

    status, _, _ = await post(session, node.url, token_revocation(
        revoke(grant=g.id, revoked_at=now_ms()), token))
    assert status == 200
    withdrawn = check(await status_of(session, node.url, subject, "dpv:Marketing"),
                      "dpv:Marketing")
    assert withdrawn.status is ConsentStatus.WITHDRAWN
    assert withdrawn.checkpoint.size > given.checkpoint.size

    # The whole log, status roots included, still verifies from genesis.
    verified = await verify_log(session, node.url, vkey)
    assert isinstance(LogEntry.decode(await last_entry(session, node.url, verified.checkpoint))
                      .signed.body, StatusRoot)


async def last_entry(session: aiohttp.ClientSession, url: str, cp: Checkpoint) -> bytes:
    async with session.get(f"{url}/v1/entries/{cp.size - 1}") as resp:
        return base64.b64decode((await resp.json())["entry"])


def _tamper(answer: dict[str, Any], how: str) -> dict[str, Any]:
    bad = copy.deepcopy(answer)
    if how == "value":
        raw = bytearray(base64.b64decode(bad["value"]))
        raw[-1] ^= 1
        bad["value"] = base64.b64encode(bytes(raw)).decode()
    elif how == "absent":
        bad["value"] = None
    elif how == "map_proof":
        raw = bytearray(base64.b64decode(bad["map_proof"]))
        raw[-5] ^= 1
        bad["map_proof"] = base64.b64encode(bytes(raw)).decode()
    elif how == "root_index":
        bad["root_index"] -= 1
    elif how == "inclusion":
        bad["inclusion_proof"] = bad["inclusion_proof"][1:]
    elif how == "root_entry":
        raw = bytearray(base64.b64decode(bad["root_entry"]))
        raw[-3] ^= 1
        bad["root_entry"] = base64.b64encode(bytes(raw)).decode()
    return bad


@pytest.mark.parametrize("how", ["value", "absent", "map_proof", "root_index", "inclusion",
                                 "root_entry"])
async def test_a_tampered_answer_is_caught(node: NodeProcess, session: aiohttp.ClientSession,
                                           how: str) -> None:
    key = await register_controller(session, node.url, node.data_dir / "operator.key",
                                    controller="shop.example")
    vkey = await log_key(session, node.url)
    t = now_ms()
    subject = bytes([len(how)]) * 31 + b"t"
    status, _, _ = await post(session, node.url, sign_event(
        grant(subject=subject, consented_at=t, valid_until=t + 10**8), key))
    assert status == 200
    answer = await status_of(session, node.url, subject, "dpv:Marketing")
    verify_status(answer, controller=CONTROLLER, subject=subject, purpose="dpv:Marketing",
                  open_checkpoint=opener(vkey), now_ms=t)
    with pytest.raises((LogVerificationError, LedgerError)):
        verify_status(_tamper(answer, how), controller=CONTROLLER, subject=subject,
                      purpose="dpv:Marketing", open_checkpoint=opener(vkey), now_ms=t)


async def test_an_answer_for_another_key_is_caught(node: NodeProcess,
                                                   session: aiohttp.ClientSession) -> None:
    # A granted key's answer, passed off as another's. (Two absent keys may share one
    # absence proof, rightly: the leaf where both would sit holds neither.)
    key = await register_controller(session, node.url, node.data_dir / "operator.key",
                                    controller="shop.example")
    vkey = await log_key(session, node.url)
    t = now_ms()
    status, _, _ = await post(session, node.url, sign_event(
        grant(subject=b"p" * 32, consented_at=t, valid_until=t + 10**8), key))
    assert status == 200
    answer = await status_of(session, node.url, b"p" * 32, "dpv:Marketing")
    assert answer["status"] == "ConsentGiven"
    with pytest.raises(LogVerificationError):
        verify_status(answer, controller=CONTROLLER, subject=b"q" * 32,
                      purpose="dpv:Marketing", open_checkpoint=opener(vkey), now_ms=t)


async def test_status_needs_its_parameters(node: NodeProcess,
                                           session: aiohttp.ClientSession) -> None:
    async with session.get(f"{node.url}/v1/status", params={"controller": CONTROLLER}) as resp:
        assert resp.status == 400
        assert resp.content_type == "application/problem+json"


def test_a_false_status_root_is_refused_on_replay() -> None:
    from factories import T0
    from test_state import register

    from ledger.events import Genesis
    from ledger.signed import public_bytes

    operator, controller = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    state = LedgerState()
    state.admit(sign_event(Genesis(origin="log.example/t", operator_key=public_bytes(operator),
                                   created_at=T0, max_skew_ms=60_000), operator), T0,
                signature_verified=False)
    state.admit(sign_event(register(controller), operator), T0, signature_verified=False)
    state.admit(sign_event(grant(), controller), T0, signature_verified=False)
    true_root = StatusRoot(size=state.size, map_root=state.map_root())
    for false in (dataclasses.replace(true_root, map_root=bytes(32)),
                  dataclasses.replace(true_root, size=state.size - 1)):
        with pytest.raises(RejectedError) as err:
            state.admit(log_authored(false), T0, signature_verified=True)
        assert err.value.code == "bad-status-root"
    state.admit(log_authored(true_root), T0, signature_verified=True)


def test_a_signed_status_root_is_malformed() -> None:
    from ledger.errors import FieldValueError
    from ledger.signed import SignedEvent

    root = StatusRoot(size=1, map_root=bytes(32))
    with pytest.raises(FieldValueError):
        SignedEvent(event=root.encode(), signer=bytes(8), sig=bytes(64))
    with pytest.raises(FieldValueError):
        SignedEvent(event=grant().encode())  # only the log's own entries go unsigned


async def test_clients_cannot_write_status_roots(node: NodeProcess,
                                                 session: aiohttp.ClientSession) -> None:
    root = log_authored(StatusRoot(size=1, map_root=bytes(32)))
    status, problem, _ = await post(session, node.url, root)
    assert status == 403
    assert problem["type"].endswith("/log-authored")
