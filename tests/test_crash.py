"""SIGKILL under load, restart, and nothing acknowledged is lost; bad databases are refused."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import aiohttp
import pytest
from factories import grant
from nodeclient import await_readiness, now_ms, post, register_controller
from nodeproc import NodeFailedToStart, NodeProcess

from client.verify_log import verify_log
from ledger import merkle
from ledger.signed import sign_batch

ROUNDS = 4
WRITERS = 8
BATCH = 40
KILL_AFTER = 400  # acknowledged events per round before the kill


async def _write_until_killed(proc: NodeProcess, key: object, acked: dict[bytes, int],
                              round_no: int) -> None:
    counter = 0
    killed = asyncio.Event()

    async def writer(w: int) -> None:
        nonlocal counter
        async with aiohttp.ClientSession() as session:
            seq = 0
            while not killed.is_set():
                t = now_ms()
                subjects = [bytes([round_no, w]) + seq.to_bytes(4, "big") + bytes([i]) * 26
                            for i in range(BATCH)]
                seq += 1
                batch = sign_batch([grant(subject=s, consented_at=t, valid_until=t + 10**9)
                                    for s in subjects], key)  # type: ignore[arg-type]
                try:
                    status, body, _ = await post(session, proc.url, batch)
                except (TimeoutError, aiohttp.ClientError):
                    return  # the node died under us: this batch was never acknowledged
                assert status == 200, body
                for signed, result in zip(batch, body["results"], strict=True):
                    acked[signed.id] = result["index"]
                counter += len(batch)
                if counter >= KILL_AFTER and not killed.is_set():
                    killed.set()
                    proc.kill()  # other writers still have requests in flight

    await asyncio.gather(*(writer(w) for w in range(WRITERS)))


def test_acknowledged_events_survive_sigkill(tmp_path: Path) -> None:
    proc = NodeProcess(tmp_path / "data", "--origin", "test.example/crash")
    proc.start()
    acked: dict[bytes, int] = {}

    async def register() -> object:
        async with aiohttp.ClientSession() as s:
            return await register_controller(s, proc.url, proc.data_dir / "operator.key")

    key = asyncio.run(register())
    for round_no in range(ROUNDS):
        asyncio.run(_write_until_killed(proc, key, acked, round_no))
        assert proc.proc is not None and proc.proc.returncode == -9
        proc.start()

    async def check() -> None:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{proc.url}/v1/keys") as resp:
                log_key = (await resp.json())["log"]
            verified = await verify_log(s, proc.url, log_key)
            assert verified.checkpoint.size >= len(acked) + 2
            for event_id, index in acked.items():
                assert verified.state.index_of(event_id) == index

    asyncio.run(check())
    assert len(acked) >= ROUNDS * KILL_AFTER
    assert proc.stop() == 0


@pytest.fixture
def stopped_node(tmp_path: Path) -> NodeProcess:
    proc = NodeProcess(tmp_path / "data", "--origin", "test.example/fsck")
    proc.start()

    async def fill() -> None:
        async with aiohttp.ClientSession() as s:
            key = await register_controller(s, proc.url, proc.data_dir / "operator.key")
            t = now_ms()
            status, _, _ = await post(s, proc.url, sign_batch(
                [grant(subject=bytes([i]) * 32, consented_at=t, valid_until=t + 10**9)
                 for i in range(20)], key))
            assert status == 200

    asyncio.run(fill())
    assert proc.stop() == 0
    return proc


def _refused(proc: NodeProcess, *words: str) -> None:
    with pytest.raises(NodeFailedToStart) as err:
        proc.start()
    message = str(err.value)
    assert "Traceback" not in message
    for word in words:
        assert word in message, message
    assert proc.proc is not None and proc.proc.returncode == 1


def _sql(proc: NodeProcess, statement: str, *args: object) -> None:
    db = sqlite3.connect(proc.data_dir / "ledger.sqlite")
    with db:
        db.execute(statement, args)
    db.close()


def test_tampered_entry_is_refused(stopped_node: NodeProcess) -> None:
    _sql(stopped_node, "UPDATE entries SET data = CAST(data || x'00' AS BLOB) WHERE idx = 5")
    _refused(stopped_node, "entry 5")


def test_tampered_entry_with_matching_leaf_is_refused(stopped_node: NodeProcess) -> None:
    db = sqlite3.connect(stopped_node.data_dir / "ledger.sqlite")
    (data,) = db.execute("SELECT data FROM entries WHERE idx = 7").fetchone()
    db.close()
    forged = bytes(data[:-1]) + bytes([data[-1] ^ 1])
    _sql(stopped_node, "UPDATE entries SET data = ?, leaf = ? WHERE idx = 7",
         forged, merkle.leaf_hash(forged))
    _refused(stopped_node, "entry 7")


def test_missing_entry_is_refused(stopped_node: NodeProcess) -> None:
    _sql(stopped_node, "DELETE FROM entries WHERE idx = 3")
    _refused(stopped_node, "entry 3")


def test_forged_checkpoint_is_refused(stopped_node: NodeProcess) -> None:
    db = sqlite3.connect(stopped_node.data_dir / "ledger.sqlite")
    size, note = db.execute("SELECT size, note FROM checkpoints ORDER BY size DESC").fetchone()
    db.close()
    origin, size_line, rest = bytes(note).split(b"\n", 2)
    forged = b"\n".join([origin, str(int(size_line) + 1).encode(), rest])
    _sql(stopped_node, "UPDATE checkpoints SET note = ? WHERE size = ?", forged, size)
    _refused(stopped_node, "checkpoint")


def test_torn_database_file_is_refused(stopped_node: NodeProcess) -> None:
    path = stopped_node.data_dir / "ledger.sqlite"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _refused(stopped_node)


def test_garbage_database_file_is_refused(stopped_node: NodeProcess) -> None:
    path = stopped_node.data_dir / "ledger.sqlite"
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    path.write_bytes(b"this is not a database" * 100)
    _refused(stopped_node, "database")


def test_sigterm_finishes_the_batches_in_flight(tmp_path: Path) -> None:
    proc = NodeProcess(tmp_path / "data", "--origin", "test.example/drain")
    proc.start()
    acked: dict[bytes, int] = {}

    async def load() -> int:
        async with aiohttp.ClientSession() as s:
            key = await register_controller(s, proc.url, proc.data_dir / "operator.key")
            t = now_ms()
            batches = [sign_batch([grant(subject=bytes([b, i]) * 16, consented_at=t,
                                         valid_until=t + 10**9) for i in range(200)], key)
                       for b in range(8)]
            answered = 0
            terminated = False

            async def send(batch: list) -> None:  # type: ignore[type-arg]
                nonlocal answered, terminated
                try:
                    status, body, _ = await post(s, proc.url, batch)
                except aiohttp.ClientError:
                    return  # refused after SIGTERM: never acknowledged
                assert status in (200, 503), body
                if status == 200:
                    for signed, result in zip(batch, body["results"], strict=True):
                        acked[signed.id] = result["index"]
                    answered += 1
                if not terminated:
                    terminated = True
                    assert proc.proc is not None
                    proc.proc.terminate()  # the other batches are still in flight

            await asyncio.gather(*(send(b) for b in batches))
            return answered

    answered = asyncio.run(load())
    assert proc.proc is not None and proc.proc.wait(30) == 0, proc.stderr()
    assert answered >= 1
    proc.start()

    async def check() -> None:
        async with aiohttp.ClientSession() as s:
            for event_id, index in acked.items():
                async with s.get(f"{proc.url}/v1/events/{event_id.hex()}") as resp:
                    assert resp.status == 200
                    assert (await resp.json())["index"] == index

    asyncio.run(check())
    assert proc.stop() == 0


def test_a_failed_commit_acknowledges_nothing_and_suspends_writes_until_they_work(
        tmp_path: Path) -> None:
    """Another process holds SQLite's write lock: the commit fails after the busy timeout,
    writes are refused while it holds it, and resume once it lets go."""
    proc = NodeProcess(tmp_path / "data", "--origin", "test.example/stuck")
    proc.start()

    async def scenario() -> None:
        async with aiohttp.ClientSession() as s:
            key = await register_controller(s, proc.url, proc.data_dir / "operator.key")
            t = now_ms()
            blocked = sign_batch([grant(subject=b"s" * 32, consented_at=t,
                                        valid_until=t + 10**9)], key)
            locker = sqlite3.connect(proc.data_dir / "ledger.sqlite", isolation_level=None)
            locker.execute("BEGIN IMMEDIATE")  # holds the write lock
            try:
                status, problem, headers = await post(s, proc.url, blocked)
                assert status == 503, problem
                assert problem["type"].endswith("/unavailable")
                assert "Retry-After" in headers
                async with s.get(f"{proc.url}/readyz") as resp:
                    assert resp.status == 503  # its state ran ahead of disk: suspended
                status, problem, _ = await post(s, proc.url, blocked)
                assert status == 503 and "suspended" in problem["detail"], problem
            finally:
                locker.execute("ROLLBACK")
                locker.close()
            await await_readiness(s, proc.url, 200, timeout=30, why="writes never resumed")
            status, body, _ = await post(s, proc.url, blocked)
            # genesis and the registration, each closed by its status root, come first
            assert status == 200 and body["results"][0]["index"] == 4, body

    asyncio.run(scenario())
    assert proc.stop() == 0
    proc.start()  # recovery from disk: the failed batch is there once, when it was retried

    async def after() -> None:
        async with aiohttp.ClientSession() as s, s.get(f"{proc.url}/readyz") as resp:
            assert resp.status == 200
            assert (await resp.json())["size"] == 6

    asyncio.run(after())
    assert proc.stop() == 0


def test_a_missing_log_key_is_refused_not_replaced(stopped_node: NodeProcess) -> None:
    key = stopped_node.data_dir / "log.key"
    key.unlink()
    _refused(stopped_node, "log key", "missing")
    assert not key.exists()
