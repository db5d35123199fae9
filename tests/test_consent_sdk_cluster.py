"""The consent SDK against a real 3-member cluster, trusting it only through policy.txt.

Every decision must come with a checkpoint that a majority of members cosigned; writes
go to a follower (which forwards them); a revocation, an expiry, a leader's death, a
cosigning quorum that stops answering and a receipt read after the cluster is gone are
each seen as the SDK's typed outcome.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from cliutil import cli, ok
from clusterproc import LocalCluster
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from factories import grant, revoke
from nodeclient import load_key, now_ms
from test_consent_sdk import Requests

from client.consent import ConsentClient, Expired, Revoked, Withdrawn
from client.errors import NodeUnavailableError, ProblemError
from client.log_client import Accepted, LogClient
from client.policy import CheckpointStale, TrustPolicy, parse_policy
from client.receipts import load_held_grant
from client.status import StatusDecision
from client.trust_store import TrustStore
from ledger.commitment import token_hash
from ledger.events import ControllerRegister, Grant
from ledger.signed import SignedEvent, public_bytes, sign_event
from ledger.status import ConsentStatus

PURPOSE = "dpv:Marketing"
HOUR_MS = 3_600_000
MAJORITY = 2  # of 3 members


class Clock:
    """time.time, or a moment a test chose."""

    def __init__(self) -> None:
        self.ms: int | None = None

    def __call__(self) -> float:
        return (now_ms() if self.ms is None else self.ms) / 1000


def follower(cluster: LocalCluster) -> str:
    leader = cluster.wait_leader()
    return next(m for m in cluster.alive() if m != leader)


def log_vkey(policy: TrustPolicy) -> str:
    return policy.logs[0].vkey


def member_cosigners(policy: TrustPolicy, decision: StatusDecision) -> dict[str, int]:
    """The policy witnesses (the members) whose cosignature on the decision verifies."""
    trusted = policy.check_checkpoint(decision.checkpoint_note, now=now_ms() // 1000,
                                      max_age=None)
    return dict(trusted.cosigned)


def quorum_time(policy: TrustPolicy, decision: StatusDecision) -> int:
    """When a majority of members had last cosigned the decision's checkpoint."""
    trusted = policy.check_checkpoint(decision.checkpoint_note, now=now_ms() // 1000,
                                      max_age=None)
    assert trusted.quorum_time is not None
    return trusted.quorum_time


async def submit(log: LogClient, event: SignedEvent) -> Accepted:
    """Write through `log`'s member (a follower forwards it), then read back through it:
    the member serves the leader's checkpoint before it answers, so proofs are at hand."""
    [result] = await log.submit([event])
    assert isinstance(result, Accepted), result
    return result


async def register(log: LogClient, cluster: LocalCluster, controller: str
                   ) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    await submit(log, sign_event(ControllerRegister(
        controller=controller, name="Example Shop", contact="dpo@shop.example",
        key=public_bytes(key), registered_at=now_ms()), load_key(cluster.operator_key)))
    return key


async def granted(log: LogClient, key: Ed25519PrivateKey, controller: str, *,
                  valid_ms: int = HOUR_MS) -> tuple[SignedEvent, bytes]:
    subject, t = os.urandom(32), now_ms()
    g = sign_event(grant(controller=controller, subject=subject, purposes=(PURPOSE,),
                         consented_at=t, valid_until=t + valid_ms,
                         token_hash=token_hash(os.urandom(32))), key)
    await submit(log, g)
    return g, subject


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("sdk-cluster") / "cluster")
    c.start()
    c.wait_leader()
    yield c
    c.stop_all()


@pytest.fixture
def requests() -> Requests:
    return Requests()


@pytest.fixture
async def session(requests: Requests) -> AsyncIterator[aiohttp.ClientSession]:
    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(requests.on_start)
    async with aiohttp.ClientSession(trace_configs=[trace]) as s:
        yield s


@pytest.fixture
def clock() -> Clock:
    return Clock()


def sdk(cluster: LocalCluster, member: str, session: aiohttp.ClientSession,
        store: TrustStore, clock: Clock, max_age_s: int = 60) -> ConsentClient:
    return ConsentClient(cluster.url(member), policy=parse_policy(cluster.policy),
                         trust_store=store, max_age_s=max_age_s, session=session,
                         clock=clock)


