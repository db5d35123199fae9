"""The consent SDK against a real node: require, its typed refusals, cache, trust store."""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from factories import grant, revoke
from nodeclient import now_ms, post, register_controller
from nodeproc import NodeProcess

from client.consent import (
    ConsentClient,
    ConsentDenied,
    Expired,
    NotGranted,
    Revoked,
    Withdrawn,
)
from client.errors import LogVerificationError
from client.policy import (
    CheckpointRejected,
    CheckpointStale,
    QuorumNotMet,
    TrustPolicy,
    parse_policy,
)
from client.trust_store import LogInconsistent, RollbackDetected, TrustStore
from ledger.checkpoint import Checkpoint
from ledger.commitment import token_hash
from ledger.cosignature import CosignatureSigner, cosigner_verifier_key
from ledger.note import ALG_ED25519, Signature, format_signature_line, format_verifier_key
from ledger.signed import SignedEvent, public_bytes, sign_event, token_revocation
from ledger.status import ConsentStatus

ORIGIN = "test.example/consent-sdk"
PURPOSE = "dpv:Marketing"
HOUR_MS = 3_600_000


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = NodeProcess(tmp_path_factory.mktemp("sdk") / "data", "--origin", ORIGIN)
    proc.start()
    yield proc
    assert proc.stop() == 0, proc.stderr()


