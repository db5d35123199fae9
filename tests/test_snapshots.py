"""A node takes state snapshots as it commits and restarts from the newest one that agrees
with its log, replaying only the entries after it; a bad snapshot costs a full replay,
never a wrong state; fsck replays everything and compares."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cliutil import cli, one_line_error
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from factories import grant, revoke
from nodeclient import now_ms, post, register_controller
from nodeproc import NodeFailedToStart, NodeProcess

from ledger import merkle
from ledger.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from ledger.events import ControllerRegister, Genesis, StatusRoot
from ledger.note import ALG_ED25519, Ed25519Signer, format_verifier_key, new_verifier
from ledger.signed import SignedEvent, log_authored, public_bytes, sign_batch, sign_event
from ledger.state import LedgerState
from ledger.state_snapshot import snapshot_bytes
from ledger.tree import MerkleTree
from node.config import ConfigError, load_config
from node.local_commit import touched_tiles
from node.recovery import recover
from node.snapshots import Snapshotter, due_after
from node.storage import SNAPSHOT_PART_BYTES, Storage, StorageError

EVERY = 100
BATCHES = 8
PER_BATCH = 50


LEDGER, SNAPSHOTS = "ledger.sqlite", "ledger.snapshots.sqlite"  # see node/storage.py


def _db(proc: NodeProcess, file: str) -> sqlite3.Connection:
    return sqlite3.connect(proc.data_dir / file)


def snapshot_sizes(proc: NodeProcess) -> list[int]:
    """The sizes of the node's stored snapshots, largest first (none before its first)."""
    if not (proc.data_dir / SNAPSHOTS).exists():
        return []
    db = _db(proc, SNAPSHOTS)
    try:
        return [r[0] for r in db.execute("SELECT size FROM snapshots ORDER BY size DESC")]
    except sqlite3.OperationalError:  # the node has not created the table yet
        return []
    finally:
        db.close()


def _sql(proc: NodeProcess, statement: str, *args: object, file: str = SNAPSHOTS) -> None:
    db = _db(proc, file)
    with db:
        db.execute(statement, args)
    db.close()


def file_older_as_newest(proc: NodeProcess, older: int, newest: int) -> None:
    """A valid snapshot, filed under another size than its own."""
    for table in ("snapshots", "snapshot_parts"):
        _sql(proc, f"DELETE FROM {table} WHERE size = ?", newest)
        _sql(proc, f"UPDATE {table} SET size = ? WHERE size = ?", newest, older)


def recoveries(proc: NodeProcess) -> list[dict[str, Any]]:
    """The node's 'recovered the ledger' log lines, oldest first."""
    lines = [json.loads(line) for line in proc.stderr().splitlines() if line.startswith("{")]
    return [line for line in lines if line["msg"] == "recovered the ledger"]


def refusals(proc: NodeProcess) -> list[str]:
    lines = [json.loads(line) for line in proc.stderr().splitlines() if line.startswith("{")]
    return [line["reason"] for line in lines if line["msg"].startswith("state snapshot refused")]


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as resp:
        return resp.status, await resp.text()


