"""A dishonest node against the consent SDK: every lie is caught, every time, by its type.

Two real node processes share an origin and a log key (so the second is a fork of the
first); tests/dishonest.py puts a proxy in front that lies on request. Each test runs
ConsentClient.require end to end through the proxy, with a real trust store file and a
policy that needs two witnesses, whose keys the proxy holds (so only the trust store
stands between the client and a fork or a rollback).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dishonest import DishonestProxy, Lie
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
from client.trust_store import ForkDetected, LogInconsistent, RollbackDetected, TrustStore
from ledger.checkpoint import Checkpoint, parse_checkpoint
from ledger.commitment import token_hash
from ledger.cosignature import CosignatureSigner, cosigner_verifier_key
from ledger.errors import LedgerError
from ledger.merkle import verify_consistency
from ledger.note import split_note
from ledger.signed import SignedEvent, sign_batch, sign_event, token_revocation
from ledger.status import ConsentStatus

pytestmark = pytest.mark.asyncio(loop_scope="module")

ORIGIN = "test.example/dishonest"
CONTROLLER = "honest.example"
PURPOSE = "dpv:Marketing"
MAX_AGE_S = 600
HOUR_MS = 3_600_000

_W1_KEY = Ed25519PrivateKey.from_private_bytes(b"\x31" * 32)
_W2_KEY = Ed25519PrivateKey.from_private_bytes(b"\x32" * 32)
W1 = CosignatureSigner.from_private_key("witness.example/one", _W1_KEY)
W2 = CosignatureSigner.from_private_key("witness.example/two", _W2_KEY)

# What each lie must raise, exactly (a subclass would be the wrong diagnosis).
EXPECTED: dict[Lie, type[LogVerificationError]] = {
    Lie.STALE: CheckpointStale,
    Lie.FORKED: ForkDetected,
    Lie.ROLLED_BACK: RollbackDetected,
    Lie.TAMPERED_ROOT: CheckpointRejected,
    Lie.FORGED_COSIGNATURE: CheckpointRejected,
    Lie.UNKNOWN_COSIGNER: QuorumNotMet,
    # A proof that does not verify cannot show the new checkpoint extends the stored one.
    Lie.TRUNCATED_CONSISTENCY: ForkDetected,
    Lie.WRONG_CONSISTENCY: ForkDetected,
    Lie.TRUNCATED_INCLUSION: LogVerificationError,
    Lie.TRUNCATED_MAP_PROOF: LogVerificationError,
    Lie.TAMPERED_VALUE: LogVerificationError,
    Lie.TAMPERED_ENTRY: LogVerificationError,
    Lie.OTHER_KEY_PROOF: LogVerificationError,
    Lie.ABSENCE_PROOF: LogVerificationError,
}
# Lies about the checkpoint itself: the trust store must not move at all.
CHECKPOINT_LIES = {Lie.STALE, Lie.FORKED, Lie.ROLLED_BACK, Lie.TAMPERED_ROOT,
                   Lie.FORGED_COSIGNATURE, Lie.UNKNOWN_COSIGNER, Lie.TRUNCATED_CONSISTENCY,
                   Lie.WRONG_CONSISTENCY}

# The truth about the key asked for, and what an honest answer makes require() do.
HONEST: dict[str, type[ConsentDenied] | None] = {
    "given": None, "revoked": Revoked, "withdrawn": Withdrawn, "expired": Expired,
    "never": NotGranted,
}
CASES = [pytest.param(lie, event, id=f"{lie.value}-{event}")
         for lie in EXPECTED for event in HONEST
         # Absent, a proof of absence for another key is a true proof for this one.
         if not (lie is Lie.ABSENCE_PROOF and event == "never")]


class Clock:
    """The client's and the witnesses' time: real time plus an offset a test may set."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def __call__(self) -> float:
        return (now_ms() + self.offset_ms) / 1000


