"""Durable storage on SQLite (through aiosqlite): entries, tiles, checkpoints, snapshots.

One transaction per sequenced batch holds the batch's entries, every tile it touched
and the checkpoint that covers it; WAL with synchronous=FULL makes COMMIT wait for
fsync, so nothing is acknowledged before it is on disk and a crash leaves either the
whole batch or none of it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import aiosqlite

SCHEMA_VERSION = 1

log = logging.getLogger("consent_ledger.storage")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    idx INTEGER PRIMARY KEY,
    event_id BLOB NOT NULL,  -- no index: lookups use the ledger's memory (node/leaf_index.py)
    leaf BLOB NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS tiles (
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hashes BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (size INTEGER PRIMARY KEY, note BLOB NOT NULL);
"""
# State snapshots live in a database of their own beside the ledger's (`snapshot_path`):
# storing one is tens of megabytes, which in the ledger's database held its only writer
# for a second or two, and every commit waited behind it. They are caches, checked
# against the log before use, so a separate file risks nothing. A snapshot is written in
# parts, each synced on its own with a pause after it: one 35 MB sync kept the disk busy
# for half a second at a time, and the ledger's commits waited for their own syncs
# behind it. A snapshot exists once its row in `snapshots` does.
_SNAPSHOT_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (size INTEGER PRIMARY KEY, parts INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS snapshot_parts (
    size INTEGER NOT NULL,
    part INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (size, part)
) WITHOUT ROWID;
"""
SNAPSHOT_PART_BYTES = 1 << 20
_SNAPSHOT_PART_PAUSE = 0.01  # seconds after each part: the ledger's commits sync between


class StorageError(Exception):
    """The database cannot be used: unreadable, torn, or inconsistent with itself."""


@dataclass(frozen=True)
class StoredEntry:
    index: int
    leaf: bytes
    data: bytes


@dataclass(frozen=True)
class TileRow:
    level: int
    index: int
    hashes: bytes


class Storage:
    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self._path = path
        self._checkpointer: aiosqlite.Connection | None = None
        self._snapshots: aiosqlite.Connection | None = None
        # One connection, several tasks (a cluster member persists Raft entries while it
        # publishes tiles): writes take turns, or one's BEGIN would land inside another's.
        self._writing = asyncio.Lock()

    async def write(self, statements: Callable[[sqlite3.Connection], object]) -> None:
        """Run `statements` in BEGIN IMMEDIATE … COMMIT (synced), rolled back on any error.

        The whole transaction is one call on aiosqlite's connection thread (through the
        `_execute` its own methods use): statement by statement, every step was a trip
        there and back, each waiting for the busy event loop, so a four-statement write
        under load took 10-30 ms instead of 3."""
        async with self._writing:  # one connection, several writers: they take turns
            await _transaction(self._db, statements)

    @classmethod
    async def open(cls, path: Path) -> Self:
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            # WAL checkpoints run from another connection (checkpoint_wal), so that copying
            # pages back into the database never stalls a commit that clients wait on.
            await db.execute("PRAGMA wal_autocheckpoint=0")
            result = await (await db.execute("PRAGMA quick_check")).fetchone()
            if result is None or result[0] != "ok":
                raise StorageError(f"{path}: SQLite integrity check failed: {result}")
            await db.executescript(_SCHEMA)
            # Snapshots stored here before they had a file of their own: a restart
            # after the upgrade replays the whole log once, then takes new ones.
            await db.execute("DROP TABLE IF EXISTS snapshots")
            storage = cls(db, path)
            version = await storage.get_meta("schema_version")
            if version is None:
                await storage.set_meta("schema_version", str(SCHEMA_VERSION).encode())
            elif version != str(SCHEMA_VERSION).encode():
                raise StorageError(
                    f"{path}: schema version {version!r}, expected {SCHEMA_VERSION}")
            return storage
        except BaseException as exc:
            await db.close()  # its worker thread would otherwise keep the process alive
            if isinstance(exc, sqlite3.DatabaseError):
                raise StorageError(f"{path}: not a usable database ({exc})") from None
            raise

    @classmethod
    async def open_reader(cls, path: Path) -> Self:
        """Another process's view of a node's database: its entries read-only, and its
        snapshot database to write (node/snapshot_builder.py, that database's writer)."""
        if not path.exists():
            raise StorageError(f"{path}: no such database")
        db = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        return cls(db, path)

    @property
    def path(self) -> Path:
        return self._path

    async def close(self) -> None:
        for other in (self._checkpointer, self._snapshots):
            if other is not None:
                await other.close()
        await self._db.close()

    async def checkpoint_wal(self) -> None:
        """Copy committed WAL pages into the database without blocking the writer."""
        if self._checkpointer is None:
            self._checkpointer = await aiosqlite.connect(self._path, isolation_level=None)
        await self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    async def get_meta(self, key: str) -> bytes | None:
        cursor = await self._db.execute("SELECT value FROM meta WHERE key=?", (key,))
        row = await cursor.fetchone()
        return None if row is None else bytes(row[0])

    async def set_meta(self, key: str, value: bytes) -> None:
        await self.write(lambda db: db.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value)))

    async def probe_write(self) -> None:
        """One small synced write: whether the disk takes writes again after a failure."""
        await self.set_meta("write_probe", str(time.time_ns()).encode())

    async def commit_batch(
        self,
        entries: Sequence[tuple[int, bytes, bytes, bytes]],
        tiles: Iterable[TileRow],
        checkpoint_size: int,
        checkpoint_note: bytes,
    ) -> None:
        """Store (index, event_id, leaf, data) rows, tiles and checkpoint atomically."""
        tile_rows = [(t.level, t.index, t.hashes) for t in tiles]

        def statements(db: sqlite3.Connection) -> None:
            insert_rows(db, "INSERT INTO entries(idx, event_id, leaf, data)", entries)
            insert_rows(db, "INSERT OR REPLACE INTO tiles(level, idx, hashes)", tile_rows)
            db.execute("INSERT OR REPLACE INTO checkpoints(size, note) VALUES (?, ?)",
                       (checkpoint_size, checkpoint_note))
        await self.write(statements)

    async def size(self) -> int:
        row = await (await self._db.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM entries")
                     ).fetchone()
        return int(row[0]) if row else 0

    async def count(self) -> int:
        row = await (await self._db.execute("SELECT COUNT(*) FROM entries")).fetchone()
        return int(row[0]) if row else 0

    async def iter_entries(self, start: int = 0, chunk: int = 10_000
                           ) -> list[StoredEntry] | None:
        """One chunk of entries from `start`, in index order (None past the end)."""
        rows = await self._db.execute_fetchall(
            "SELECT idx, leaf, data FROM entries WHERE idx >= ? ORDER BY idx LIMIT ?",
            (start, chunk))
        if not rows:
            return None
        return [StoredEntry(int(r[0]), bytes(r[1]), bytes(r[2])) for r in rows]

    async def entry_data(self, start: int, end: int) -> list[bytes]:
        """Entry bytes for indexes [start, end), in order."""
        rows = await self._db.execute_fetchall(
            "SELECT data FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx", (start, end))
        return [bytes(r[0]) for r in rows]

    async def tiles(self, level: int) -> list[TileRow]:
        rows = await self._db.execute_fetchall(
            "SELECT level, idx, hashes FROM tiles WHERE level=? ORDER BY idx", (level,))
        return [TileRow(int(r[0]), int(r[1]), bytes(r[2])) for r in rows]

    async def latest_checkpoint(self) -> tuple[int, bytes] | None:
        row = await (await self._db.execute(
            "SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1")).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    async def has_table(self, name: str) -> bool:
        """Whether the database holds this table (a cluster member's holds raft_log)."""
        row = await (await self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,))).fetchone()
        return row is not None

    # ---------------------------------------------------------------- state snapshots

    @property
    def snapshot_path(self) -> Path:
        return self._path.with_suffix(".snapshots.sqlite")

    async def _snapshot_db(self) -> aiosqlite.Connection:
        if self._snapshots is None:
            try:
                self._snapshots = await self._open_snapshot_db()
            except sqlite3.DatabaseError as exc:
                await self.set_snapshots_aside(exc)
                self._snapshots = await self._open_snapshot_db()
        return self._snapshots

    async def _open_snapshot_db(self) -> aiosqlite.Connection:
        db = await aiosqlite.connect(self.snapshot_path, isolation_level=None)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            await db.executescript(_SNAPSHOT_SCHEMA)
        except BaseException:
            await db.close()
            raise
        return db

    async def set_snapshots_aside(self, error: BaseException) -> None:
        """The snapshot database is unusable (torn, not a database): it is a cache, so it
        is renamed `.unusable` for a look later, and snapshots start again in a new one;
        recovery replays the log instead. Refusing to start would lose a node to it."""
        if self._snapshots is not None:
            await self._snapshots.close()
            self._snapshots = None
        aside = self.snapshot_path.with_name(self.snapshot_path.name + ".unusable")
        self.snapshot_path.replace(aside)
        for suffix in ("-wal", "-shm"):
            self.snapshot_path.with_name(self.snapshot_path.name + suffix).unlink(
                missing_ok=True)
        log.warning("the state snapshot database is unusable: set aside, snapshots start "
                    "again", extra={"path": str(aside), "error": str(error)})

    async def store_snapshot(self, size: int, data: bytes, *, keep: int) -> None:
        """Store the state snapshot at `size`; only the `keep` largest sizes stay."""
        db = await self._snapshot_db()
        starts = range(0, max(len(data), 1), SNAPSHOT_PART_BYTES)
        for part, start in enumerate(starts):
            await _transaction(db, functools.partial(
                _store_part, size, part, data[start:start + SNAPSHOT_PART_BYTES]))
            await asyncio.sleep(_SNAPSHOT_PART_PAUSE)  # pacing the disk, not synchronising

        def complete(c: sqlite3.Connection) -> None:
            c.execute("INSERT OR REPLACE INTO snapshots(size, parts) VALUES (?, ?)",
                      (size, len(starts)))
            c.execute("DELETE FROM snapshots WHERE size NOT IN "
                      "(SELECT size FROM snapshots ORDER BY size DESC LIMIT ?)", (keep,))
            # Dropped snapshots, and parts a crash left without their row.
            c.execute("DELETE FROM snapshot_parts WHERE size NOT IN "
                      "(SELECT size FROM snapshots) OR part >= "
                      "(SELECT parts FROM snapshots WHERE snapshots.size = snapshot_parts.size)")
        await _transaction(db, complete)

    async def snapshot_sizes(self) -> list[int]:
        """The sizes snapshots are stored at, largest first."""
        db = await self._snapshot_db()
        rows = await db.execute_fetchall("SELECT size FROM snapshots ORDER BY size DESC")
        return [int(r[0]) for r in rows]

    async def snapshot(self, size: int) -> bytes | None:
        """The snapshot's bytes (a part missing or torn shows in its digest)."""
        db = await self._snapshot_db()
        if not await db.execute_fetchall("SELECT 1 FROM snapshots WHERE size=?", (size,)):
            return None
        rows = await db.execute_fetchall(
            "SELECT data FROM snapshot_parts WHERE size=? ORDER BY part", (size,))
        return b"".join(bytes(r[0]) for r in rows)