async def served(proc: NodeProcess, subjects: list[bytes]) -> tuple[str, list[str]]:
    """The checkpoint and the proven status answers for each subject's two purposes."""
    async with aiohttp.ClientSession() as s:
        status, checkpoint = await _get(s, f"{proc.url}/checkpoint")
        assert status == 200
        answers = []
        for subject in subjects:
            for purpose in ("dpv:Marketing", "shop.example:newsletter"):
                status, text = await _get(
                    s, f"{proc.url}/v1/status?controller=shop.example&subject={subject.hex()}"
                    f"&purpose={purpose}")
                assert status == 200, text
                answers.append(text)
        return checkpoint, answers


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[NodeProcess, Any, list[SignedEvent]]:
    """A stopped node that took snapshots while BATCHES batches were written to it."""
    base = tmp_path_factory.mktemp("snapshots")
    config = base / "node.toml"
    # Builds at full priority: at nice 19 they would wait on the suite's other worker.
    config.write_text(f"snapshot_every = {EVERY}\nsnapshot_nice = 0\n")
    proc = NodeProcess(base / "data", "--origin", "test.example/snapshots",
                       "--config", str(config))
    proc.start()
    grants: list[SignedEvent] = []

    async def write() -> Any:
        async with aiohttp.ClientSession() as s:
            key = await register_controller(s, proc.url, proc.data_dir / "operator.key")
            for b in range(BATCHES):
                t = now_ms()
                batch = sign_batch([grant(subject=bytes([b, i]) * 16, consented_at=t,
                                          valid_until=t + 10**9) for i in range(PER_BATCH)], key)
                status, body, _ = await post(s, proc.url, batch)
                assert status == 200, body
                grants.extend(batch)
            return key

    key = asyncio.run(write())
    deadline = time.monotonic() + 20
    while len(sizes := snapshot_sizes(proc)) < 2 or sizes[0] < (BATCHES - 2) * PER_BATCH:
        assert time.monotonic() < deadline, f"snapshots stored: {sizes}"
        time.sleep(0.05)  # polling the database with a deadline
    assert proc.stop() == 0
    return proc, key, grants


def _copy(written: tuple[NodeProcess, Any, list[SignedEvent]], tmp_path: Path) -> NodeProcess:
    """A node on a copy of the written node's data: each test changes its own."""
    proc = written[0]
    shutil.copytree(proc.data_dir, tmp_path / "data")
    return NodeProcess(tmp_path / "data", *proc.args)


def test_snapshots_are_taken_every_n_entries_and_the_last_two_kept(
        written: tuple[NodeProcess, Any, list[SignedEvent]]) -> None:
    sizes = snapshot_sizes(written[0])
    assert len(sizes) == 2
    assert sizes[0] - sizes[1] >= EVERY
    # Every snapshot is at a committed size: the end of a batch, one status root after it.
    entries = 2 + 2 + BATCHES * (PER_BATCH + 1)  # genesis and register, each with a root
    assert sizes[0] <= entries
    assert (entries - sizes[0]) % (PER_BATCH + 1) == 0


def test_restart_replays_only_the_entries_after_the_newest_snapshot(
        written: tuple[NodeProcess, Any, list[SignedEvent]], tmp_path: Path) -> None:
    _, key, grants = written
    proc = _copy(written, tmp_path)
    newest = snapshot_sizes(proc)[0]
    subjects = [g.body.subject for g in grants[::37]]  # type: ignore[attr-defined]

    proc.start()
    first = recoveries(proc)[-1]
    assert first["snapshot"] == newest
    assert first["replayed"] == first["size"] - newest < EVERY + PER_BATCH + 1

    async def write_on() -> None:
        """The restored state knows what came before the snapshot: a duplicate and a
        revocation of the first grant are answered from it."""
        async with aiohttp.ClientSession() as s:
            status, body, _ = await post(s, proc.url, [grants[0]])
            assert status == 200 and body["results"][0]["index"] == 4, body
            status, body, _ = await post(s, proc.url, [sign_event(
                revoke(grant=grants[0].id, revoked_at=now_ms(), by="controller"), key)])
            assert status == 200 and "index" in body["results"][0], body
            status, body, _ = await post(s, proc.url, [sign_event(
                revoke(grant=grants[0].id, revoked_at=now_ms(), by="controller"), key)])
            assert body["results"][0]["problem"]["type"].endswith("/already-revoked"), body

    asyncio.run(write_on())
    restored = asyncio.run(served(proc, subjects))
    assert "ConsentRevoked" in restored[1][0]
    assert proc.stop() == 0

    _sql(proc, "DELETE FROM snapshots")  # the same log, replayed from genesis
    proc.start()
    full = recoveries(proc)[-1]
    assert (full["snapshot"], full["replayed"]) == (0, first["size"] + 2)
    assert asyncio.run(served(proc, subjects)) == restored
    assert proc.stop() == 0