@dataclasses.dataclass
class World:
    honest: NodeProcess
    fork: NodeProcess
    session: aiohttp.ClientSession
    proxy: DishonestProxy
    policy: TrustPolicy
    clock: Clock
    key: Ed25519PrivateKey  # the controller's, on the honest node
    fork_key: Ed25519PrivateKey  # the same controller's, on the fork

    def client(self, store_dir: Path) -> ConsentClient:
        """A fresh client on the store's file, as after a restart; no decision cache."""
        return ConsentClient(self.proxy.url, policy=self.policy,
                             trust_store=TrustStore(store_dir), max_age_s=MAX_AGE_S,
                             session=self.session, clock=self.clock, max_cached=0)

    async def record(self, event: str) -> bytes:
        """A new subject whose consent is what `event` names; returns the subject."""
        subject, token, t = os.urandom(32), os.urandom(32), now_ms()
        if event == "never":
            return subject
        valid_ms = 60_000 if event == "expired" else 10 * HOUR_MS
        g = sign_event(grant(controller=CONTROLLER, subject=subject, purposes=(PURPOSE,),
                             consented_at=t, valid_until=t + valid_ms,
                             token_hash=token_hash(token)), self.key)
        await self._post(g)
        if event in ("revoked", "withdrawn"):
            r = revoke(controller=CONTROLLER, grant=g.id, revoked_at=now_ms(),
                       by="controller" if event == "revoked" else "subject")
            await self._post(sign_event(r, self.key) if event == "revoked"
                             else token_revocation(r, token))
        if event == "expired":
            self.clock.offset_ms = HOUR_MS  # witnesses and client alike
        return subject

    async def grow(self) -> None:
        """One more event on the honest log, about nobody the tests ask for."""
        await self.record("given")

    async def grow_fork_past(self, size: int) -> None:
        while (fork_size := (await checkpoint_of(self.session, self.fork.url)).size) <= size:
            t = now_ms()
            grants = [grant(controller=CONTROLLER, subject=os.urandom(32),
                            purposes=(PURPOSE,), consented_at=t, valid_until=t + HOUR_MS)
                      for _ in range(min(1000, size - fork_size + 1))]
            status, body, _ = await post(self.session, self.fork.url,
                                         sign_batch(grants, self.fork_key))
            assert status == 200, body

    async def _post(self, event: SignedEvent) -> None:
        status, body, _ = await post(self.session, self.honest.url, event)
        assert status == 200, body


async def checkpoint_of(session: aiohttp.ClientSession, url: str) -> Checkpoint:
    async with session.get(f"{url}/checkpoint") as resp:
        assert resp.status == 200
        return parse_checkpoint(split_note(await resp.read())[0])


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    base = tmp_path_factory.mktemp("dishonest")
    honest = NodeProcess(base / "honest", "--origin", ORIGIN)
    honest.start()
    # The fork: the same origin and log key, another history from its genesis on.
    (base / "fork").mkdir()
    shutil.copy2(honest.data_dir / "log.key", base / "fork" / "log.key")
    fork = NodeProcess(base / "fork", "--origin", ORIGIN)
    try:
        fork.start()
        yield honest, fork
    finally:
        codes = [p.stop() for p in (honest, fork) if p.proc is not None]
        assert codes == [0] * len(codes), honest.stderr() + fork.stderr()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(nodes: tuple[NodeProcess, NodeProcess]) -> AsyncIterator[World]:
    honest, fork = nodes
    clock = Clock()
    async with aiohttp.ClientSession() as session, DishonestProxy(
            honest.url, fork.url, witnesses=(W1, W2), clock=clock,
            stale_by_s=MAX_AGE_S + 3600) as proxy:
        async with session.get(f"{honest.url}/v1/keys") as resp:
            log_vkey = (await resp.json())["log"]
        policy = parse_policy(
            f"log {log_vkey}\n"
            f"witness w1 {cosigner_verifier_key(W1.name, _W1_KEY.public_key())}\n"
            f"witness w2 {cosigner_verifier_key(W2.name, _W2_KEY.public_key())}\n"
            "group both all w1 w2\n"
            "quorum both\n")
        key = await register_controller(session, honest.url, honest.data_dir / "operator.key",
                                        controller=CONTROLLER)
        fork_key = await register_controller(session, fork.url,
                                             fork.data_dir / "operator.key",
                                             controller=CONTROLLER)
        w = World(honest, fork, session, proxy, policy, clock, key, fork_key)
        decoy = await w.record("given")
        proxy.decoy = (CONTROLLER, decoy, PURPOSE)
        yield w


@pytest.fixture(autouse=True)
def _honest_again(world: World) -> Iterator[None]:
    world.proxy.lie = Lie.NONE
    world.clock.offset_ms = 0
    yield
    world.proxy.lie = Lie.NONE
    world.clock.offset_ms = 0