ROWS_PER_STATEMENT = 256


def insert_rows(db: sqlite3.Connection, insert: str, rows: Sequence[Sequence[object]]) -> None:
    """`insert` ("INSERT INTO t(a, b)") for every row, many rows to a statement.

    executemany runs a statement per row, and each run gives the GIL up and must take it
    back from the event loop: with the loop busy, every row waited up to a switch
    interval (5 ms), and a commit of 4,000 entries could take seconds instead of a
    fraction of one. One statement of ROWS_PER_STATEMENT rows is one run.
    """
    if not rows:
        return
    one = "(" + ", ".join("?" * len(rows[0])) + ")"
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[start:start + ROWS_PER_STATEMENT]
        db.execute(f"{insert} VALUES {', '.join([one] * len(chunk))}",
                   [value for row in chunk for value in row])


def _store_part(size: int, part: int, chunk: bytes, db: sqlite3.Connection) -> None:
    db.execute("INSERT OR REPLACE INTO snapshot_parts(size, part, data) VALUES (?, ?, ?)",
               (size, part, chunk))


async def _transaction(db: aiosqlite.Connection,
                       statements: Callable[[sqlite3.Connection], object]) -> None:
    """BEGIN IMMEDIATE, `statements`, COMMIT, as one call on the connection's thread."""
    def transaction() -> None:
        conn = db._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            statements(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # a failed COMMIT too: the next BEGIN must work
                conn.execute("ROLLBACK")
            raise

    await db._execute(transaction)