def test_a_snapshot_that_disagrees_is_refused_and_recovery_falls_back(
        written: tuple[NodeProcess, Any, list[SignedEvent]], tmp_path: Path) -> None:
    proc = _copy(written, tmp_path)
    newest, older = snapshot_sizes(proc)
    proc.start()
    size = recoveries(proc)[-1]["size"]
    expected = asyncio.run(served(proc, []))
    assert proc.stop() == 0

    # A torn row: its digest gives it away; the older snapshot is used.
    _sql(proc, "UPDATE snapshot_parts SET data = CAST(substr(data, 1, length(data) - 40) || "
               "zeroblob(40) AS BLOB) WHERE size = ? AND part = 0", newest)
    proc.start()
    assert recoveries(proc)[-1] == {**recoveries(proc)[-1], "snapshot": older,
                                    "replayed": size - older}
    assert "digest" in refusals(proc)[-1]
    assert asyncio.run(served(proc, [])) == expected
    assert proc.stop() == 0

    # A valid snapshot filed under the wrong size disagrees with the log: full replay.
    file_older_as_newest(proc, older, newest)
    proc.start()
    assert (recoveries(proc)[-1]["snapshot"], recoveries(proc)[-1]["replayed"]) == (0, size)
    assert f"it holds {older} entries" in refusals(proc)[-1]
    assert asyncio.run(served(proc, [])) == expected
    assert proc.stop() == 0


@pytest.mark.parametrize("damage", ["not a database", "torn inside"])
def test_an_unusable_snapshot_database_is_set_aside_and_the_log_replayed(
        written: tuple[NodeProcess, Any, list[SignedEvent]], tmp_path: Path,
        damage: str) -> None:
    """The snapshot database is a cache: damaged, it costs a full replay, not the node."""
    proc = _copy(written, tmp_path)
    proc.start()
    size = recoveries(proc)[-1]["size"]
    expected = asyncio.run(served(proc, []))
    assert proc.stop() == 0

    path = proc.data_dir / SNAPSHOTS
    if damage == "not a database":
        path.write_bytes(b"not a database" * 1000)
    else:  # a valid header, then pages that are not b-tree pages
        _sql(proc, "PRAGMA wal_checkpoint(TRUNCATE)")
        data = bytearray(path.read_bytes())
        data[4096:] = bytes(len(data) - 4096)
        path.write_bytes(bytes(data))
    proc.start()
    assert (recoveries(proc)[-1]["snapshot"], recoveries(proc)[-1]["replayed"]) == (0, size)
    assert "set aside" in proc.stderr()
    assert (proc.data_dir / (SNAPSHOTS + ".unusable")).exists()
    assert asyncio.run(served(proc, [])) == expected
    assert proc.stop() == 0


def test_fsck_replays_everything_and_compares_each_snapshot(
        written: tuple[NodeProcess, Any, list[SignedEvent]], tmp_path: Path) -> None:
    proc = _copy(written, tmp_path)
    newest, older = snapshot_sizes(proc)
    result = cli("fsck", "--data", str(proc.data_dir))
    assert result.returncode == 0, result.stderr
    assert f"size {older} matches the replayed state" in result.stdout
    assert f"size {newest} matches the replayed state" in result.stdout
    assert "checkpoint   size" in result.stdout

    # A snapshot of a different state (the older one, filed as the newer) is reported.
    file_older_as_newest(proc, older, newest)
    error = one_line_error(cli("fsck", "--data", str(proc.data_dir)), 1)
    assert f"snapshot at size {newest} does not match" in error

    missing = one_line_error(cli("fsck", "--data", str(tmp_path / "nowhere")), 1)
    assert "no ledger in" in missing
    assert not (tmp_path / "nowhere").exists()


