"""SIGKILL the leader under write load, again and again; cut a leader off in a minority."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from clusterproc import LocalCluster
from factories import grant
from nodeclient import now_ms, post, register_controller

from client.verify_log import verify_log
from ledger.checkpoint import open_checkpoint
from ledger.note import new_verifier
from ledger.signed import sign_batch

ROUNDS = 3
WRITERS = 6
BATCH = 20
ACKS_PER_ROUND = 300
FAILOVER_LIMIT_S = 10.0


@pytest.fixture(params=["false", "true"], ids=["decoding on the loop", "decoding process"])
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    # As `cluster init` sets members up on one host, and as on hosts of their own, where
    # followers decode a leader's batches in a process as they arrive: after a leader's
    # kill a new leader may send other batches at indexes the old one had sent.
    c = LocalCluster(tmp_path / "cluster",
                     env={"CONSENT_LEDGER_DECODE_PROCESS": request.param})
    c.start()
    c.wait_leader()
    yield c
    c.stop_all()


async def _write_round(cluster: LocalCluster, key: object, acked: dict[bytes, int],
                       round_no: int) -> float:
    """Write until ACKS_PER_ROUND are acknowledged, kill the leader, write until a new one
    acknowledges; returns the seconds from the kill to that first acknowledgement."""
    killed_at: list[float] = []
    recovered = asyncio.Event()
    counter = 0
    leader = cluster.wait_leader()
    rng = random.Random(round_no)
    deadline = time.monotonic() + 60

    async def writer(w: int) -> None:
        nonlocal counter
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
            seq = 0
            while not recovered.is_set():
                t = now_ms()
                batch = sign_batch([
                    grant(subject=bytes([round_no, w]) + seq.to_bytes(4, "big") + bytes([i]) * 26,
                          consented_at=t, valid_until=t + 10**9) for i in range(BATCH)],
                    key)  # type: ignore[arg-type]
                seq += 1
                while not recovered.is_set():  # the same batch until it is acknowledged
                    assert time.monotonic() < deadline, "the cluster stopped taking writes"
                    member = rng.choice(cluster.alive())
                    try:
                        status, body, _ = await post(s, cluster.url(member), batch)
                    except (TimeoutError, aiohttp.ClientError):
                        continue  # that member died or is electing: try another
                    if status != 200:
                        assert status == 503, body  # no leader yet, or leadership moved
                        await asyncio.sleep(0.01)  # a retry back-off, not synchronisation
                        continue
                    for signed, result in zip(batch, body["results"], strict=True):
                        assert acked.setdefault(signed.id, result["index"]) == result["index"]
                    counter += len(batch)
                    if killed_at and not recovered.is_set():
                        killed_at.append(time.monotonic())
                        recovered.set()
                    if counter >= ACKS_PER_ROUND and not killed_at:
                        killed_at.append(time.monotonic())
                        cluster.kill(leader)
                    break

    await asyncio.gather(*(writer(w) for w in range(WRITERS)))
    return killed_at[1] - killed_at[0]


def test_acknowledged_events_survive_leader_kills(cluster: LocalCluster) -> None:
    log_key = cluster.config.log_key

    async def register() -> object:
        async with aiohttp.ClientSession() as s:
            return await register_controller(s, cluster.url(cluster.wait_leader()),
                                             cluster.operator_key)

    key = asyncio.run(register())
    acked: dict[bytes, int] = {}
    failovers = []
    for round_no in range(ROUNDS):
        failovers.append(asyncio.run(_write_round(cluster, key, acked, round_no)))
        for proc in cluster.members.values():
            if proc.proc is not None and proc.proc.returncode == -signal.SIGKILL:
                proc.start()  # back, and catching up from the new leader's log
    assert max(failovers) < FAILOVER_LIMIT_S, failovers
    assert len(acked) >= ROUNDS * ACKS_PER_ROUND

    leader = cluster.wait_leader()
    size = max(acked.values()) + 1
    for member in cluster.members:
        cluster.wait_published(member, size)

    async def check() -> None:
        async with aiohttp.ClientSession() as s:
            roots = {}
            for member in cluster.members:
                verified = await verify_log(s, cluster.url(member), log_key)
                for event_id, index in acked.items():
                    assert verified.state.index_of(event_id) == index, member
                roots[member] = verified.tree.root(size)
            assert len(set(roots.values())) == 1, roots
            async with s.get(cluster.url(leader) + "/checkpoint") as resp:
                note = await resp.read()
            open_checkpoint(note, new_verifier(log_key))

    asyncio.run(check())


def test_a_leader_cut_off_in_a_minority_acknowledges_nothing(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    followers = [m for m in cluster.members if m != leader]

    async def register() -> object:
        async with aiohttp.ClientSession() as s:
            return await register_controller(s, cluster.url(leader), cluster.operator_key)

    key = asyncio.run(register())
    t = now_ms()
    batch = sign_batch([grant(subject=bytes([7, i]) * 16, consented_at=t, valid_until=t + 10**9)
                        for i in range(5)], key)  # type: ignore[arg-type]
    for member in followers:  # frozen: the leader can reach no majority
        assert cluster.members[member].proc is not None
        cluster.members[member].proc.send_signal(signal.SIGSTOP)
    try:
        async def try_write() -> int | None:
            timeout = aiohttp.ClientTimeout(total=3)
            async with aiohttp.ClientSession(timeout=timeout) as s:
                try:
                    status, _, _ = await post(s, cluster.url(leader), batch)
                except TimeoutError:
                    return None
                return int(status)

        status = asyncio.run(try_write())
        assert status != 200  # never acknowledged: no majority stored it
    finally:
        for member in followers:
            cluster.members[member].proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]

    async def write_again() -> dict:
        deadline = time.monotonic() + 20
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
            while True:
                member = cluster.wait_leader()
                try:
                    status, body, _ = await post(s, cluster.url(member), batch)
                except (TimeoutError, aiohttp.ClientError):
                    status, body = 0, None
                if status == 200 or time.monotonic() > deadline:
                    assert status == 200, body
                    return body

    body = asyncio.run(write_again())
    indexes = [r["index"] for r in body["results"]]
    assert indexes == sorted(set(indexes))  # once each, no duplicate entries


def test_a_deposed_leader_takes_back_what_its_log_did_not_keep(tmp_path: Path) -> None:
    """A leader admits and proposes a batch no other member receives; the others elect a
    new leader and commit other entries at those indexes. Back, the old leader truncates
    its log and takes the batch back out of its ledger in memory, not by replaying its
    log from disk (seconds on a long log), and it serves the new leader's log."""
    cluster = LocalCluster(tmp_path / "cluster")
    cluster.start()
    try:
        old = cluster.wait_leader()
        others = [m for m in cluster.members if m != old]

        async def scenario() -> None:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as s:
                key = await register_controller(s, cluster.url(old), cluster.operator_key)
                t = now_ms()

                def batch(tag: int) -> list:  # type: ignore[type-arg]
                    return sign_batch([grant(subject=bytes([tag, i]) * 16, consented_at=t,
                                             valid_until=t + 10**9) for i in range(5)], key)

                for m in others:  # gone: nobody receives what the leader proposes now
                    cluster.kill(m)
                with contextlib.suppress(TimeoutError):
                    status, _, _ = await post(s, cluster.url(old), batch(1))
                    assert status != 200
                cluster.members[old].proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
                try:
                    cluster.start(*others)
                    new = cluster.wait_leader(among=others)
                    deadline = time.monotonic() + 30
                    while True:  # the new leader commits other entries at those indexes
                        with contextlib.suppress(TimeoutError, aiohttp.ClientError):
                            status, body, _ = await post(s, cluster.url(new), batch(2))
                            if status == 200:
                                break
                        assert time.monotonic() < deadline, "the new leader took no write"
                finally:
                    cluster.members[old].proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
                size = max(r["index"] for r in body["results"]) + 2  # and its status root
                cluster.wait_published(old, size)

        asyncio.run(scenario())
        lines = cluster.members[old].stderr().splitlines()
        took_back = [line for line in lines if "took back the entries" in line]
        assert took_back, "\n".join(lines[-20:])
        assert '"taken_back": 6' in took_back[0]  # the 5 events and their status root
        assert not any("reloaded the ledger from disk" in line for line in lines)
        # Its ledger is the log: every entry checks out from genesis, as on the others.
        sizes = {m: cluster.verified_size(m) for m in cluster.members}
        assert len(set(sizes.values())) == 1, sizes
    finally:
        cluster.stop_all()
