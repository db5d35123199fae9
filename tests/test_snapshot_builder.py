"""Snapshots built by a process of their own from the log on disk: the state at exactly
the size asked for, from the newest usable snapshot below it, or a clear refusal."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from factories import grant
from nodeclient import now_ms
from nodeproc import children_of

from ledger.checkpoint import Checkpoint, sign_checkpoint
from ledger.events import ControllerRegister, Genesis, StatusRoot
from ledger.note import Ed25519Signer
from ledger.signed import SignedEvent, log_authored, public_bytes, sign_batch, sign_event
from ledger.state import LedgerState
from ledger.state_snapshot import snapshot_bytes
from ledger.tree import MerkleTree
from node.local_commit import touched_tiles
from node.snapshot_builder import BuildError, build
from node.snapshots import Snapshotter
from node.storage import Storage

ROOT = Path(__file__).resolve().parents[1]
OPERATOR, CONTROLLER, LOG_KEY = (Ed25519PrivateKey.generate() for _ in range(3))
ORIGIN = "test.example/builder"


class Log:
    """A ledger written to real storage batch by batch, with its state at each end."""

    def __init__(self, storage: Storage) -> None:
        self.storage, self.state, self.tree = storage, LedgerState(), MerkleTree()
        self.at: dict[int, bytes] = {}  # size -> the snapshot bytes of the state there
        self.t = now_ms()

    async def batch(self, events: list[SignedEvent]) -> int:
        state, tree, old = self.state, self.tree, self.tree.size
        entries = [state.admit(s, self.t, signature_verified=False) for s in events]
        entries.append(state.admit(log_authored(StatusRoot(size=state.size,
                                                           map_root=state.map_root())),
                                   self.t, signature_verified=True))
        for e in entries:
            tree.append(e.leaf_hash)
        note = sign_checkpoint(Checkpoint(ORIGIN, tree.size, tree.root()),
                               Ed25519Signer.from_private_key(ORIGIN, LOG_KEY))
        await self.storage.commit_batch([(e.index, e.signed.id, e.leaf_hash, e.encoded)
                                         for e in entries],
                                        touched_tiles(tree, old, tree.size), tree.size, note)
        self.at[tree.size] = snapshot_bytes(state)
        return tree.size

    async def grants(self, n: int, first: int) -> int:
        return await self.batch(sign_batch(
            [grant(subject=(first + i).to_bytes(32, "big"), consented_at=self.t,
                   valid_until=self.t + 10**9) for i in range(n)], CONTROLLER))

    @classmethod
    async def open(cls, path: Path) -> Log:
        log = cls(await Storage.open(path))
        await log.batch([sign_event(Genesis(origin=ORIGIN, operator_key=public_bytes(OPERATOR),
                                            created_at=log.t, max_skew_ms=60_000), OPERATOR),
                         sign_event(ControllerRegister(
                             controller="shop.example", name="Shop", contact="dpo@shop.example",
                             key=public_bytes(CONTROLLER), registered_at=log.t), OPERATOR)])
        return log


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[Log]:
    log = await Log.open(tmp_path / "ledger.sqlite")
    yield log
    await log.storage.close()


async def test_the_state_at_the_size_asked_for_while_the_log_grows_on(log: Log) -> None:
    for b in range(4):
        size = await log.grants(30, first=100 * b)
    await log.grants(30, first=900)  # past the size built: not in the snapshot
    report = await build(log.storage.path, size)
    assert report == {"size": size, "from": 0, "replayed": size, "refused": [],
                      "bytes": len(log.at[size])}
    assert await log.storage.snapshot_sizes() == [size]
    assert await log.storage.snapshot(size) == log.at[size]

    # The next one starts from it, and only the newest two are kept.
    later = await log.grants(10, first=2000)
    assert (await build(log.storage.path, later))["from"] == size
    newest = await log.grants(10, first=3000)
    assert (await build(log.storage.path, newest))["replayed"] == newest - later
    assert await log.storage.snapshot_sizes() == [newest, later]
    assert await log.storage.snapshot(newest) == log.at[newest]


async def test_a_snapshot_that_disagrees_with_the_log_is_passed_over(
        log: Log, tmp_path: Path) -> None:
    first = await log.grants(20, first=0)
    second = await log.grants(20, first=100)
    # The state at `first`, filed as the state at `second`: it loads, but holds less.
    await log.storage.store_snapshot(second, log.at[first], keep=3)
    third = await log.grants(20, first=200)
    report = await build(log.storage.path, third)
    assert report["from"] == 0 and report["refused"] == [f"{second}: it holds {first} "
                                                         "entries"]
    assert await log.storage.snapshot(third) == log.at[third]
    # The state of another log of the same size: the next entry's link to it breaks.
    other = await Log.open(tmp_path / "other.sqlite")
    for b in range(3):
        assert await other.grants(20, first=5_000 + 100 * b) == (first, second, third)[b]
    await other.storage.close()
    await log.storage.store_snapshot(third, other.at[third], keep=3)
    fourth = await log.grants(5, first=300)
    report = await build(log.storage.path, fourth)
    assert report["refused"][0].startswith(f"{third}: entry {third} does not replay")
    assert await log.storage.snapshot(fourth) == log.at[fourth]


async def test_an_entry_altered_on_disk_is_caught_by_the_next_link(log: Log) -> None:
    """Entries are read back without checking their form (the node checked them before
    writing them): the hash chain is what vouches for the bytes."""
    await log.grants(10, first=0)
    size = await log.grants(10, first=100)
    index, data = await _row_with(log, (104).to_bytes(32, "big"))
    await _rewrite(log, index, data.replace((104).to_bytes(32, "big"), (999).to_bytes(32, "big")))
    with pytest.raises(BuildError, match=f"entry {index + 1} does not replay: entry "
                                         f"{index + 1} does not link to entry {index}"):
        await build(log.storage.path, size)
    await _rewrite(log, index, b"\x93\x01\x02\x03")
    with pytest.raises(BuildError, match=f"entry {index} does not replay: not an entry "
                                         "this log wrote"):
        await build(log.storage.path, size)
    assert await log.storage.snapshot_sizes() == []


async def _row_with(log: Log, part: bytes) -> tuple[int, bytes]:
    rows = await log.storage.iter_entries(0, chunk=log.tree.size)
    return next((r.index, r.data) for r in rows if part in r.data)


async def _rewrite(log: Log, index: int, data: bytes) -> None:
    def rewrite() -> None:
        db = sqlite3.connect(log.storage.path)
        with db:
            db.execute("UPDATE entries SET data = ? WHERE idx = ?", (data, index))
        db.close()
    await asyncio.to_thread(rewrite)


async def test_sizes_that_cannot_be_built_are_refused(log: Log) -> None:
    size = await log.grants(10, first=0)
    with pytest.raises(BuildError, match=f"entry {size} is not on disk"):
        await build(log.storage.path, size + 11)
    with pytest.raises(BuildError, match="not the end of a batch"):
        await build(log.storage.path, size - 3)
    with pytest.raises(BuildError, match="a snapshot of 0 entries"):
        await build(log.storage.path, 0)
    assert await log.storage.snapshot_sizes() == []


def builder(*args: str) -> tuple[int, list[str]]:
    done = subprocess.run([sys.executable, "-m", "node.snapshot_builder", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    return done.returncode, (done.stdout + done.stderr).splitlines()


async def test_the_process_reports_in_one_json_line(log: Log, tmp_path: Path) -> None:
    size = await log.grants(25, first=0)
    code, lines = await asyncio.to_thread(builder, str(log.storage.path), str(size))
    assert code == 0 and len(lines) == 1
    assert json.loads(lines[0])["size"] == size
    code, lines = await asyncio.to_thread(builder, str(tmp_path / "nowhere.sqlite"), "5")
    assert code == 1 and len(lines) == 1
    assert "no such database" in json.loads(lines[0])["error"]


async def test_a_build_whose_node_is_gone_stops_and_stores_nothing(
        log: Log, tmp_path: Path) -> None:
    size = await log.grants(25, first=0)
    # A stand-in for the node starts the build and dies at once, as under SIGKILL.
    report = tmp_path / "report.txt"
    node = (f"import os, subprocess, sys; subprocess.Popen([sys.executable, '-m', "
            f"'node.snapshot_builder', {str(log.storage.path)!r}, '{size}', "
            f"'--parent', str(os.getpid())], stdout=open({str(report)!r}, 'w')); os._exit(0)")
    subprocess.run([sys.executable, "-c", node], cwd=ROOT, check=True, timeout=30)
    deadline = time.monotonic() + 30
    while not report.read_text():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)  # polling the orphan's report file with a deadline
    assert "is gone" in json.loads(report.read_text())["error"]
    assert await log.storage.snapshot_sizes() == []


async def test_a_node_starts_one_build_at_a_time_and_builds_what_fell_due_meanwhile(
        log: Log) -> None:
    snapshots = Snapshotter(log.storage, every=50, nice=0)
    first = await log.grants(60, first=0)
    await snapshots.after_commit(first)
    second = await log.grants(60, first=100)
    await snapshots.after_commit(second)  # due, but the first build is running
    await snapshots.finished()
    assert await log.storage.snapshot_sizes() == [second, first]
    assert await log.storage.snapshot(second) == log.at[second]
    await snapshots.after_commit(second + 10)  # not due: no build
    await snapshots.finished()
    assert await log.storage.snapshot_sizes() == [second, first]
    await snapshots.close()


def builders_running() -> list[int]:
    return children_of(os.getpid(), b"node.snapshot_builder")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
async def test_closing_stops_a_build_in_progress(log: Log) -> None:
    snapshots = Snapshotter(log.storage, every=50, nice=0)
    size = await log.grants(60, first=0)
    await snapshots.after_commit(size)
    deadline = time.monotonic() + 30
    while not builders_running():  # the build has started: the node stops now
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)  # polling /proc with a deadline
    await snapshots.close()
    assert builders_running() == []
    await snapshots.finished()
    assert await log.storage.snapshot_sizes() == []
