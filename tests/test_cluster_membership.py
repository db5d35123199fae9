"""Voters added and removed one at a time, on the operator's signed word, while writes go on."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from cliutil import cli
from clusterproc import LocalCluster
from factories import grant
from nodeclient import now_ms, post, register_controller

from client.verify_log import verify_log
from ledger.signed import sign_batch


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path / "cluster", nodes=3, spares=1)
    c.start()
    c.wait_leader(among=["n1", "n2", "n3"])
    yield c
    c.stop_all()


def _voters(cluster: LocalCluster, member: str) -> list[str]:
    info = cluster.info(member)
    assert info is not None
    return list(info["voters"])


def _wait(predicate: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.02)  # polling a condition with a deadline


def test_add_then_remove_a_voter_while_writing(cluster: LocalCluster) -> None:
    assert _voters(cluster, "n1") == ["n1", "n2", "n3"]
    acked: dict[bytes, int] = {}
    changes_done = asyncio.Event()

    async def writer(key: object, w: int) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            seq = 0
            while not changes_done.is_set():
                t = now_ms()
                batch = sign_batch([grant(subject=bytes([w]) + seq.to_bytes(4, "big")
                                          + bytes([i]) * 27, consented_at=t,
                                          valid_until=t + 10**9) for i in range(10)],
                                   key)  # type: ignore[arg-type]
                seq += 1
                status, body, _ = await post(s, cluster.url("n2"), batch)
                if status == 200:
                    for signed, result in zip(batch, body["results"], strict=True):
                        acked[signed.id] = result["index"]
                else:
                    assert status == 503, body
                    await asyncio.sleep(0.01)  # a retry back-off

    async def run() -> None:
        async with aiohttp.ClientSession() as s:
            key = await register_controller(s, cluster.url("n2"), cluster.operator_key)
        writers = [asyncio.create_task(writer(key, w)) for w in range(3)]
        try:
            for action, member in (("add", "n4"), ("remove", "n1")):
                result = await asyncio.to_thread(
                    cli, "cluster", action, "--dir", str(cluster.dir), "--member", member,
                    "--via", cluster.url("n3"))
                assert result.returncode == 0, result.stderr
                assert "voters:" in result.stdout
        finally:
            changes_done.set()
            await asyncio.gather(*writers)

    asyncio.run(run())
    assert len(acked) >= 10
    _wait(lambda: _voters(cluster, "n4") == ["n2", "n3", "n4"], "n4 never saw itself added")
    leader = cluster.wait_leader(among=["n2", "n3", "n4"])
    size = max(acked.values()) + 1
    cluster.wait_published("n4", size)  # the new voter caught up from the leader's log

    # n1 is out: with n1 dead the three voters left still commit writes.
    cluster.kill("n1")

    async def write_more() -> int:
        async with aiohttp.ClientSession() as s:
            key = await register_controller(s, cluster.url(leader), cluster.operator_key,
                                            controller="after.example")
            t = now_ms()
            status, body, _ = await post(s, cluster.url(leader), sign_batch(
                [grant(controller="after.example", subject=bytes([9]) * 32,
                       purposes=("dpv:Marketing",), consented_at=t, valid_until=t + 10**9)],
                key))
            assert status == 200, body
            return int(body["results"][0]["index"])

    last = asyncio.run(write_more())
    cluster.wait_published("n4", last + 1)

    async def verify() -> None:
        async with aiohttp.ClientSession() as s:
            verified = await verify_log(s, cluster.url("n4"), cluster.config.log_key)
            for event_id, index in acked.items():
                assert verified.state.index_of(event_id) == index

    asyncio.run(verify())


def test_a_membership_change_needs_the_operator_key(cluster: LocalCluster,
                                                    tmp_path: Path) -> None:
    stranger = tmp_path / "stranger.key"
    assert cli("keygen", "--out", str(stranger)).returncode == 0
    result = cli("cluster", "add", "--dir", str(cluster.dir), "--member", "n4",
                 "--operator-key", str(stranger))
    assert result.returncode == 1
    assert "operator" in result.stderr and "Traceback" not in result.stderr
    assert _voters(cluster, "n1") == ["n1", "n2", "n3"]
    result = cli("cluster", "add", "--dir", str(cluster.dir), "--member", "n9")
    assert result.returncode == 1 and "not a member" in result.stderr


@pytest.mark.parametrize("asked", ["the leader", "a follower"])
def test_removing_the_leader_hands_leadership_over_first(cluster: LocalCluster,
                                                         asked: str) -> None:
    old = cluster.wait_leader(among=["n1", "n2", "n3"])
    rest = sorted({"n1", "n2", "n3"} - {old})
    via = old if asked == "the leader" else rest[1]
    acked: dict[bytes, int] = {}
    acked_at: list[float] = []
    removed = asyncio.Event()
    after_removal = 0

    async def writer(key: object) -> None:
        nonlocal after_removal
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            seq = 0
            # A light load through a member that stays: it forwards to whoever leads.
            while after_removal < 5:
                t = now_ms()
                batch = sign_batch([grant(subject=seq.to_bytes(4, "big") + bytes([i]) * 28,
                                          consented_at=t, valid_until=t + 10**9)
                                    for i in range(5)], key)  # type: ignore[arg-type]
                seq += 1
                status, body, _ = await post(s, cluster.url(rest[0]), batch)
                if status == 200:
                    for signed, result in zip(batch, body["results"], strict=True):
                        acked[signed.id] = result["index"]
                    acked_at.append(time.monotonic())
                    after_removal += removed.is_set()
                else:
                    assert status == 503, body
                    await asyncio.sleep(0.01)  # a retry back-off

    async def run() -> str:
        async with aiohttp.ClientSession() as s:
            key = await register_controller(s, cluster.url(rest[0]), cluster.operator_key)
        task = asyncio.create_task(writer(key))
        try:
            while len(acked_at) < 5:
                await asyncio.sleep(0.01)  # polling a condition (the writer's progress)
            # The leader hands over, then relays the request to the new leader, which
            # commits the removal; a follower asked first relays it to the leader.
            result = await asyncio.to_thread(
                cli, "cluster", "remove", "--dir", str(cluster.dir), "--member", old,
                "--via", cluster.url(via))
            assert result.returncode == 0, result.stderr
            return result.stdout
        finally:
            removed.set()
            await asyncio.wait_for(task, timeout=30)

    out = asyncio.run(run())
    assert out.split() == ["voters:", *rest, "(committed", "by", out.split()[-1]]
    assert out.split()[-1].rstrip(")") in rest  # by the next leader, not the removed one
    gaps = [b - a for a, b in itertools.pairwise(acked_at)]
    assert max(gaps) < 5.0, f"writes stalled for {max(gaps):.1f} s"

    new = cluster.wait_leader(among=rest)
    info = cluster.info(new)
    assert info is not None and info["voters"] == rest
    _wait(lambda: _voters(cluster, old) == rest, f"{old} never learnt it was removed")
    info = cluster.info(old)
    assert info is not None and info["role"] == "follower" and old not in info["voters"]

    size = max(acked.values()) + 1

    async def verify(member: str) -> None:
        async with aiohttp.ClientSession() as s:
            verified = await verify_log(s, cluster.url(member), cluster.config.log_key)
            for event_id, index in acked.items():
                assert verified.state.index_of(event_id) == index

    for member in rest:
        cluster.wait_published(member, size)
        asyncio.run(verify(member))
    # It follows the new leader, and takes no part in elections.
    assert info["leader"] == new and info["term"] == (cluster.info(new) or {}).get("term")


def test_the_leader_shows_how_far_each_voter_has_caught_up(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "cluster", nodes=3, spares=1)
    try:
        cluster.start("n1", "n2", "n3")
        leader = cluster.wait_leader()
        follower = next(m for m in ("n1", "n2", "n3") if m != leader)
        assert (cluster.info(follower) or {})["replication"] is None  # only the leader knows
        # n4 is added while it is down: three of four voters commit the change.
        result = cli("cluster", "add", "--dir", str(cluster.dir), "--member", "n4",
                     "--via", cluster.url(leader))
        assert result.returncode == 0, result.stderr

        def progress() -> tuple[int, dict[str, dict[str, int]]]:
            """The leader's last Raft index and its view of every other voter, at once."""
            info = cluster.info(leader) or {}
            assert info.get("role") == "leader", info
            return info["raft_last"], {r["member"]: r for r in info["replication"]}

        last, behind = progress()
        assert sorted(behind) == sorted({"n1", "n2", "n3", "n4"} - {leader})
        assert behind["n4"]["match"] == 0 and behind["n4"]["lag"] == last > 0
        _wait(lambda: all(r["lag"] == 0 for m, r in progress()[1].items() if m != "n4"),
              "the running voters never caught up")
        cluster.start("n4")
        _wait(lambda: progress()[1]["n4"]["lag"] == 0, "n4 never caught up")
        last, caught_up = progress()
        assert caught_up["n4"]["match"] == last
    finally:
        cluster.stop_all()


def test_a_leader_handing_over_in_a_quiet_log_keeps_its_ledger_in_memory(
        cluster: LocalCluster) -> None:
    # Its memory is its log: nothing to take back, and no replay of the log from disk
    # (seconds of CPU on a long one). Under writes it takes back what it admitted but
    # could not propose any more (test_cluster_failover).
    old = cluster.wait_leader(among=["n1", "n2", "n3"])
    rest = sorted({"n1", "n2", "n3"} - {old})
    result = cli("cluster", "remove", "--dir", str(cluster.dir), "--member", old,
                 "--via", cluster.url(old))
    assert result.returncode == 0, result.stderr
    cluster.wait_leader(among=rest)
    _wait(lambda: _voters(cluster, old) == rest, f"{old} never learnt it was removed")
    lines = cluster.members[old].stderr().splitlines()
    assert any('"lost leadership"' in line for line in lines)
    assert not any('"reloaded the ledger from disk"' in line for line in lines)