class Requests:
    """Counts what the client asks the node, through aiohttp's tracing hooks."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def on_start(self, session: aiohttp.ClientSession, ctx: SimpleNamespace,
                       params: aiohttp.TraceRequestStartParams) -> None:
        self.paths.append(params.url.path)

    def count(self, path: str) -> int:
        return self.paths.count(path)


class Clock:
    def __init__(self) -> None:
        self.ms = now_ms()

    def __call__(self) -> float:
        return self.ms / 1000


class CountingStore(TrustStore):
    reads = 0

    def latest(self, origin: str) -> tuple[bytes, Checkpoint] | None:
        self.reads += 1
        return super().latest(origin)


@pytest.fixture
def requests() -> Requests:
    return Requests()


@pytest.fixture
async def session(requests: Requests) -> AsyncIterator[aiohttp.ClientSession]:
    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(requests.on_start)
    async with aiohttp.ClientSession(trace_configs=[trace]) as s:
        yield s


async def log_key(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(f"{url}/v1/keys") as resp:
        return str((await resp.json())["log"])


async def policy_of(session: aiohttp.ClientSession, url: str) -> TrustPolicy:
    return parse_policy(f"log {await log_key(session, url)}\nquorum none\n")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path) -> CountingStore:
    return CountingStore(tmp_path / "trust")


@pytest.fixture
async def client(node: NodeProcess, session: aiohttp.ClientSession, store: TrustStore,
                 clock: Clock) -> AsyncIterator[ConsentClient]:
    async with ConsentClient(node.url, policy=await policy_of(session, node.url),
                             trust_store=store, max_age_s=2 * 3600, session=session,
                             clock=clock) as c:
        yield c


async def granted(session: aiohttp.ClientSession, node: NodeProcess, controller: str,
                  *, valid_ms: int = HOUR_MS) -> tuple[Ed25519PrivateKey, SignedEvent, bytes,
                                                       bytes]:
    """Register `controller` and record a grant; returns key, grant, subject, token."""
    key = await register_controller(session, node.url, node.data_dir / "operator.key",
                                    controller=controller)
    subject, token, t = os.urandom(32), os.urandom(32), now_ms()
    g = sign_event(grant(controller=controller, subject=subject, purposes=(PURPOSE,),
                         consented_at=t, valid_until=t + valid_ms,
                         token_hash=token_hash(token)), key)
    status, body, _ = await post(session, node.url, g)
    assert status == 200, body
    return key, g, subject, token


@pytest.mark.parametrize("by", ["subject", "controller"])
async def test_a_grant_verifies_until_it_is_withdrawn(
        node: NodeProcess, session: aiohttp.ClientSession, client: ConsentClient,
        requests: Requests, by: str) -> None:
    controller = f"{by}.example"
    key, g, subject, token = await granted(session, node, controller)
    decision = await client.require(controller, subject, PURPOSE)
    assert decision.status is ConsentStatus.GIVEN
    assert decision.value is not None and decision.value.grant == g.id
    assert decision.checkpoint.origin == ORIGIN

    r = revoke(controller=controller, by=by, grant=g.id, revoked_at=now_ms())
    status, body, _ = await post(session, node.url, token_revocation(r, token)
                                 if by == "subject" else sign_event(r, key))
    assert status == 200, body
    # Still fresh: the cache answers as the policy allows, without asking.
    assert (await client.require(controller, subject, PURPOSE)).status is ConsentStatus.GIVEN
    client.forget(controller, subject, PURPOSE)
    proofs = requests.count("/v1/proofs/consistency")
    with pytest.raises(Withdrawn if by == "subject" else Revoked) as denied:
        await client.require(controller, subject, PURPOSE)
    # The log grew since the first answer: the store demanded a consistency proof.
    assert requests.count("/v1/proofs/consistency") == proofs + 1
    evidence = denied.value.decision
    assert evidence.value is not None and evidence.value.grant == g.id
    assert evidence.checkpoint.size > decision.checkpoint.size
    assert isinstance(denied.value, ConsentDenied)


async def test_never_granted_is_refused(session: aiohttp.ClientSession,
                                        client: ConsentClient) -> None:
    with pytest.raises(NotGranted) as denied:
        await client.require("nobody.example", os.urandom(32), PURPOSE)
    assert denied.value.decision.value is None
    assert denied.value.decision.status is ConsentStatus.UNKNOWN


async def test_an_expired_grant_is_refused(
        node: NodeProcess, session: aiohttp.ClientSession, client: ConsentClient,
        clock: Clock, requests: Requests) -> None:
    _, g, subject, _ = await granted(session, node, "expiry.example")
    assert (await client.require("expiry.example", subject, PURPOSE)).status \
        is ConsentStatus.GIVEN
    asked = requests.count("/v1/status")
    clock.ms = now_ms() + HOUR_MS  # past valid_until, within the checkpoint's freshness
    with pytest.raises(Expired):
        await client.require("expiry.example", subject, PURPOSE)
    assert requests.count("/v1/status") == asked  # judged from the cached proof
    client.clear()
    with pytest.raises(Expired) as denied:
        await client.require("expiry.example", subject, PURPOSE)
    assert requests.count("/v1/status") == asked + 1
    assert denied.value.decision.value is not None
    assert denied.value.decision.value.grant == g.id


async def test_the_cache_saves_requests_no_longer_than_max_age(
        node: NodeProcess, session: aiohttp.ClientSession, client: ConsentClient,
        clock: Clock, requests: Requests, store: CountingStore) -> None:
    _, _, subject, _ = await granted(session, node, "cache.example", valid_ms=10 * HOUR_MS)
    first = await client.require("cache.example", subject, PURPOSE)
    assert requests.count("/v1/status") == 1
    assert await client.require("cache.example", subject, PURPOSE) is first
    assert requests.count("/v1/status") == 1
    # A miss whose checkpoint has not grown does not read the trust store again.
    reads = store.reads
    client.clear()
    again = await client.require("cache.example", subject, PURPOSE)
    assert requests.count("/v1/status") == 2
    assert again.checkpoint == first.checkpoint and store.reads == reads
    # Past max_age (quorum none: counted from the fetch), the node is asked again.
    clock.ms += 2 * HOUR_MS
    await client.require("cache.example", subject, PURPOSE)
    assert requests.count("/v1/status") == 3


async def test_a_rolled_back_log_is_caught(node: NodeProcess, session: aiohttp.ClientSession,
                                           client: ConsentClient, store: TrustStore,
                                           tmp_path: Path) -> None:
    _, _, subject, _ = await granted(session, node, "rollback.example")
    seen = await client.require("rollback.example", subject, PURPOSE)
    # The same log key and origin, serving a fresh, smaller history.
    data = tmp_path / "rolled-back"
    data.mkdir()
    shutil.copy2(node.data_dir / "log.key", data / "log.key")
    liar = NodeProcess(data, "--origin", ORIGIN)
    liar.start()
    try:
        async with ConsentClient(liar.url, policy=client.policy, trust_store=store,
                                 max_age_s=60, session=session) as fooled:
            with pytest.raises(RollbackDetected) as caught:
                await fooled.require("rollback.example", subject, PURPOSE)
    finally:
        assert liar.stop() == 0, liar.stderr()
    assert isinstance(caught.value, LogInconsistent)
    assert caught.value.stored_note == seen.checkpoint_note


async def test_a_checkpoint_the_policy_does_not_trust_is_refused(
        node: NodeProcess, session: aiohttp.ClientSession, store: TrustStore) -> None:
    stranger = format_verifier_key(ORIGIN, ALG_ED25519,
                                   public_bytes(Ed25519PrivateKey.generate()))
    policy = parse_policy(f"log {stranger}\nquorum none\n")
    async with ConsentClient(node.url, policy=policy, trust_store=store, max_age_s=60,
                             session=session) as c:
        with pytest.raises(CheckpointRejected):
            await c.require("nobody.example", bytes(32), PURPOSE)
    assert store.latest(ORIGIN) is None


async def test_guards_run_the_body_only_with_consent(
        node: NodeProcess, session: aiohttp.ClientSession, client: ConsentClient) -> None:
    _, _, subject, _ = await granted(session, node, "guard.example")
    ran: list[bytes] = []

    @client.guard(purpose=PURPOSE, controller="guard.example")
    async def send_newsletter(address: str, *, subject: bytes) -> str:
        ran.append(subject)
        return address

    assert await send_newsletter("a@example.org", subject=subject) == "a@example.org"
    with pytest.raises(NotGranted):
        await send_newsletter("b@example.org", subject=os.urandom(32))
    with pytest.raises(TypeError):
        await send_newsletter("c@example.org")  # type: ignore[call-arg]
    assert ran == [subject]

    async with client.consent("guard.example", subject, PURPOSE) as decision:
        assert decision.status is ConsentStatus.GIVEN
        ran.append(b"context")
    with pytest.raises(NotGranted):
        async with client.consent("guard.example", os.urandom(32), PURPOSE):
            ran.append(b"never")
    assert ran == [subject, b"context"]


def test_the_decision_cache_is_bounded_and_turns_grants_expired() -> None:
    from client.decisions import DecisionCache
    from client.status import StatusDecision
    from ledger.status import PurposeStatus

    value = PurposeStatus(index=3, grant=bytes(32), valid_until=1_000)
    decision = StatusDecision(ConsentStatus.GIVEN, value, Checkpoint(ORIGIN, 4, bytes(32)),
                              b"note", 3)
    cache = DecisionCache(2)
    keys = [("c.example", bytes([i]) * 32, PURPOSE) for i in range(3)]
    for key in keys[:2]:
        cache.put(key, decision, fresh_until_ms=2_000)
    assert cache.get(keys[0], 0) is decision  # now the most recently used
    cache.put(keys[2], decision, fresh_until_ms=2_000)
    assert len(cache) == 2 and cache.get(keys[1], 0) is None
    expired = cache.get(keys[0], 1_000)
    assert expired is not None and expired.status is ConsentStatus.EXPIRED
    assert cache.get(keys[0], 2_000) is None and len(cache) == 1


# ---- Through a proxy: a witness cosigning the node's checkpoints, or a lying node --------


_WITNESS_KEY = Ed25519PrivateKey.from_private_bytes(b"\7" * 32)
WITNESS = CosignatureSigner.from_private_key("witness.example/w1", _WITNESS_KEY)
WITNESS_VKEY = cosigner_verifier_key(WITNESS.name, _WITNESS_KEY.public_key())


class Proxy:
    """Forwards GETs to the node; cosigns /v1/status checkpoints or tampers, as told."""

    def __init__(self, upstream: str, session: aiohttp.ClientSession) -> None:
        self.upstream, self.session = upstream, session
        self.cosigned_at: int | None = None  # the witness's time; None: no cosignature
        self.tamper: Callable[[dict[str, Any]], None] | None = None

    async def handle(self, request: web.Request) -> web.Response:
        async with self.session.get(self.upstream + request.path_qs) as resp:
            body, status = await resp.read(), resp.status
        if status != 200 or request.path != "/v1/status":
            return web.Response(body=body, status=status, content_type="application/json")
        answer = json.loads(body)
        if self.cosigned_at is not None:
            note = answer["checkpoint"]
            text = note[:note.index("\n\n") + 1].encode()
            sig = WITNESS.sign(text, self.cosigned_at)
            answer["checkpoint"] = note + format_signature_line(
                Signature(WITNESS.name, WITNESS.key_id, sig))
        if self.tamper is not None:
            self.tamper(answer)
        return web.json_response(answer)


@pytest.fixture
async def proxy(node: NodeProcess) -> AsyncIterator[tuple[Proxy, str]]:
    async with aiohttp.ClientSession() as upstream:
        p = Proxy(node.url, upstream)
        app = web.Application()
        app.router.add_get("/{path:.*}", p.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        try:
            yield p, f"http://{host}:{port}"
        finally:
            await runner.cleanup()


async def test_a_cosigned_decision_lasts_max_age_after_the_quorum(
        node: NodeProcess, session: aiohttp.ClientSession, proxy: tuple[Proxy, str],
        store: TrustStore, clock: Clock, requests: Requests) -> None:
    _, _, subject, _ = await granted(session, node, "witnessed.example", valid_ms=10 * HOUR_MS)
    p, url = proxy
    policy = parse_policy(f"log {await log_key(session, node.url)}\n"
                          f"witness w1 {WITNESS_VKEY}\n"
                          "quorum w1\n")
    async with ConsentClient(url, policy=policy, trust_store=store, max_age_s=60,
                             session=session, clock=clock) as c:
        p.cosigned_at = clock.ms // 1000
        assert (await c.require("witnessed.example", subject, PURPOSE)).status \
            is ConsentStatus.GIVEN
        clock.ms += 59_000
        await c.require("witnessed.example", subject, PURPOSE)
        assert requests.count("/v1/status") == 1
        clock.ms += 2_000  # the quorum's cosignature is now 61 s old
        with pytest.raises(CheckpointStale):
            await c.require("witnessed.example", subject, PURPOSE)
        assert requests.count("/v1/status") == 2
        p.cosigned_at = clock.ms // 1000
        await c.require("witnessed.example", subject, PURPOSE)
        c.clear()
        p.cosigned_at = None
        with pytest.raises(QuorumNotMet):
            await c.require("witnessed.example", subject, PURPOSE)


def _flip(field: str) -> Callable[[dict[str, Any]], None]:
    def tamper(answer: dict[str, Any]) -> None:
        raw = bytearray(base64.b64decode(answer[field]))
        raw[-1] ^= 1
        answer[field] = base64.b64encode(bytes(raw)).decode()
    return tamper


def _absent(answer: dict[str, Any]) -> None:
    answer["value"] = None


def _short_inclusion(answer: dict[str, Any]) -> None:
    answer["inclusion_proof"] = answer["inclusion_proof"][1:]


@pytest.mark.parametrize("tamper", [_flip("value"), _flip("map_proof"), _flip("root_entry"),
                                    _absent, _short_inclusion],
                         ids=["value", "map_proof", "root_entry", "absent", "inclusion"])
async def test_a_tampered_status_is_caught(
        node: NodeProcess, session: aiohttp.ClientSession, proxy: tuple[Proxy, str],
        store: TrustStore, tamper: Callable[[dict[str, Any]], None]) -> None:
    _, _, subject, _ = await granted(session, node, "tampered.example")
    p, url = proxy
    p.tamper = tamper
    async with ConsentClient(url, policy=await policy_of(session, node.url),
                             trust_store=store, max_age_s=60, session=session) as c:
        with pytest.raises(LogVerificationError):
            await c.require("tampered.example", subject, PURPOSE)
