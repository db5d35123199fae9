"""Start-up integrity check: rebuild state and tree from disk, and refuse a bad database.

The state comes from the newest state snapshot that agrees with the log (its size, the
leaf hash of its last entry, its status map root against the status root that entry
is), then every later entry has its stored leaf hash recomputed from its bytes, its
chain link and admission rules replayed. Without a usable snapshot every entry is
replayed. Only the entries' form is taken as written: every entry was decoded strictly
before this node (or mirror) stored it, and the bytes are the ones the leaf hashes, the
tiles and the signed checkpoint commit to (ledger/trusted_decode.py); fsck checks the
form too. Entries before the snapshot have their stored leaf hashes recomputed from
their bytes too; the tree is rebuilt from the leaves and compared with every stored
tile; the latest checkpoint must carry the log's valid signature and commit to exactly
the rebuilt tree. Anything else is a torn or tampered database, and the node reports it
instead of serving it. `consent-ledger fsck` (node/fsck.py) replays every entry and
compares the result with each stored snapshot.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sqlite3
import time
from collections.abc import Callable

from ledger import merkle
from ledger.checkpoint import Checkpoint
from ledger.entry import LogEntry
from ledger.errors import LedgerError
from ledger.events import StatusRoot
from ledger.state import LedgerState
from ledger.state_snapshot import load_snapshot
from ledger.tiles import tile_width
from ledger.tree import MerkleTree
from ledger.trusted_decode import decode_trusted_entry
from node.storage import Storage, StorageError

log = logging.getLogger("consent_ledger.recovery")

_CHUNK = 10_000


class SnapshotRefused(Exception):
    """A stored snapshot that cannot be used; the log itself may still be fine."""


async def recover(
    storage: Storage,
    open_checkpoint: Callable[[bytes], Checkpoint],
    *,
    uncommitted_tail: bool = False,
    use_snapshots: bool = True,
) -> tuple[LedgerState, MerkleTree, bytes | None]:
    """State, tree and latest checkpoint from disk, every entry checked.

    A cluster member's log may end with entries it stored but that are not yet known to
    be committed (`uncommitted_tail`): then the checkpoint covers a prefix of the entries.
    """
    started = time.perf_counter()
    restored = await restore_snapshot(storage) if use_snapshots else None
    state, tree = restored or (LedgerState(), MerkleTree())
    from_size = state.size
    await replay_entries(storage, state, tree)
    await check_tiles(storage, tree)
    note = await check_checkpoint(storage, tree, open_checkpoint,
                                  uncommitted_tail=uncommitted_tail)
    log.info("recovered the ledger", extra={
        "size": tree.size, "snapshot": from_size, "replayed": tree.size - from_size,
        "seconds": round(time.perf_counter() - started, 3)})
    return state, tree, note


async def restore_snapshot(storage: Storage) -> tuple[LedgerState, MerkleTree] | None:
    """State and tree at the newest stored snapshot that agrees with the log, if any."""
    on_disk = await storage.size()
    try:
        sizes = await storage.snapshot_sizes()
    except sqlite3.DatabaseError as exc:  # opened, but torn inside: a cache all the same
        await storage.set_snapshots_aside(exc)
        return None
    for size in sizes:
        if size > on_disk:
            continue  # a snapshot of entries no longer on disk (cannot happen: committed)
        try:
            return await _restore(storage, size)
        except SnapshotRefused as exc:
            log.warning("state snapshot refused; trying an older one or a full replay",
                        extra={"snapshot": size, "reason": str(exc)})
    return None


async def _restore(storage: Storage, size: int) -> tuple[LedgerState, MerkleTree]:
    try:
        data = await storage.snapshot(size)
    except sqlite3.DatabaseError as exc:
        raise SnapshotRefused(f"its database failed: {exc}") from None
    if data is None:
        raise SnapshotRefused("it disappeared")
    try:
        # In a thread: a cluster member reloading keeps answering heartbeats meanwhile.
        state = await asyncio.to_thread(_load_uncollected, data)
    except LedgerError as exc:
        raise SnapshotRefused(str(exc)) from None
    except Exception as exc:  # a loader bug must cost a full replay, not the node
        log.exception("state snapshot loader failed")
        raise SnapshotRefused(f"{type(exc).__name__}: {exc}") from None
    if state.size != size:
        raise SnapshotRefused(f"stored as size {size}, it holds {state.size} entries")
    if size == 0:
        raise SnapshotRefused("a snapshot of nothing")
    last = await storage.iter_entries(size - 1, chunk=1)
    if not last or last[0].index != size - 1:
        raise SnapshotRefused(f"entry {size - 1} is not on disk")
    if last[0].leaf != state.prev:
        raise SnapshotRefused(f"its last entry's leaf hash is not entry {size - 1}'s")
    try:
        entry = LogEntry.decode(last[0].data)
    except LedgerError as exc:
        raise StorageError(f"entry {size - 1} is invalid: {exc}") from None
    body = entry.signed.body
    if not isinstance(body, StatusRoot) or body.size != size - 1:
        raise SnapshotRefused(f"entry {size - 1} is not the status root a batch ends with")
    if body.map_root != state.map_root():
        raise SnapshotRefused(f"its status map root is not the one entry {size - 1} records")
    tree = MerkleTree()
    start = 0
    while start < size and (chunk := await storage.iter_entries(
            start, chunk=min(_CHUNK, size - start))) is not None:
        leaves: list[bytes] = []
        for row in chunk:
            if row.index != start + len(leaves):
                raise StorageError(f"entry {start + len(leaves)} is missing "
                                   f"(found {row.index} next)")
            if merkle.leaf_hash(row.data) != row.leaf:
                raise StorageError(f"entry {row.index}: stored leaf hash does not match "
                                   "its bytes")
            leaves.append(row.leaf)
        tree.extend(leaves)
        start += len(leaves)
    if tree.size != size:
        raise StorageError(f"entry {tree.size} is missing (the snapshot covers {size})")
    return state, tree


def _load_uncollected(data: bytes) -> LedgerState:
    """load_snapshot without the cyclic collector: it would scan the millions of new,
    acyclic objects again and again (about an eighth of the load time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return load_snapshot(data)
    finally:
        if enabled:
            gc.enable()


async def replay_entries(storage: Storage, state: LedgerState, tree: MerkleTree,
                         until: int | None = None, *, every_root: bool = False,
                         recheck_form: bool = False) -> None:
    """Replay the stored entries from `state.size` (to `until`, or to the end).

    Every rule is checked on every entry, but of the status roots only the last, unless
    `every_root` (fsck): this node's sequencer checked them all before writing them, and
    one check at the end costs a fraction of one per batch (LedgerState.defer_status_roots).
    Likewise each entry's canonical form and fields, which were checked before it was
    stored, are checked again only with `recheck_form` (fsck): decoding them strictly was
    half of a restart's replay.
    """
    if not every_root:
        state.defer_status_roots()
    decode = LogEntry.decode if recheck_form else decode_trusted_entry
    while until is None or state.size < until:
        chunk = _CHUNK if until is None else min(_CHUNK, until - state.size)
        rows = await storage.iter_entries(state.size, chunk=chunk)
        if rows is None:
            break
        for row in rows:
            if row.index != state.size:
                raise StorageError(f"entry {state.size} is missing (found {row.index} next)")
            try:
                entry = decode(row.data)
            except LedgerError as exc:
                raise StorageError(f"entry {row.index} is invalid: {exc}") from None
            # Hashed once: the entry keeps its leaf hash, which its replay links with.
            if entry.leaf_hash != row.leaf:
                raise StorageError(f"entry {row.index}: stored leaf hash does not match its bytes")
            try:
                if entry.index != row.index:
                    raise StorageError(f"entry {row.index} says it is entry {entry.index}")
                state.replay(entry, verify_signatures=False)
            except LedgerError as exc:
                raise StorageError(f"entry {row.index} is invalid: {exc}") from None
            tree.append(row.leaf)
    if until is not None and state.size != until:
        raise StorageError(f"entry {state.size} is missing (expected {until} entries)")
    try:
        state.settle_status_roots()
    except LedgerError as exc:
        raise StorageError(f"the entries are invalid: {exc}") from None


async def check_tiles(storage: Storage, tree: MerkleTree) -> int:
    """Every stored tile must hold the tree's hashes; returns how many were compared."""
    compared = 0
    for level in range(0, 8):
        for tile in await storage.tiles(level):
            width = len(tile.hashes) // merkle.HASH_SIZE
            if len(tile.hashes) % merkle.HASH_SIZE \
                    or not 0 < width <= tile_width(level, tile.index, tree.size):
                raise StorageError(f"tile {level}/{tile.index} has a wrong width for size "
                                   f"{tree.size}")
            if tile.hashes != tree.tile_hashes(level, tile.index, width):
                raise StorageError(f"tile {level}/{tile.index} does not match the entries")
            compared += 1
    return compared


async def check_checkpoint(storage: Storage, tree: MerkleTree,
                           open_checkpoint: Callable[[bytes], Checkpoint], *,
                           uncommitted_tail: bool) -> bytes | None:
    """The latest checkpoint, which must verify and commit to the tree."""
    latest = await storage.latest_checkpoint()
    if latest is None:
        # A member stores its first checkpoint with the tiles after it (node/replica.py),
        # so until then every entry it holds is a tail its Raft log decides about.
        if tree.size and not uncommitted_tail:
            raise StorageError(f"{tree.size} entries but no checkpoint")
        return None
    size, note = latest
    try:
        checkpoint = open_checkpoint(note)
    except LedgerError as exc:
        raise StorageError(f"the latest checkpoint does not verify: {exc}") from None
    if checkpoint.size != size or (size != tree.size and not uncommitted_tail) \
            or size > tree.size:
        raise StorageError(f"the latest checkpoint is for size {checkpoint.size}, "
                           f"the entries make {tree.size}")
    if checkpoint.root != tree.root(size):
        raise StorageError("the latest checkpoint's root does not match the entries")
    return note
