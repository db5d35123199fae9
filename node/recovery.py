"""Start-up integrity check: rebuild state and tree from disk, and refuse a bad database.

Every entry is decoded strictly, its stored leaf hash recomputed, its chain link and
admission rules replayed; the tree is rebuilt from the leaves and compared with every
stored tile; the latest checkpoint must carry the log's valid signature and commit to
exactly the rebuilt tree. Anything else is a torn or tampered database, and the node
reports it instead of serving it.
"""

from __future__ import annotations

from collections.abc import Callable

from ledger import merkle
from ledger.checkpoint import Checkpoint
from ledger.entry import LogEntry
from ledger.errors import LedgerError
from ledger.state import LedgerState
from ledger.tiles import tile_width
from ledger.tree import MerkleTree
from node.storage import Storage, StorageError


async def recover(
    storage: Storage,
    open_checkpoint: Callable[[bytes], Checkpoint],
    *,
    uncommitted_tail: bool = False,
) -> tuple[LedgerState, MerkleTree, bytes | None]:
    """State, tree and latest checkpoint from disk, every entry checked.

    A cluster member's log may end with entries it stored but that are not yet known to
    be committed (`uncommitted_tail`): then the checkpoint covers a prefix of the entries.
    """
    state = LedgerState()
    tree = MerkleTree()
    start = 0
    while (chunk := await storage.iter_entries(start)) is not None:
        for row in chunk:
            if row.index != state.size:
                raise StorageError(f"entry {state.size} is missing (found {row.index} next)")
            if merkle.leaf_hash(row.data) != row.leaf:
                raise StorageError(f"entry {row.index}: stored leaf hash does not match its bytes")
            try:
                entry = LogEntry.decode(row.data)
                if entry.index != row.index:
                    raise StorageError(f"entry {row.index} says it is entry {entry.index}")
                state.replay(entry, verify_signatures=False)
            except LedgerError as exc:
                raise StorageError(f"entry {row.index} is invalid: {exc}") from None
            tree.append(row.leaf)
        start = chunk[-1].index + 1

    for level in range(0, 8):
        for tile in await storage.tiles(level):
            width = len(tile.hashes) // merkle.HASH_SIZE
            if len(tile.hashes) % merkle.HASH_SIZE \
                    or not 0 < width <= tile_width(level, tile.index, tree.size):
                raise StorageError(f"tile {level}/{tile.index} has a wrong width for size "
                                   f"{tree.size}")
            if tile.hashes != tree.tile_hashes(level, tile.index, width):
                raise StorageError(f"tile {level}/{tile.index} does not match the entries")

    latest = await storage.latest_checkpoint()
    if latest is None:
        if tree.size:
            raise StorageError(f"{tree.size} entries but no checkpoint")
        return state, tree, None
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
    return state, tree, note
