"""A disk that stops taking writes: a node refuses writes clearly, loses nothing, keeps
serving reads, and resumes by itself once the disk takes writes again; a cluster goes on
without the member, which exits to be restarted once its disk recovers, and catches up.

The failure is real: the node process's file size limit (RLIMIT_FSIZE) is lowered to one
byte, so every write SQLite makes past the start of a file fails with EFBIG, as writes
fail on a full disk. Lifting the limit is freeing the disk.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from clusterproc import LocalCluster, UpProcess
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from factories import grant
from nodeclient import await_readiness, now_ms, post, register_controller
from nodeproc import NodeProcess

from client.verify_log import verify_log
from ledger.signed import SignedEvent, sign_batch
from node.runtime import housekeeping_every
from node.storage_failures import EXIT_RESTART

BATCH = 40


def _batch(key: Ed25519PrivateKey, tag: int) -> list[SignedEvent]:
    t = now_ms()
    return sign_batch([grant(subject=tag.to_bytes(4, "big") + bytes([i]) * 28, consented_at=t,
                             valid_until=t + 10**9) for i in range(BATCH)], key)


def _limit_file_size(pid: int, soft: int) -> None:
    _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))


async def _metric(session: aiohttp.ClientSession, url: str, name: str) -> int:
    async with session.get(f"{url}/metrics") as resp:
        text = await resp.text()
    return int(next(line.split()[1] for line in text.splitlines() if line.startswith(name + " ")))


def test_writes_are_refused_while_the_disk_fails_and_resume_once_it_takes_them(
        tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "data", "--origin", "test.example/full-disk")
    node.start()
    assert node.proc is not None
    pid = node.proc.pid
    acked: dict[bytes, int] = {}

    async def write(session: aiohttp.ClientSession, batch: list[SignedEvent]
                    ) -> tuple[int, Any, Any]:
        status, body, headers = await post(session, node.url, batch)
        if status == 200:
            for signed, result in zip(batch, body["results"], strict=True):
                acked[signed.id] = result["index"]
        return status, body, headers

    async def scenario() -> None:
        async with aiohttp.ClientSession() as s:
            key = await register_controller(s, node.url, node.data_dir / "operator.key")
            for tag in range(3):
                assert (await write(s, _batch(key, tag)))[0] == 200
            async with s.get(f"{node.url}/checkpoint") as resp:
                before = await resp.read()

            _limit_file_size(pid, 1)
            refused = _batch(key, 100)
            status, body, headers = await write(s, refused)
            assert status == 503, body
            assert headers["Content-Type"].startswith("application/problem+json")
            assert body["type"].endswith("/unavailable")
            assert "storage failure" in body["detail"]
            assert int(headers["Retry-After"]) > 0
            status, body, _ = await write(s, _batch(key, 101))
            assert status == 503 and "suspended" in body["detail"], body
            async with s.get(f"{node.url}/readyz") as resp:
                assert resp.status == 503
            # Reads go on, from what was committed.
            async with s.get(f"{node.url}/checkpoint") as resp:
                assert resp.status == 200 and await resp.read() == before
            assert await _metric(s, node.url, "consent_ledger_storage_failures_total") >= 1

            _limit_file_size(pid, resource.RLIM_INFINITY)
            # Its retries back off from 1 s.
            await await_readiness(s, node.url, 200, timeout=60, why="writes never resumed")
            assert await _metric(s, node.url, "consent_ledger_storage_recoveries_total") >= 1
            # The refused batch, sent again, is logged once; later writes go on as before.
            status, body, _ = await write(s, refused)
            assert status == 200, body
            for tag in range(200, 203):
                assert (await write(s, _batch(key, tag)))[0] == 200

    async def check() -> None:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{node.url}/v1/keys") as resp:
                log_key = (await resp.json())["log"]
            verified = await verify_log(s, node.url, log_key)
            for event_id, index in acked.items():
                assert verified.state.index_of(event_id) == index
            assert verified.checkpoint.size == max(acked.values()) + 2  # and a status root

    try:
        asyncio.run(scenario())
        asyncio.run(check())
        # The database on disk is whole: a restart checks every entry, tile and checkpoint.
        assert node.stop() == 0
        node.start()
        asyncio.run(check())
    finally:
        node.kill()


@pytest.mark.parametrize("role", ["follower", "leader"])
def test_a_cluster_goes_on_without_a_member_whose_disk_fails_and_it_rejoins_once_restarted(
        tmp_path: Path, role: str) -> None:
    cluster = LocalCluster(tmp_path / "cluster")
    cluster.start()
    acked: dict[bytes, int] = {}
    try:
        leader = cluster.wait_leader()
        failing = leader if role == "leader" else \
            next(m for m in sorted(cluster.members) if m != leader)
        others = [m for m in sorted(cluster.members) if m != failing]
        member = cluster.members[failing]
        assert member.proc is not None
        pid = member.proc.pid

        async def write(session: aiohttp.ClientSession, key: Ed25519PrivateKey, tag: int,
                        to: str) -> tuple[int, Any]:
            batch = _batch(key, tag)
            status, body, _ = await post(session, cluster.url(to), batch)
            if status == 200:
                for signed, result in zip(batch, body["results"], strict=True):
                    acked[signed.id] = result["index"]
            return status, body

        async def scenario() -> tuple[Ed25519PrivateKey, str]:
            async with aiohttp.ClientSession() as s:
                key = await register_controller(s, cluster.url(leader), cluster.operator_key)
                assert (await write(s, key, 0, leader))[0] == 200
                _limit_file_size(pid, 1)
                # The member finds out at its next write to disk.
                status, body = await write(s, key, 1, leader)
                if role == "leader":
                    assert status == 503, body
                else:  # the leader and the other member are a majority
                    assert status == 200, body
                problem = await await_readiness(s, cluster.url(failing), 503, timeout=30,
                                                why="the member never noticed its disk")
                assert "stopped replicating" in problem["detail"]
                leads = await asyncio.to_thread(cluster.wait_leader, 30.0, others)
                for tag in range(2, 5):
                    status, body = await write(s, key, tag, leads)
                    assert status == 200, body
                _limit_file_size(pid, resource.RLIM_INFINITY)
            return key, leads

        key, leads = asyncio.run(scenario())
        # Once its disk takes writes again it exits, for its supervisor to restart it.
        assert member.proc.wait(timeout=60) == EXIT_RESTART
        member.start()

        async def more() -> None:
            async with aiohttp.ClientSession() as s:
                assert (await write(s, key, 5, leads))[0] == 200

        asyncio.run(more())
        cluster.wait_published(failing, max(acked.values()) + 2)

        async def check() -> None:
            async with aiohttp.ClientSession() as s:
                verified = await verify_log(s, cluster.url(failing), cluster.config.log_key)
            for event_id, index in acked.items():
                assert verified.state.index_of(event_id) == index

        asyncio.run(check())
    finally:
        cluster.stop_all()


def test_cluster_up_restarts_a_member_that_asks_for_it(tmp_path: Path) -> None:
    """`consent-ledger cluster up` supervises its members as systemd would: a member that
    exits asking to be restarted, after its disk failed and recovered, is started again."""
    up = UpProcess(tmp_path / "cluster")
    try:
        leader, url = up.leader, up.url
        failing = next(m for m in url if m != leader)
        first_pid = up.pid(failing)
        assert first_pid is not None

        async def scenario() -> None:
            async with aiohttp.ClientSession() as s:
                key = await register_controller(s, url[leader],
                                                up.dir / "keys" / "operator.key")
                _limit_file_size(first_pid, 1)
                status, body, _ = await post(s, url[leader], _batch(key, 0))
                assert status == 200, body
                await await_readiness(s, url[failing], 503, timeout=30,
                                      why="the member never noticed its disk")
                _limit_file_size(first_pid, resource.RLIM_INFINITY)
                async with s.get(f"{url[leader]}/v1/cluster") as resp:
                    size = (await resp.json())["published_size"]
                await up.await_restarted(s, failing, first_pid, size)  # a new process

        asyncio.run(scenario())
        status, err = up.stop()
        assert status == 0, err
        assert f"member {failing} asked to be restarted" in err
        assert all(up.pid(m) is None for m in url)
    finally:
        up.kill_all()


async def test_a_failing_wal_checkpoint_is_logged_once_a_spell(
        caplog: pytest.LogCaptureFixture) -> None:
    """A full disk fails the checkpoint every second: one line when it starts failing,
    one when it works again, not a traceback a second."""
    # The checkpoints' outcomes, in turn: four fail, three work, three fail.
    outcomes = [False] * 4 + [True] * 3 + [False] * 3
    done = asyncio.get_running_loop().create_future()

    class Checkpoints:  # only the call the housekeeping makes
        async def checkpoint_wal(self) -> None:
            if not outcomes:
                if not done.done():
                    done.set_result(None)
                return
            if not outcomes.pop(0):
                raise OSError(27, "File too large")

    caplog.set_level(logging.INFO, logger="consent_ledger.node")
    task = asyncio.create_task(housekeeping_every(Checkpoints(), lambda: 0, 0.001))  # type: ignore[arg-type]
    try:
        await asyncio.wait_for(done, timeout=15)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("WAL checkpoint failed" in m for m in messages) == 2, messages
    assert sum("WAL checkpoint works again" in m for m in messages) == 2, messages