def writer(cluster: LocalCluster, member: str, session: aiohttp.ClientSession) -> LogClient:
    return LogClient(cluster.url(member), log_key=log_vkey(parse_policy(cluster.policy)),
                     session=session)


# ---------------------------------------------------------------- a steady cluster


async def test_a_grant_written_to_a_follower_verifies_with_member_cosignatures_until_revoked(
        cluster: LocalCluster, session: aiohttp.ClientSession, tmp_path: Path,
        clock: Clock, requests: Requests) -> None:
    member = follower(cluster)
    log = writer(cluster, member, session)
    key = await register(log, cluster, "cluster-shop.example")
    g, subject = await granted(log, key, "cluster-shop.example")
    policy = parse_policy(cluster.policy)
    async with sdk(cluster, member, session, TrustStore(tmp_path / "trust"), clock) as c:
        decision = await c.require("cluster-shop.example", subject, PURPOSE)
        assert decision.status is ConsentStatus.GIVEN
        assert decision.value is not None and decision.value.grant == g.id
        assert len(member_cosigners(policy, decision)) >= MAJORITY

        await submit(log, sign_event(revoke(controller="cluster-shop.example", by="controller",
                                            grant=g.id, revoked_at=now_ms()), key))
        c.forget("cluster-shop.example", subject, PURPOSE)
        proofs = requests.count("/v1/proofs/consistency")
        with pytest.raises(Revoked) as denied:
            await c.require("cluster-shop.example", subject, PURPOSE)
    evidence = denied.value.decision
    assert evidence.value is not None and evidence.value.grant == g.id
    assert evidence.checkpoint.size > decision.checkpoint.size
    assert len(member_cosigners(policy, evidence)) >= MAJORITY
    assert requests.count("/v1/proofs/consistency") == proofs + 1


async def test_the_person_withdraws_with_the_receipt(
        cluster: LocalCluster, session: aiohttp.ClientSession, tmp_path: Path,
        clock: Clock) -> None:
    member = follower(cluster)  # the CLI, like the SDK, may talk to any member
    url, vkey = cluster.url(member), log_vkey(parse_policy(cluster.policy))
    key = tmp_path / "controller.key"
    ok(cli("keygen", "--out", str(key)))
    ok(cli("controller", "register", "--log", url, "--log-key", vkey, "--operator-key",
           str(cluster.operator_key), "--controller", "withdraw.example",
           "--name", "Example Shop", "--contact", "dpo@shop.example", "--key", str(key)))
    receipt = tmp_path / "alice.tlog-proof"
    notice = tmp_path / "notice.txt"
    notice.write_text("We send you our newsletter.\n")
    ok(cli("grant", "--log", url, "--log-key", vkey, "--key", str(key),
           "--controller", "withdraw.example", "--subject-ref", "alice", "--purpose", PURPOSE,
           "--data-category", "pd:EmailAddress", "--notice-file", str(notice),
           "--notice-version", "2026-01", "--jurisdiction", "DE", "--language", "de",
           "--receipt-out", str(receipt)))
    held = load_held_grant(receipt)
    async with sdk(cluster, member, session, TrustStore(tmp_path / "trust"), clock) as c:
        given = await c.require("withdraw.example", held.grant.subject, PURPOSE)
        ok(cli("revoke", "--log", url, "--log-key", vkey, "--receipt", str(receipt),
               "--receipt-out", str(tmp_path / "alice-revoked.tlog-proof")))
        c.forget("withdraw.example", held.grant.subject, PURPOSE)
        with pytest.raises(Withdrawn) as denied:
            await c.require("withdraw.example", held.grant.subject, PURPOSE)
    assert denied.value.decision.checkpoint.size > given.checkpoint.size
    assert len(member_cosigners(c.policy, denied.value.decision)) >= MAJORITY


async def test_an_expired_grant_is_refused(cluster: LocalCluster,
                                           session: aiohttp.ClientSession, tmp_path: Path,
                                           clock: Clock, requests: Requests) -> None:
    member = follower(cluster)
    log = writer(cluster, member, session)
    key = await register(log, cluster, "expiry.example")
    g, subject = await granted(log, key, "expiry.example", valid_ms=HOUR_MS)
    async with sdk(cluster, member, session, TrustStore(tmp_path / "trust"), clock,
                   max_age_s=2 * 3600) as c:
        given = await c.require("expiry.example", subject, PURPOSE)
        assert given.status is ConsentStatus.GIVEN
        asked = requests.count("/v1/status")
        assert isinstance(g.body, Grant)
        clock.ms = g.body.valid_until
        with pytest.raises(Expired):  # judged from the cached, still fresh proof
            await c.require("expiry.example", subject, PURPOSE)
        assert requests.count("/v1/status") == asked
        c.clear()
        with pytest.raises(Expired) as denied:  # and from a new answer
            await c.require("expiry.example", subject, PURPOSE)
    assert requests.count("/v1/status") == asked + 1
    assert denied.value.decision.value is not None
    assert denied.value.decision.value.grant == g.id


