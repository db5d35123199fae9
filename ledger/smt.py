"""The status map: an in-memory compressed sparse Merkle tree (see ledger.smt_proof).

Keys are SHA-256 outputs, so the map's upper levels are full however it grows: its
first TOP_BITS levels are kept as dense arrays of hashes, one list per depth, indexed by
the key's leading bits, and only what lies below them as linked nodes, one subtree per
bucket of keys sharing their first TOP_BITS bits. An update then finds its bucket by
index instead of walking sixteen nodes, and a batch rehashes the upper levels one depth
at a time over flat lists: about half the cost per key of walking linked nodes.

Every dense slot holds the hash of the keys below it, or None if there are none; a slot
with both halves non-empty is a branching at its depth, one with a single non-empty
half passes that half's hash up unchanged, exactly as the compressed tree has no node
there. The hashes are those of ledger.smt_proof whatever the layout.

Below the dense levels, nodes are small sequences rather than objects, which is what
keeps a million keys fast and within a few hundred megabytes:

    branching  [shift, left, right, hash]   a list: children change as keys arrive
    leaf       (-1, key, value_hash, hash)  a tuple: the cyclic GC stops tracking it

`shift` is 255 - depth, so that a key's bit at the branching is `k >> shift & 1` on
the key as an integer, and -1 (no branching) marks a leaf. `hash` is None only
while set_many has the node pending, between placing a leaf and rehashing. A status,
once recorded, is replaced by the next one, never removed; only a cluster member
undoing what its log did not keep deletes keys (delete_many).
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Iterable
from itertools import pairwise
from typing import Any

from ledger.codec import build_checked
from ledger.smt_proof import (
    EMPTY,
    HASH_SIZE,
    KEY_SIZE,
    LEAF_TAG,
    NODE_PREFIX,
    MapProof,
    MapProofError,
    leaf_hash,
    map_key,
    node_hash,
    verify_map_proof,
)

__all__ = ["EMPTY", "MapProof", "MapProofError", "StatusMap", "leaf_hash", "map_key",
           "node_hash", "verify_map_proof"]

TOP_BITS = 16  # dense levels: 2**17 slots in all, about 1 MiB per map
_BUCKET_SHIFT = 256 - TOP_BITS

_sha256 = hashlib.sha256
# Indexed by shift (255 - depth): the hot loops never compute the depth.
_PREFIX_BY_SHIFT = tuple(reversed(NODE_PREFIX))

Node = list[Any]  # a branching; leaves are tuples, see the module docstring


def _check(key: bytes, value_hash: bytes) -> None:
    if type(key) is not bytes or len(key) != KEY_SIZE:
        raise ValueError(f"a map key must be {KEY_SIZE} bytes")
    if type(value_hash) is not bytes or len(value_hash) != HASH_SIZE:
        raise ValueError(f"a value hash must be {HASH_SIZE} bytes")


class StatusMap:
    """Map from 32-byte keys to 32-byte value hashes, with a root and proofs."""

    __slots__ = ("_len", "_levels", "_subtrees")

    def __init__(self) -> None:
        # _levels[d][i]: the hash over the keys whose first d bits are i, or None.
        self._levels: list[list[bytes | None]] = [[None] * (1 << d)
                                                   for d in range(TOP_BITS + 1)]
        self._subtrees: list[Any] = [None] * (1 << TOP_BITS)  # None, a leaf or a branching
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def root(self) -> bytes:
        top = self._levels[0][0]
        return EMPTY if top is None else top

    def leaves(self) -> list[tuple[Any, ...]]:
        """The leaf tuples (-1, key, value_hash, hash), left to right: in key order."""
        out: list[tuple[Any, ...]] = []
        add = out.append
        stack: list[Any] = []
        pop, push = stack.pop, stack.append
        for subtree in self._subtrees:
            if subtree is None:
                continue
            push(subtree)
            while stack:
                node = pop()
                if node[0] < 0:
                    add(node)
                else:
                    push(node[2])
                    push(node[1])
        return out

    @classmethod
    def from_sorted(cls, keys: list[bytes], value_hashes: list[bytes]) -> StatusMap:
        """A map of keys in strictly increasing order, built in one left-to-right pass.

        The branching between two neighbours sits at the highest bit where their keys
        differ; each branching is hashed as soon as its right side is complete: no
        per-key descent and no re-hashing. ValueError names the first key out of order
        ("[i]: ...").
        """
        status_map = cls()
        if not keys:
            return status_map
        for key, value_hash in zip(keys, value_hashes, strict=True):
            _check(key, value_hash)
        ints = [int.from_bytes(k, "big") for k in keys]
        if any(map(operator.ge, ints, ints[1:])):
            at = next(i for i, (a, b) in enumerate(pairwise(ints)) if a >= b)
            raise ValueError(f"[{at + 1}]: keys are not in increasing order")
        _build_sorted(keys, value_hashes, ints, status_map._subtrees,
                      status_map._levels[TOP_BITS])
        status_map._rehash_levels(range(1 << TOP_BITS))
        status_map._len = len(keys)
        return status_map

    def get(self, key: bytes) -> bytes | None:
        k = int.from_bytes(key, "big")
        node = self._subtrees[k >> _BUCKET_SHIFT]
        if node is None:
            return None
        while node[0] >= 0:
            node = node[2] if k >> node[0] & 1 else node[1]
        return node[2] if node[1] == key else None

    def set(self, key: bytes, value_hash: bytes) -> None:
        """Insert or replace one key, rehashing its path."""
        self.set_many(((key, value_hash),))

    def set_many(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        """Insert or replace many keys (the last value of a repeated key wins).

        Every node on the touched paths is hashed once, however many keys share it.
        All items are checked before the map changes.
        """
        latest = dict(items)
        for key, value_hash in latest.items():
            _check(key, value_hash)
        if not latest:
            return
        put = self._put
        keys = sorted(latest)
        paths = [put(key, latest[key]) for key in keys]
        # Keys in order: no later key passes below the branching where a key parts from
        # the next one, so what lies below it on the key's path is final, and is hashed
        # then, bottom up; what lies above it waits for the last key through it. Keys
        # in different buckets part above every linked node.
        sha = _sha256
        prefix = _PREFIX_BY_SHIFT
        ints = [int.from_bytes(k, "big") for k in keys]
        parts = [(a ^ b).bit_length() - 1 for a, b in pairwise(ints)]
        parts.append(256)  # the last key: its whole path is final
        for path, part in zip(paths, parts, strict=True):
            for node in reversed(path):
                if node[0] >= part:
                    break
                node[3] = sha(prefix[node[0]] + node[1][3] + node[2][3]).digest()
        subtrees, bottom = self._subtrees, self._levels[TOP_BITS]
        buckets = {k >> _BUCKET_SHIFT for k in ints}
        for bucket in buckets:
            bottom[bucket] = subtrees[bucket][3]
        self._rehash_levels(buckets)

    def delete_many(self, keys: Iterable[bytes]) -> None:
        """Remove keys (absent ones are passed over): how a cluster member undoes
        statuses its log did not keep (ledger/undo.py). A removed leaf's branching goes
        with it and its sibling takes its place, as if the key had never been set."""
        subtrees, sha, prefix = self._subtrees, _sha256, _PREFIX_BY_SHIFT
        buckets: set[int] = set()
        for key in set(keys):
            k = int.from_bytes(key, "big")
            bucket = k >> _BUCKET_SHIFT
            node = subtrees[bucket]
            path: list[Node] = []
            while node is not None and node[0] >= 0:
                path.append(node)
                node = node[2] if k >> node[0] & 1 else node[1]
            if node is None or node[1] != key:
                continue
            if path:
                parent = path.pop()
                sibling = parent[1] if k >> parent[0] & 1 else parent[2]
                self._replace(bucket, path[-1] if path else None, k, sibling)
                for above in reversed(path):
                    above[3] = sha(prefix[above[0]] + above[1][3] + above[2][3]).digest()
            else:
                subtrees[bucket] = None
            self._len -= 1
            buckets.add(bucket)
        bottom = self._levels[TOP_BITS]
        for bucket in buckets:
            subtree = subtrees[bucket]
            bottom[bucket] = None if subtree is None else subtree[3]
        self._rehash_levels(buckets)

    def _rehash_levels(self, buckets: Iterable[int]) -> None:
        """Recompute the dense slots above `buckets`, one depth at a time, bottom up."""
        sha = _sha256
        levels = self._levels
        dirty = buckets
        for depth in range(TOP_BITS - 1, -1, -1):
            below, here, prefix = levels[depth + 1], levels[depth], NODE_PREFIX[depth]
            dirty = {i >> 1 for i in dirty}
            for i in dirty:
                left, right = below[2 * i], below[2 * i + 1]
                if left is None:
                    here[i] = right
                elif right is None:
                    here[i] = left
                else:
                    here[i] = sha(prefix + left + right).digest()

    def _put(self, key: bytes, value_hash: bytes) -> list[Node]:
        """Place the leaf; return the branchings above it in its bucket, top first, to be
        rehashed. A new branching comes with hash None, the others keep their stale hash.
        """
        leaf = (-1, key, value_hash, _sha256(LEAF_TAG + key + value_hash).digest())
        k = int.from_bytes(key, "big")
        bucket = k >> _BUCKET_SHIFT
        node = self._subtrees[bucket]
        if node is None:
            self._subtrees[bucket] = leaf
            self._len += 1
            return []
        path: list[Node] = []
        append = path.append
        while node[0] >= 0:
            append(node)
            node = node[2] if k >> node[0] & 1 else node[1]
        if node[1] == key:
            self._replace(bucket, path[-1] if path else None, k, leaf)
            return path
        # The new branching sits at the first bit where the key leaves the leaf's key,
        # above the first node on the path that branches deeper than that.
        shift = (k ^ int.from_bytes(node[1], "big")).bit_length() - 1
        i = len(path)
        while i and path[i - 1][0] < shift:
            i -= 1
        below = path[i] if i < len(path) else node
        branch = [shift, below, leaf, None] if k >> shift & 1 else [shift, leaf, below, None]
        del path[i:]
        self._replace(bucket, path[-1] if path else None, k, branch)
        path.append(branch)
        self._len += 1
        return path

    def _replace(self, bucket: int, parent: Node | None, k: int, child: Any) -> None:
        if parent is None:
            self._subtrees[bucket] = child
        elif k >> parent[0] & 1:
            parent[2] = child
        else:
            parent[1] = child

    def prove(self, key: bytes) -> MapProof:
        """The key's presence proof, or its absence proof if it is not in the map."""
        if type(key) is not bytes or len(key) != KEY_SIZE:
            raise ValueError(f"a map key must be {KEY_SIZE} bytes")
        levels = self._levels
        if levels[0][0] is None:
            return MapProof(depths=b"", siblings=())
        k = int.from_bytes(key, "big")
        depths = bytearray()
        siblings = []
        # The dense levels: a slot with both halves non-empty is a branching; from one
        # with a single non-empty half the path goes on into that half, the key's or not.
        i = 0
        for depth in range(TOP_BITS):
            below = levels[depth + 1]
            left, right = below[2 * i], below[2 * i + 1]
            if left is None:
                i = 2 * i + 1
            elif right is None:
                i = 2 * i
            else:
                depths.append(depth)
                if k >> (255 - depth) & 1:
                    siblings.append(left)
                    i = 2 * i + 1
                else:
                    siblings.append(right)
                    i = 2 * i
        node = self._subtrees[i]
        while node[0] >= 0:
            shift = node[0]
            depths.append(255 - shift)
            if k >> shift & 1:
                siblings.append(node[1][3])
                node = node[2]
            else:
                siblings.append(node[2][3])
                node = node[1]
        # The tree's own hashes, so only the cross-field rules need to run.
        if node[1] == key:
            return build_checked(MapProof, depths=bytes(depths), siblings=tuple(siblings))
        return build_checked(MapProof, depths=bytes(depths), siblings=tuple(siblings),
                             key=node[1], value=node[2])


