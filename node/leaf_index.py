"""Finding an entry by its leaf hash, in memory, built only once somebody asks.

The leaf hashes are already in the tree; a SQLite index over them (random 32-byte keys)
dirtied a page of the database for nearly every entry written: with the event-id index
beside it, 12 KB of writes per event where the entries themselves take 2.5 KB. So the
node keeps no such index on disk. The first lookup indexes the tree's leaves (in chunks,
the event loop free in between), later ones only the leaves added since; a reloaded
ledger (a cluster member after a truncation) is a new tree and is indexed afresh.
"""

from __future__ import annotations

import asyncio

from ledger.merkle import HASH_SIZE
from ledger.tree import MerkleTree

_CHUNK = 50_000  # leaves indexed between two turns of the event loop (~10 ms)


class LeafIndex:
    def __init__(self) -> None:
        self._tree: MerkleTree | None = None
        self._index: dict[bytes, int] = {}
        self._indexed = 0  # leaves of self._tree in self._index

    async def find(self, tree: MerkleTree, leaf_hash: bytes) -> int | None:
        """The index of the leaf `leaf_hash` in `tree`, or None (also when the tree was
        replaced by a newer one while this call indexed it: ask again with that one)."""
        if tree is not self._tree:
            self._tree, self._index, self._indexed = tree, {}, 0
        while self._indexed < tree.size:
            start = self._indexed
            end = min(tree.size, start + _CHUNK)
            row = tree.leaf_hashes(start, end)
            self._index.update((row[i:i + HASH_SIZE], n)
                               for n, i in enumerate(range(0, len(row), HASH_SIZE), start))
            self._indexed = end
            if end < tree.size:
                await asyncio.sleep(0)  # a large log is indexed in turns
                if tree is not self._tree:
                    return None
        return self._index.get(leaf_hash)