async def test_a_decision_goes_stale_while_the_followers_cannot_cosign(
        cluster: LocalCluster, session: aiohttp.ClientSession, tmp_path: Path,
        clock: Clock) -> None:
    leader = cluster.wait_leader()
    log = writer(cluster, leader, session)
    key = await register(log, cluster, "stale.example")
    _, subject = await granted(log, key, "stale.example", valid_ms=10 * HOUR_MS)
    max_age = 5
    followers = [m for m in cluster.alive() if m != leader]
    async with sdk(cluster, leader, session, TrustStore(tmp_path / "trust"), clock,
                   max_age_s=max_age) as c:
        before = await c.require("stale.example", subject, PURPOSE)
        assert before.status is ConsentStatus.GIVEN
        # Whatever the followers cosigned, they cosigned before this second ended.
        stopped_by = now_ms() // 1000 + 1
        for m in followers:
            os.kill(cluster.members[m].proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        try:
            c.clear()
            # The leader still answers, with the last checkpoint a majority cosigned.
            frozen = await c.require("stale.example", subject, PURPOSE)
            assert quorum_time(c.policy, frozen) <= stopped_by
            c.clear()
            clock.ms = (stopped_by + max_age + 1) * 1000
            with pytest.raises(CheckpointStale) as stale:
                await c.require("stale.example", subject, PURPOSE)
            assert stale.value.quorum_time is not None
            assert stale.value.quorum_time <= stopped_by  # nothing newer was cosigned
        finally:
            for m in followers:
                os.kill(cluster.members[m].proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
        # Once they answer again, the re-cosigning makes the decision fresh again.
        clock.ms = None
        deadline = time.monotonic() + 30
        while True:
            c.clear()
            try:
                fresh = await c.require("stale.example", subject, PURPOSE)
            except CheckpointStale:
                pass
            else:
                if quorum_time(c.policy, fresh) > stopped_by:
                    break
            assert time.monotonic() < deadline, "no fresh cosignatures after SIGCONT"
            await asyncio.sleep(0.05)  # polling a condition with a deadline
    cluster.wait_leader()


# ---------------------------------------------------------------- a cluster of its own


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path / "cluster")
    c.start()
    c.wait_leader()
    yield c
    c.stop_all()


async def test_decisions_verify_across_a_leader_failover_and_the_store_advances_by_proof(
        own_cluster: LocalCluster, session: aiohttp.ClientSession, tmp_path: Path,
        clock: Clock, requests: Requests) -> None:
    cluster = own_cluster
    leader = cluster.wait_leader()
    survivors = [m for m in cluster.alive() if m != leader]
    log = writer(cluster, survivors[0], session)
    key = await register(log, cluster, "failover.example")
    _, before = await granted(log, key, "failover.example")
    store = TrustStore(tmp_path / "trust")
    policy = parse_policy(cluster.policy)
    origin = policy.log_verifiers[0].name
    # Reads through the member written to: it serves what its writes proved.
    async with sdk(cluster, survivors[0], session, store, clock) as c:
        first = await c.require("failover.example", before, PURPOSE)
        stored = store.latest(origin)
        assert stored is not None and stored[1] == first.checkpoint

        cluster.kill(leader)  # SIGKILL
        # During the election a decision is unavailable, never wrong: no verification
        # error (a rollback or a fork) from the new leader, only "no leader yet".
        deadline = time.monotonic() + 30
        while True:
            c.clear()
            try:
                again = await c.require("failover.example", before, PURPOSE)
                break
            except ProblemError as exc:
                assert exc.code == "no-leader", exc
                last: Exception = exc
            except NodeUnavailableError as exc:
                last = exc
            assert time.monotonic() < deadline, \
                f"no verified decision after the failover: {last!r}, {cluster.info(survivors[0])}"
            await asyncio.sleep(0.05)  # polling a condition with a deadline
        assert again.checkpoint.size >= first.checkpoint.size
        new_leader = cluster.wait_leader(among=survivors)
        g, after = await granted(log, key, "failover.example")
        proofs = requests.count("/v1/proofs/consistency")
        decision = await c.require("failover.example", after, PURPOSE)
        c.forget("failover.example", before, PURPOSE)
        still = await c.require("failover.example", before, PURPOSE)
    assert decision.value is not None and decision.value.grant == g.id
    assert still.checkpoint == decision.checkpoint
    assert decision.checkpoint.size > first.checkpoint.size
    # Only the survivors can have cosigned it, and a majority did: both of them.
    assert set(member_cosigners(policy, decision)) == set(survivors), new_leader
    stored = store.latest(origin)
    assert stored is not None and stored[1] == decision.checkpoint
    assert requests.count("/v1/proofs/consistency") == proofs + 1


async def test_a_new_leader_keeps_the_checkpoint_fresh_without_new_writes(
        own_cluster: LocalCluster, session: aiohttp.ClientSession) -> None:
    # Freshness is the cosignatures' time: a leader elected into a quiet log must sign
    # and keep re-cosigning a checkpoint of its own, or every client's max_age runs out.
    cluster = own_cluster
    leader = cluster.wait_leader()
    policy = parse_policy(cluster.policy)
    # Every member has been shown the latest checkpoint: nothing is left to publish.
    size = cluster.wait_published(leader, 1)["checkpoint_size"]
    deadline = time.monotonic() + 15
    while not all((info := cluster.info(m)) and info["committed_size"]
                  == info["published_size"] == info["checkpoint_size"] == size
                  for m in cluster.members):
        assert time.monotonic() < deadline, [cluster.info(m) for m in cluster.members]
        await asyncio.sleep(0.05)  # polling a condition with a deadline
    cluster.kill(leader)
    killed_at = int(time.time())
    new_leader = cluster.wait_leader(among=[m for m in cluster.members if m != leader])
    deadline = time.monotonic() + 15
    while True:
        async with session.get(cluster.url(new_leader) + "/checkpoint") as resp:
            note = await resp.read()
        trusted = policy.check_checkpoint(note, now=int(time.time()), max_age=None)
        if trusted.quorum_time is not None and trusted.quorum_time > killed_at + 1:
            break
        assert time.monotonic() < deadline, \
            f"no majority cosigned after the failover: {trusted.quorum_time}, {killed_at}"
        await asyncio.sleep(0.05)  # polling a condition with a deadline


async def test_a_receipt_from_the_cluster_verifies_offline_under_its_policy(
        own_cluster: LocalCluster, tmp_path: Path) -> None:
    cluster = own_cluster
    member = follower(cluster)
    url, vkey = cluster.url(member), log_vkey(parse_policy(cluster.policy))
    key = tmp_path / "controller.key"
    ok(cli("keygen", "--out", str(key)))
    ok(cli("controller", "register", "--log", url, "--log-key", vkey, "--operator-key",
           str(cluster.operator_key), "--controller", "receipt.example",
           "--name", "Example Shop", "--contact", "dpo@shop.example", "--key", str(key)))
    receipt = tmp_path / "alice.tlog-proof"
    notice = tmp_path / "notice.txt"
    notice.write_text("We send you our newsletter.\n")
    granted_out = ok(cli(
        "grant", "--log", url, "--log-key", vkey, "--key", str(key),
        "--controller", "receipt.example",
        "--subject-ref", "alice", "--purpose", PURPOSE, "--data-category", "pd:EmailAddress",
        "--notice-file", str(notice), "--notice-version", "2026-01", "--jurisdiction", "DE",
        "--language", "de", "--receipt-out", str(receipt)))
    cluster.stop_all()
    assert cluster.alive() == []  # from here on, no member: offline

    policy_file = cluster.dir / "policy.txt"
    out = ok(cli("receipt", "verify", str(receipt), "--policy", str(policy_file)))
    assert out["receipt"].endswith("verified offline")
    assert out["event id"] == granted_out["event id"]
    held = load_held_grant(receipt)
    assert held.receipt is not None
    cosigned = parse_policy(cluster.policy).check_checkpoint(
        held.receipt.file.proof.checkpoint, now=now_ms() // 1000, max_age=None).cosigned
    assert len(cosigned) >= MAJORITY
