"""A cluster member's durable Raft state, beside the ledger's entries in the same database.

A Raft entry is a batch of ledger entries: the `raft_log` row keeps its term and the
range of ledger indexes it holds, and the ledger entries themselves live once, in
`entries`. A Raft entry is durable (and may be acknowledged to the leader) once its row
and its ledger entries are committed in one SQLite transaction; truncating a conflicting
suffix deletes both. Tiles and checkpoints are written only for committed entries, so
they are never truncated.

A compacted Raft log starts with a snapshot (meta `raft_snapshot`): rows up to its
index are gone, the ledger entries they held stay. A member given its leader's snapshot
stages the entries it fetches (node/catch_up.py) in `catch_up_entries`, then swaps them
in with the snapshot in one transaction, so a crash half-way leaves its old log whole.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Sequence

import msgpack

from ledger.raft.messages import Snapshot
from node.storage import Storage, StorageError, insert_rows

_RAFT_SCHEMA = """
CREATE TABLE IF NOT EXISTS raft_log (
    ridx INTEGER PRIMARY KEY,
    term INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    first INTEGER NOT NULL,  -- ledger index range [first, end) of a batch; end = first otherwise
    end INTEGER NOT NULL,
    data BLOB                -- a configuration's bytes; NULL for batches (their entries hold it)
);
CREATE TABLE IF NOT EXISTS catch_up_entries (
    idx INTEGER PRIMARY KEY,
    event_id BLOB NOT NULL,
    leaf BLOB NOT NULL,
    data BLOB NOT NULL
);
"""
_SNAPSHOT_KEY = "raft_snapshot"


@dataclasses.dataclass(frozen=True)
class RaftRow:
    index: int
    term: int
    kind: int
    first: int
    end: int
    data: bytes | None


class ReplicaStorage(Storage):
    async def open_raft(self) -> None:
        await self._db.executescript(_RAFT_SCHEMA)
        await self.write(lambda db: db.execute("DELETE FROM catch_up_entries"))  # a crash's

    async def raft_snapshot(self) -> Snapshot | None:
        raw = await self.get_meta(_SNAPSHOT_KEY)
        if raw is None:
            return None
        try:
            index, term, config, data = msgpack.unpackb(raw)
            return Snapshot(int(index), int(term), bytes(config), bytes(data))
        except (ValueError, TypeError) as exc:
            raise StorageError(f"the Raft snapshot record is unreadable: {exc}") from None

    async def hard_state(self) -> tuple[int, str | None]:
        term = await self.get_meta("raft_term")
        vote = await self.get_meta("raft_vote")
        return (int(term) if term else 0), (vote.decode() if vote else None)

    async def raft_rows(self) -> list[RaftRow]:
        rows = await self._db.execute_fetchall(
            "SELECT ridx, term, kind, first, end, data FROM raft_log ORDER BY ridx")
        out = [RaftRow(int(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4]),
                       None if r[5] is None else bytes(r[5])) for r in rows]
        snapshot = await self.raft_snapshot()
        for n, row in enumerate(out, 1 if snapshot is None else snapshot.index + 1):
            if row.index != n:
                raise StorageError(f"raft entry {n} is missing (found {row.index})")
        return out

    async def persist(
        self,
        *,
        hard_state: tuple[int, str | None] | None,
        truncate_after: int | None,
        rows: Sequence[RaftRow],
        entries: Sequence[tuple[int, bytes, bytes, bytes]],
    ) -> None:
        """One durable step of the Raft log: vote, truncation, new entries, atomically."""
        raft_rows = [(r.index, r.term, r.kind, r.first, r.end, r.data) for r in rows]

        def statements(db: sqlite3.Connection) -> None:
            if hard_state is not None:
                term, vote = hard_state
                db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                           ("raft_term", str(term).encode()))
                if vote is None:
                    db.execute("DELETE FROM meta WHERE key='raft_vote'")
                else:
                    db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                               ("raft_vote", vote.encode()))
            if truncate_after is not None:
                first = db.execute("SELECT MIN(first) FROM raft_log WHERE ridx > ?",
                                   (truncate_after,)).fetchone()
                if first is not None and first[0] is not None:
                    db.execute("DELETE FROM entries WHERE idx >= ?", (int(first[0]),))
                db.execute("DELETE FROM raft_log WHERE ridx > ?", (truncate_after,))
            if raft_rows:
                insert_rows(db, "INSERT INTO raft_log(ridx, term, kind, first, end, data)",
                            raft_rows)
            if entries:
                insert_rows(db, "INSERT INTO entries(idx, event_id, leaf, data)", entries)
        await self.write(statements)

    async def compact_raft(self, snapshot: Snapshot) -> None:
        """Forget the Raft rows up to the snapshot's index (their ledger entries stay)."""
        record = _pack_snapshot(snapshot)

        def statements(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM raft_log WHERE ridx <= ?", (snapshot.index,))
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                       (_SNAPSHOT_KEY, record))
        await self.write(statements)

    async def checkpoint_at_most(self, size: int) -> tuple[int, bytes] | None:
        """The largest stored checkpoint of at most `size` entries, with its note."""
        rows = list(await self._db.execute_fetchall(
            "SELECT size, note FROM checkpoints WHERE size <= ? ORDER BY size DESC LIMIT 1",
            (size,)))
        return (int(rows[0][0]), bytes(rows[0][1])) if rows else None

    async def stage_entries(self, entries: Sequence[tuple[int, bytes, bytes, bytes]]) -> None:
        """Checked entries of a snapshot being installed, kept aside until it is whole."""
        await self.write(lambda db: insert_rows(
            db, "INSERT OR REPLACE INTO catch_up_entries(idx, event_id, leaf, data)", entries))

    async def discard_staged(self) -> None:
        await self.write(lambda db: db.execute("DELETE FROM catch_up_entries"))

    async def install_snapshot(self, snapshot: Snapshot, *, keep: int) -> None:
        """Replace the Raft log by `snapshot`: every Raft row goes, ledger entries from
        `keep` on are replaced by the staged ones; one transaction."""
        record = _pack_snapshot(snapshot)

        def statements(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM raft_log")
            db.execute("DELETE FROM entries WHERE idx >= ?", (keep,))
            db.execute("INSERT INTO entries(idx, event_id, leaf, data) "
                       "SELECT idx, event_id, leaf, data FROM catch_up_entries "
                       "WHERE idx >= ? ORDER BY idx", (keep,))
            db.execute("DELETE FROM catch_up_entries")
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                       (_SNAPSHOT_KEY, record))
        await self.write(statements)

    async def raft_range(self, lo: int, hi: int) -> list[RaftRow]:
        """Raft rows with lo <= index < hi."""
        rows = await self._db.execute_fetchall(
            "SELECT ridx, term, kind, first, end, data FROM raft_log "
            "WHERE ridx >= ? AND ridx < ? ORDER BY ridx", (lo, hi))
        return [RaftRow(int(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4]),
                        None if r[5] is None else bytes(r[5])) for r in rows]

    async def store_published(self, tiles: Sequence[tuple[int, int, bytes]],
                              checkpoint: tuple[int, bytes] | None) -> None:
        """Tiles of newly committed entries and (on the leader) the checkpoint for them."""
        def statements(db: sqlite3.Connection) -> None:
            insert_rows(db, "INSERT OR REPLACE INTO tiles(level, idx, hashes)", tiles)
            if checkpoint is not None:
                db.execute("INSERT OR REPLACE INTO checkpoints(size, note) VALUES (?, ?)",
                           checkpoint)
        await self.write(statements)


def _pack_snapshot(snapshot: Snapshot) -> bytes:
    return msgpack.packb([snapshot.index, snapshot.term, snapshot.config, snapshot.data])