async def require_honest(c: ConsentClient, subject: bytes, event: str) -> None:
    outcome = HONEST[event]
    if outcome is None:
        decision = await c.require(CONTROLLER, subject, PURPOSE)
        assert decision.status is ConsentStatus.GIVEN
        return
    with pytest.raises(outcome) as denied:
        await c.require(CONTROLLER, subject, PURPOSE)
    assert type(denied.value) is outcome


def stored(store_dir: Path) -> tuple[bytes, Checkpoint]:
    latest = TrustStore(store_dir).latest(ORIGIN)
    assert latest is not None
    return latest


@pytest.mark.parametrize(("lie", "event"), CASES)
async def test_each_lie_is_caught_every_time(world: World, tmp_path: Path, lie: Lie,
                                             event: str) -> None:
    subject = await world.record(event)
    store_dir = tmp_path / "trust"
    async with world.client(store_dir) as c:
        await require_honest(c, subject, event)
        await world.grow()
        await require_honest(c, subject, event)  # the store advances by a proof
    before_note, before = stored(store_dir)
    await world.grow()  # so that the next answer needs a consistency proof
    if lie is Lie.FORKED:
        await world.grow_fork_past((await checkpoint_of(world.session,
                                                        world.honest.url)).size)
    world.proxy.lie = lie
    expected = EXPECTED[lie]
    for _restart in range(2):
        async with world.client(store_dir) as c:
            for _again in range(2):
                with pytest.raises(expected) as caught:
                    await c.require(CONTROLLER, subject, PURPOSE)
                err = caught.value
                assert type(err) is expected, repr(err)
                assert err.checkpoint is not None  # the signed note, as evidence
                if isinstance(err, LogInconsistent):
                    assert err.stored_note == before_note
                    assert err.new_note != before_note
                if isinstance(err, CheckpointStale):
                    assert err.quorum_time is not None
                    assert err.now - err.quorum_time > MAX_AGE_S
    after_note, after = stored(store_dir)
    if lie in CHECKPOINT_LIES:
        assert after_note == before_note
    else:  # the checkpoint was the honest one, and proven: only the status lied
        assert after == await checkpoint_of(world.session, world.honest.url)
        assert after.size > before.size
    world.proxy.lie = Lie.NONE
    async with world.client(store_dir) as c:
        await require_honest(c, subject, event)


async def test_a_fork_is_refused_with_evidence_and_the_store_keeps_history_a(
        world: World, tmp_path: Path) -> None:
    subject = await world.record("given")
    store_dir = tmp_path / "trust"
    async with world.client(store_dir) as c:
        seen = await c.require(CONTROLLER, subject, PURPOSE)
    a_note, a = stored(store_dir)
    assert a_note == seen.checkpoint_note
    await world.grow_fork_past(a.size)

    world.proxy.lie = Lie.FORKED
    async with world.client(store_dir) as c:
        with pytest.raises(ForkDetected) as caught:
            await c.require(CONTROLLER, subject, PURPOSE)
    fork = caught.value
    # The evidence stands on its own: two notes the log key signed, same origin, and a
    # proof that does not join them.
    assert fork.stored_note == a_note and fork.other_checkpoint == a_note
    assert fork.checkpoint == fork.new_note
    b = world.policy.check_checkpoint(fork.new_note, now=int(world.clock()),
                                      max_age=None).checkpoint
    assert b.origin == a.origin == ORIGIN and b.size > a.size
    assert b == await checkpoint_of(world.session, world.fork.url)
    assert fork.proof and fork.size == b.size
    with pytest.raises(LedgerError):
        verify_consistency(a.size, b.size, list(fork.proof), a.root, b.root)
    assert stored(store_dir)[0] == a_note

    # Restarted, the client still refuses history B, and history A still verifies.
    async with world.client(store_dir) as c:
        with pytest.raises(ForkDetected):
            await c.require(CONTROLLER, subject, PURPOSE)
    assert stored(store_dir)[0] == a_note
    world.proxy.lie = Lie.NONE
    async with world.client(store_dir) as c:
        assert (await c.require(CONTROLLER, subject, PURPOSE)).status is ConsentStatus.GIVEN
    assert stored(store_dir)[1].size >= a.size


async def test_every_lie_is_tried_against_every_event() -> None:
    tried = {(p.values[0], p.values[1]) for p in CASES}
    assert {lie for lie, _ in tried} == set(Lie) - {Lie.NONE}
    assert len(tried) == len(EXPECTED) * len(HONEST) - 1