def _build_sorted(keys: list[bytes], value_hashes: list[bytes], ints: list[int],
                  subtrees: list[Any], bottom: list[bytes | None]) -> None:
    """Each bucket's linked subtree of checked keys in increasing order, hashed, in one
    pass over all of them (a call per bucket cost more than the hashing)."""
    sha = _sha256
    prefix = _PREFIX_BY_SHIFT
    shifts = [(a ^ b).bit_length() - 1 for a, b in pairwise(ints)]
    shifts.append(256)  # after the last key: nothing joins it
    spine: list[list[Any]] = []  # branchings whose right side is still open, top first
    push, pop = spine.append, spine.pop
    for key, value_hash, k, shift in zip(keys, value_hashes, ints, shifts, strict=True):
        node: Any = (-1, key, value_hash, sha(LEAF_TAG + key + value_hash).digest())
        # The branching between this key and the next one sits at `shift`: close the
        # branchings below it, with this key's side as their right one.
        if shift >= _BUCKET_SHIFT:  # the next key is in another bucket: close them all
            while spine:
                top = pop()
                top[2] = node
                top[3] = sha(prefix[top[0]] + top[1][3] + node[3]).digest()
                node = top
            bucket = k >> _BUCKET_SHIFT
            subtrees[bucket] = node
            bottom[bucket] = node[3]
            continue
        while spine and spine[-1][0] < shift:
            top = pop()
            top[2] = node
            top[3] = sha(prefix[top[0]] + top[1][3] + node[3]).digest()
            node = top
        push([shift, node, None, None])
