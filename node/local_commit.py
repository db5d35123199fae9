"""Durability on a single node: one SQLite transaction per batch, checkpoint included."""

from __future__ import annotations

from collections.abc import Callable

from ledger.checkpoint import Checkpoint
from ledger.tree import MerkleTree
from node.sequencer import CommitBatch
from node.snapshots import Snapshotter
from node.storage import Storage, TileRow


def touched_tiles(tree: MerkleTree, old_size: int, new_size: int) -> list[TileRow]:
    """The hash tiles that the entries [old_size, new_size) created or widened."""
    return [TileRow(t.level, t.index, tree.tile_hashes(t.level, t.index, t.width))
            for t in tree.tiles_touched(old_size, new_size)
            if isinstance(t.level, int)]  # always: tiles_touched lists hash tiles


def local_commit(storage: Storage, tree_of: Callable[[], MerkleTree], origin: str,
                 sign: Callable[[Checkpoint], bytes], *,
                 snapshots: Snapshotter | None = None) -> CommitBatch:
    """Sign the new checkpoint and store it with the batch's entries and tiles, atomically.

    `tree_of` gives the tree being sequenced onto: after a storage failure the node
    reloads it from disk (node/storage_failures.py).

    Then, while the sequencer still awaits this commit (its state holds exactly the
    committed entries), let `snapshots` capture the state if a snapshot is due."""

    async def commit(rows: list[tuple[int, bytes, bytes, bytes]], old_size: int,
                     new_size: int) -> bytes:
        tree = tree_of()
        note = sign(Checkpoint(origin, new_size, tree.root(new_size)))
        await storage.commit_batch(rows, touched_tiles(tree, old_size, new_size),
                                   new_size, note)
        if snapshots is not None:
            await snapshots.after_commit(new_size)
        return note

    return commit
