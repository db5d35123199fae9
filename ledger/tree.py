"""MerkleTree: every perfect-subtree hash of an append-only log, kept in memory.

Level L is one bytearray of concatenated 32-byte hashes: node (L, i) sits at bytes
[32·i, 32·i + 32). A bytearray per level costs 32 bytes a hash where a list of bytes
objects costs about 73, and appending to it is amortised O(1). The whole tree takes
about 64 bytes a leaf.

From these stored hashes the tree answers for ANY size up to its own: roots, inclusion
and consistency proofs (via ledger.merkle), and tlog-tiles hash tiles.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from ledger import merkle
from ledger.errors import InclusionProofError
from ledger.merkle import HASH_SIZE, NodeId
from ledger.tiles import TILE_HEIGHT, TILE_WIDTH, TileId, tiles_for_size, tiles_touched

_sha256 = hashlib.sha256
_NODE = b"\x01"
_MAX_EDGES = 4096


class MerkleTree:
    """An incremental RFC 6962 tree over leaf hashes. Not thread-safe."""

    __slots__ = ("_edges", "_levels", "_size")

    def __init__(self) -> None:
        self._levels: list[bytearray] = [bytearray()]
        self._size = 0
        self._edges: dict[tuple[int, int], bytes] = {}

    @classmethod
    def from_leaf_hashes(cls, leaf_hashes: Iterable[bytes]) -> MerkleTree:
        """A tree over the given leaf hashes (e.g. read back from level-0 tiles)."""
        tree = cls()
        tree.extend(leaf_hashes)
        return tree

    @property
    def size(self) -> int:
        return self._size

    def prefix(self, size: int) -> MerkleTree:
        """A new tree of this one's first `size` leaves (a cluster member's ledger going
        back to what its log holds). A new object, so that whatever indexed this one
        (node/leaf_index.py) sees a different tree."""
        self._check_size(size)
        tree = MerkleTree()
        tree._levels = [bytearray(memoryview(row)[:(size >> level) * HASH_SIZE])
                        for level, row in enumerate(self._levels) if size >> level or not level]
        tree._size = size
        return tree

    def append(self, leaf_hash: bytes) -> int:
        """Add one leaf hash; returns its index. Amortised one node hash per leaf."""
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError(f"a leaf hash is {HASH_SIZE} bytes, not {len(leaf_hash)}")
        levels = self._levels
        index = self._size
        row = levels[0]
        row += leaf_hash
        self._size = index + 1
        n, level, h = index, 0, leaf_hash
        # Each trailing one bit of the index completes a pair, hence a parent node.
        while n & 1:
            h = _sha256(_NODE + row[-64:-32] + h).digest()
            level += 1
            if level == len(levels):
                levels.append(bytearray())
            row = levels[level]
            row += h
            n >>= 1
        return index

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Add many leaf hashes, then hash the new parents level by level."""
        row = self._levels[0]
        before = len(row)
        for h in leaf_hashes:
            if len(h) != HASH_SIZE:
                del row[before:]
                raise ValueError(f"a leaf hash is {HASH_SIZE} bytes, not {len(h)}")
            row += h
        self._size = len(row) // HASH_SIZE
        self._build_parents()

    def _build_parents(self) -> None:
        levels, sha, node = self._levels, _sha256, _NODE
        level = 0
        while True:
            row = levels[level]
            want = len(row) // (2 * HASH_SIZE)
            if level + 1 == len(levels):
                if want == 0:
                    return
                levels.append(bytearray())
            parent = levels[level + 1]
            have = len(parent) // HASH_SIZE
            if have == want:
                return
            view = memoryview(row)
            parent += b"".join([sha(node + view[64 * i:64 * i + 64]).digest()
                                for i in range(have, want)])
            level += 1

    def hash_at(self, level: int, index: int) -> bytes:
        """The hash of the perfect subtree (level, index); IndexError if it is incomplete."""
        if not 0 <= level < len(self._levels) or not 0 <= index < self._count(level):
            raise IndexError(f"no complete node ({level}, {index}) in a tree of size {self._size}")
        start = index * HASH_SIZE
        return bytes(self._levels[level][start:start + HASH_SIZE])

    def _count(self, level: int) -> int:
        return len(self._levels[level]) // HASH_SIZE

    def read_hashes(self, ids: Sequence[NodeId]) -> list[bytes]:
        """A merkle.HashReader over this tree."""
        return [self.hash_at(level, index) for level, index in ids]

    def _check_size(self, size: int | None) -> int:
        if size is None:
            return self._size
        if not 0 <= size <= self._size:
            raise IndexError(f"size {size} is beyond the tree's size {self._size}")
        return size

    def root(self, size: int | None = None) -> bytes:
        """The root of the tree's first `size` leaves (default: all of them)."""
        size = self._check_size(size)
        if size == 0:
            return merkle.EMPTY_ROOT
        levels = self._levels
        # The perfect subtrees of [0, size) are one per set bit; fold from the right.
        level = (size & -size).bit_length() - 1
        start = ((size >> level) - 1) * HASH_SIZE
        h = bytes(levels[level][start:start + HASH_SIZE])
        rest = size >> (level + 1)
        while rest:
            level += 1
            if rest & 1:
                start = ((size >> level) - 1) * HASH_SIZE
                h = _sha256(_NODE + levels[level][start:start + HASH_SIZE] + h).digest()
            rest >>= 1
        return h

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """The audit path of leaf `index` in the tree of `size` (default: current)."""
        size = self._check_size(size)
        if not 0 <= index < size:
            raise InclusionProofError(f"no inclusion proof for index {index} "
                                      f"in a tree of size {size}")
        # merkle.prove_inclusion specialised to this storage (about 3x faster; tests
        # hold the two equal). Below level inner - 1 every sibling is complete; at
        # inner - 1 the sibling is the right edge; above, siblings are on the left.
        levels = self._levels
        inner = (index ^ (size - 1)).bit_length()
        proof: list[bytes] = []
        append = proof.append
        sib = index ^ 1
        for row in levels[:max(inner - 1, 0)]:
            start = sib << 5
            append(bytes(row[start:start + HASH_SIZE]))
            sib = (sib >> 1) ^ 1
        if inner:
            level = inner - 1
            sib = (index >> level) ^ 1
            if (sib + 1) << level <= size:
                start = sib << 5
                append(bytes(levels[level][start:start + HASH_SIZE]))
            else:
                append(self._edge_hash(sib << level, size))
        level, n = inner, index >> inner
        while n:
            if n & 1:
                start = (n ^ 1) << 5
                append(bytes(levels[level][start:start + HASH_SIZE]))
            n >>= 1
            level += 1
        return proof

    def _edge_hash(self, begin: int, size: int) -> bytes:
        """The hash of leaves [begin, size) where begin is aligned above size - begin."""
        # Every proof into the left part of a tree of `size` needs the same few edge
        # hashes, and they never change (the tree only grows), so they are memoised.
        key = (begin, size)
        cached = self._edges.get(key)
        if cached is not None:
            return cached
        if len(self._edges) >= _MAX_EDGES:
            self._edges.clear()
        levels = self._levels
        h = b""
        for lv, i in reversed(merkle.range_nodes(begin, size)):
            start = i * HASH_SIZE
            node = levels[lv][start:start + HASH_SIZE]
            h = _sha256(_NODE + node + h).digest() if h else bytes(node)
        self._edges[key] = h
        return h

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """The proof that the tree of size1 is a prefix of the tree of size2 (default: current).

        Empty when size1 == size2 or size1 == 0 (see merkle.verify_consistency).
        """
        size2 = self._check_size(size2)
        return merkle.prove_consistency(size1, size2, self.read_hashes)

    # ------------------------------------------------------------ tlog-tiles

    def leaf_hashes(self, start: int, end: int) -> bytes:
        """The leaf hashes [start, end), concatenated."""
        if not 0 <= start <= end <= self._size:
            raise IndexError(f"leaves [{start}, {end}) are not all in a tree of size "
                             f"{self._size}")
        return bytes(self._levels[0][start * HASH_SIZE:end * HASH_SIZE])

    def tile_hashes(self, level: int, index: int, width: int) -> bytes:
        """The bytes of hash tile (level, index) with its first `width` hashes."""
        row = self._levels[TILE_HEIGHT * level] if TILE_HEIGHT * level < len(self._levels) \
            else bytearray()
        first = index * TILE_WIDTH
        if not 1 <= width <= TILE_WIDTH or first + width > len(row) // HASH_SIZE:
            raise IndexError(f"tile {level}/{index} of width {width} is beyond the tree's "
                             f"size {self._size}")
        return bytes(row[first * HASH_SIZE:(first + width) * HASH_SIZE])

    def tiles_for_size(self, size: int | None = None) -> list[TileId]:
        """Every hash tile of the tree of `size` (default: current)."""
        return tiles_for_size(self._check_size(size))

    def tiles_touched(self, old_size: int, new_size: int | None = None) -> list[TileId]:
        """The hash tiles new or grown since old_size: what a storage layer must write."""
        return tiles_touched(old_size, self._check_size(new_size))