async def test_a_cluster_reload_starts_from_a_snapshot_below_an_uncommitted_tail(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """recover(uncommitted_tail=True), as a member reloads after a truncation: the
    snapshot covers a committed prefix, the tail past the checkpoint is replayed too."""
    origin, log_key = "test.example/reload", Ed25519PrivateKey.generate()
    operator, controller = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    signer = Ed25519Signer.from_private_key(origin, log_key)
    verifier = new_verifier(format_verifier_key(origin, ALG_ED25519, public_bytes(log_key)))
    state, tree = LedgerState(), MerkleTree()
    storage = await Storage.open(tmp_path / "ledger.sqlite")
    t = now_ms()

    async def batch(events: list[SignedEvent], *, checkpoint: bool) -> None:
        old = tree.size
        entries = [state.admit(s, t, signature_verified=False) for s in events]
        entries.append(state.admit(log_authored(StatusRoot(size=state.size,
                                                           map_root=state.map_root())),
                                   t, signature_verified=True))
        for e in entries:
            tree.append(e.leaf_hash)
        rows = [(e.index, e.signed.id, e.leaf_hash, e.encoded) for e in entries]
        if checkpoint:
            note = sign_checkpoint(Checkpoint(origin, tree.size, tree.root()), signer)
            await storage.commit_batch(rows, touched_tiles(tree, old, tree.size), tree.size,
                                       note)
        else:  # stored, not known to be committed: no checkpoint, no tiles
            await storage.write(lambda db: db.executemany(
                "INSERT INTO entries(idx, event_id, leaf, data) VALUES (?, ?, ?, ?)", rows))

    await batch([sign_event(Genesis(origin=origin, operator_key=public_bytes(operator),
                                    created_at=t, max_skew_ms=60_000), operator),
                 sign_event(ControllerRegister(
                     controller="shop.example", name="Shop", contact="dpo@shop.example",
                     key=public_bytes(controller), registered_at=t), operator)],
                checkpoint=True)
    for b in range(3):
        await batch(sign_batch([grant(subject=bytes([b, i]) * 16, consented_at=t,
                                      valid_until=t + 10**9) for i in range(10)], controller),
                    checkpoint=True)
    await storage.store_snapshot(state.size, snapshot_bytes(state), keep=2)
    snapshot, committed = state.size, state.size
    await batch(sign_batch([grant(subject=bytes([9, i]) * 16, consented_at=t,
                                  valid_until=t + 10**9) for i in range(10)], controller),
                checkpoint=False)
    expected = snapshot_bytes(state)

    def open_note(note: bytes) -> Checkpoint:
        return open_checkpoint(note, verifier)[0]

    caplog.set_level("INFO", logger="consent_ledger.recovery")
    try:
        restored, restored_tree, note = await recover(storage, open_note, uncommitted_tail=True)
        assert snapshot_bytes(restored) == expected
        assert restored_tree.root() == tree.root()
        assert note is not None and open_note(note).size == committed
        (line,) = [r for r in caplog.records if r.msg == "recovered the ledger"]
        assert (line.snapshot, line.replayed) == (snapshot, 11)  # type: ignore[attr-defined]
        # A snapshot past the entries on disk (never written so, but) is passed over.
        await storage.store_snapshot(tree.size + 5, b"from elsewhere", keep=3)
        again, _, _ = await recover(storage, open_note, uncommitted_tail=True)
        assert snapshot_bytes(again) == expected
    finally:
        await storage.close()


@pytest.mark.parametrize("reseal_leaf", [False, True])
def test_a_tampered_entry_before_the_snapshot_is_still_refused(
        written: tuple[NodeProcess, Any, list[SignedEvent]], tmp_path: Path,
        reseal_leaf: bool) -> None:
    """Start-up no longer replays the entries a snapshot covers, but still rehashes them
    and compares the tiles: a torn or altered database is reported, never served."""
    proc = _copy(written, tmp_path)
    db = _db(proc, LEDGER)
    (data,) = db.execute("SELECT data FROM entries WHERE idx = 7").fetchone()
    db.close()
    forged = bytes(data[:-1]) + bytes([data[-1] ^ 1])
    if reseal_leaf:
        _sql(proc, "UPDATE entries SET data = ?, leaf = ? WHERE idx = 7",
             forged, merkle.leaf_hash(forged), file=LEDGER)
    else:
        _sql(proc, "UPDATE entries SET data = ? WHERE idx = 7", forged, file=LEDGER)
    with pytest.raises(NodeFailedToStart) as err:
        proc.start()
    assert "Traceback" not in str(err.value)
    assert ("tile 0/0 does not match" if reseal_leaf else "entry 7") in str(err.value)
    assert proc.proc is not None and proc.proc.returncode == 1


def test_snapshot_every_must_not_be_negative(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="snapshot_every"):
        load_config(data_dir=tmp_path, snapshot_every=-1)
    assert load_config(data_dir=tmp_path, snapshot_every="0").snapshot_every == 0
    with pytest.raises(ConfigError, match=r"snapshot_nice 20 is not in 0\.\.19"):
        load_config(data_dir=tmp_path, snapshot_nice=20)
    assert load_config(data_dir=tmp_path).snapshot_nice == 19


async def test_a_snapshot_being_stored_never_holds_up_a_commit(tmp_path: Path) -> None:
    storage = await Storage.open(tmp_path / "ledger.sqlite")
    try:
        assert await storage.snapshot_sizes() == []
        # Another connection holds the snapshot database's write lock: the snapshot
        # waits for it, and meanwhile the ledger still commits.
        blocker = sqlite3.connect(storage.snapshot_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        storing = asyncio.ensure_future(storage.store_snapshot(5, b"s" * 1_000_000, keep=2))
        await storage.commit_batch([(0, bytes(32), bytes(32), b"entry")], [], 1, b"note")
        assert not storing.done()
        blocker.execute("COMMIT")
        blocker.close()
        await storing
        assert await storage.snapshot_sizes() == [5]
        assert await storage.snapshot(5) == b"s" * 1_000_000
    finally:
        await storage.close()


async def test_snapshots_stored_in_the_ledger_database_before_are_dropped(
        tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "ledger.sqlite")
    with db:
        db.execute("CREATE TABLE snapshots (size INTEGER PRIMARY KEY, data BLOB NOT NULL)")
        db.execute("INSERT INTO snapshots VALUES (7, x'00')")
    db.close()
    storage = await Storage.open(tmp_path / "ledger.sqlite")
    try:
        assert not await storage.has_table("snapshots")
        assert await storage.snapshot_sizes() == []
    finally:
        await storage.close()


async def test_a_member_with_entries_but_no_checkpoint_yet_recovers_them_as_its_tail(
        tmp_path: Path) -> None:
    """A follower stores the first checkpoint it hears of with its next tiles: killed
    before that, it holds entries and no checkpoint, and must start again (the deploy
    test's restore from online backups hit this). One node never may."""
    operator = Ed25519PrivateKey.generate()
    state = LedgerState()
    entry = state.admit(sign_event(Genesis(origin="test.example/tail",
                                           operator_key=public_bytes(operator),
                                           created_at=now_ms(), max_skew_ms=60_000),
                                   operator), now_ms(), signature_verified=False)
    storage = await Storage.open(tmp_path / "ledger.sqlite")
    try:
        await storage.write(lambda db: db.execute(
            "INSERT INTO entries(idx, event_id, leaf, data) VALUES (?, ?, ?, ?)",
            (0, entry.signed.id, entry.leaf_hash, entry.encoded)))

        def no_note(note: bytes) -> Checkpoint:
            raise AssertionError("there is no checkpoint to open")

        restored, tree, note = await recover(storage, no_note, uncommitted_tail=True)
        assert (restored.size, tree.size, note) == (1, 1, None)
        with pytest.raises(StorageError, match="1 entries but no checkpoint"):
            await recover(storage, no_note, uncommitted_tail=False)
    finally:
        await storage.close()


async def test_a_snapshot_is_stored_in_parts_and_read_back_whole(tmp_path: Path) -> None:
    storage = await Storage.open(tmp_path / "ledger.sqlite")
    try:
        big = bytes(range(256)) * (SNAPSHOT_PART_BYTES * 5 // 2 // 256)  # 2.5 parts
        await storage.store_snapshot(10, big, keep=2)
        await storage.store_snapshot(20, b"small", keep=2)
        await storage.store_snapshot(30, big[::-1], keep=2)
        assert await storage.snapshot_sizes() == [30, 20]
        assert await storage.snapshot(30) == big[::-1]
        assert await storage.snapshot(20) == b"small"
        assert await storage.snapshot(10) is None
        db = sqlite3.connect(storage.snapshot_path)
        parts = db.execute("SELECT size, count(*) FROM snapshot_parts GROUP BY size").fetchall()
        db.close()
        assert parts == [(20, 1), (30, 3)]  # the dropped snapshot's parts went with it
    finally:
        await storage.close()


def test_snapshots_come_further_apart_as_the_log_grows() -> None:
    sizes = [0]
    while sizes[-1] < 10_000_000:
        sizes.append(due_after(sizes[-1], 100_000))
    assert sizes[:5] == [0, 100_000, 200_000, 300_000, 400_000]
    assert sizes[5:7] == [500_000, 625_000]  # from 400,000 on, a quarter of the log
    assert len(sizes) < 30  # not the hundred a fixed interval would take to ten million
    assert all(b - a <= max(100_000, a // 4) for a, b in itertools.pairwise(sizes))


def test_an_offset_delays_only_the_first_snapshot() -> None:
    # Cluster members each get their own offset, so they snapshot one at a time.
    assert [due_after(0, 100_000, offset) for offset in (0, 33_333, 66_666)] == \
        [100_000, 133_333, 166_666]
    assert due_after(133_333, 100_000, 33_333) == 233_333
    assert due_after(500_000, 100_000, 66_666) == 625_000


class _Recording(Snapshotter):
    """The node's snapshot policy, with builds recorded instead of run."""

    def __init__(self, storage: Storage, **kwargs: Any) -> None:
        super().__init__(storage, **kwargs)
        self.built: list[int] = []
        self.began = asyncio.Event()

    def _start(self, size: int) -> None:
        self._last = size
        self.built.append(size)
        self.began.set()


async def test_a_due_snapshot_waits_for_a_lull_in_the_writes(tmp_path: Path) -> None:
    storage = await Storage.open(tmp_path / "ledger.sqlite")
    try:
        snapshots = _Recording(storage, every=100, quiet_ms=200)
        await snapshots.after_commit(50)  # reads what is stored: the later calls never wait
        await snapshots.after_commit(150)  # due, but a write just committed
        await snapshots.after_commit(160)
        assert snapshots.built == []
        waited_from = time.monotonic()
        await asyncio.wait_for(snapshots.began.wait(), timeout=10)
        assert snapshots.built == [160]  # what was committed when the writes paused
        assert time.monotonic() - waited_from >= 0.2 * 0.9  # timers may fire a tick early
        # Writes that never pause: one interval later the build starts all the same.
        await snapshots.after_commit(260)  # due: waits for a lull
        await snapshots.after_commit(359)
        assert snapshots.built == [160]
        await snapshots.after_commit(360)  # and one interval more
        assert snapshots.built == [160, 360]
        await snapshots.close()
    finally:
        await storage.close()


async def test_a_snapshot_starts_when_due_without_a_lull_or_held_by_a_leader(
        tmp_path: Path) -> None:
    storage = await Storage.open(tmp_path / "ledger.sqlite")
    try:
        at_once = _Recording(storage, every=100, quiet_ms=0)
        await at_once.after_commit(100)
        assert at_once.built == [100]
        # A cluster's leader leaves its due snapshot to the followers, lull or not.
        leader = _Recording(storage, every=100, quiet_ms=0, hold=lambda: True)
        await leader.after_commit(150)
        assert leader.built == []
        await leader.after_commit(200)
        assert leader.built == [200]
    finally:
        await storage.close()
