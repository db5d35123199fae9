"""RFC 6962 / RFC 9162 §2.1 Merkle proofs: pure maths over 32-byte SHA-256 hashes.

Two questions are kept apart, as in transparency-dev/merkle:

- which hashes a proof is made of: `inclusion_nodes` and `consistency_nodes` name the
  complete (perfect) subtrees to fetch, as NodeIds, plus how to fold the ones on the
  tree's right edge into the single "ephemeral" hash a proof carries;
- hashing them: `prove_inclusion` and `prove_consistency` take a HashReader, so any
  storage (memory, SQLite, remote tiles) can serve proofs.

A NodeId (level, index) names the perfect subtree over leaves
[index * 2**level, (index + 1) * 2**level); level 0 holds the leaf hashes.

Verifiers always take the explicit index and tree size(s), check that every hash is
exactly HASH_SIZE bytes and that the proof has exactly the expected length, and raise
InclusionProofError or ConsistencyProofError saying what failed. Hashes a HashReader
returns are suspect until the proof they build checks against a signed tree head.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ledger.errors import ConsistencyProofError, InclusionProofError, ProofError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

NodeId = tuple[int, int]
"""(level, index) of a perfect subtree; see the module docstring."""

HashReader = Callable[[Sequence[NodeId]], Sequence[bytes]]
"""Returns the hashes of the given nodes, in order. Must raise rather than guess."""

_sha256 = hashlib.sha256
_LEAF = b"\x00"
_NODE = b"\x01"


def leaf_hash(entry: bytes) -> bytes:
    """SHA-256(0x00 ‖ entry): the leaf prefix keeps leaves and nodes apart."""
    return _sha256(_LEAF + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 ‖ left ‖ right)."""
    return _sha256(_NODE + left + right).digest()


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """The RFC 6962 tree hash over the given leaf hashes, without keeping a tree."""
    stack: list[bytes] = []
    sha = _sha256
    for i, h in enumerate(leaf_hashes):
        # Each trailing one bit of i closes a perfect subtree on the stack.
        while i & 1:
            h = sha(_NODE + stack.pop() + h).digest()
            i >>= 1
        stack.append(h)
    if not stack:
        return EMPTY_ROOT
    h = stack.pop()
    while stack:
        h = sha(_NODE + stack.pop() + h).digest()
    return h


def range_nodes(begin: int, end: int) -> list[NodeId]:
    """The perfect subtrees that exactly cover leaves [begin, end), left to right."""
    out: list[NodeId] = []
    while begin < end:
        # The largest subtree aligned at `begin` that does not pass `end`.
        level = (end - begin).bit_length() - 1
        if begin:
            level = min(level, (begin & -begin).bit_length() - 1)
        out.append((level, begin >> level))
        begin += 1 << level
    return out


@dataclass(frozen=True, slots=True)
class ProofNodes:
    """The perfect subtrees a proof is made of, in proof order.

    ids[begin:end] cover the ephemeral node on the tree's right edge, smallest
    (rightmost) first; `rehash` folds their hashes into the one hash the proof
    carries. When begin == end there is nothing to fold.
    """

    ids: tuple[NodeId, ...]
    begin: int = 0
    end: int = 0

    def rehash(self, hashes: Sequence[bytes]) -> list[bytes]:
        """Turn the hashes of `ids` (same order) into the proof."""
        if len(hashes) != len(self.ids):
            raise ProofError(f"expected {len(self.ids)} node hashes, got {len(hashes)}")
        for h in hashes:
            if len(h) != HASH_SIZE:
                raise ProofError(f"a node hash is {len(h)} bytes, not {HASH_SIZE}")
        begin, end = self.begin, self.end
        if end - begin < 2:
            return list(hashes)
        h = hashes[begin]
        for left in hashes[begin + 1:end]:
            h = _sha256(_NODE + left + h).digest()
        return [*hashes[:begin], h, *hashes[end:]]


def _nodes(index: int, level: int, size: int) -> tuple[list[NodeId], int, int]:
    """Nodes proving (level, index) in a tree of `size`, the seed node first."""
    # The fork is where the paths to (level, index) and to the right edge part; its
    # sibling is the ephemeral node, made of the perfect subtrees right of the fork.
    inner = (index ^ (size >> level)).bit_length() - 1
    fork_level, fork_index = level + inner, index >> inner
    begin, end = fork_index << fork_level, (fork_index + 1) << fork_level

    ids: list[NodeId] = [(level, index)]
    for lv in range(level, fork_level):
        ids.append((lv, (index >> (lv - level)) ^ 1))
    e_begin = len(ids)
    right = range_nodes(end, size)
    right.reverse()
    ids += right
    e_end = len(ids)
    left = range_nodes(0, begin)
    left.reverse()
    ids += left
    return ids, e_begin, e_end


def inclusion_nodes(index: int, size: int) -> ProofNodes:
    """Which nodes prove leaf `index` in the tree of `size` leaves."""
    if not 0 <= index < size:
        raise InclusionProofError(f"no inclusion proof for index {index} in a tree of size {size}")
    ids, begin, end = _nodes(index, 0, size)
    return ProofNodes(tuple(ids[1:]), max(begin - 1, 0), max(end - 1, 0))


def consistency_nodes(size1: int, size2: int) -> ProofNodes:
    """Which nodes prove that the tree of size1 is a prefix of the tree of size2.

    Empty when size1 == size2, and when size1 == 0: there is nothing to prove, and
    whether to accept that is the verifier's caller's decision (see verify_consistency).
    """
    if not 0 <= size1 <= size2:
        raise ConsistencyProofError(f"no consistency proof from size {size1} to size {size2}")
    if size1 in (0, size2):
        return ProofNodes(())
    # The largest perfect subtree ending at size1 seeds the proof.
    level = (size1 & -size1).bit_length() - 1
    index = (size1 - 1) >> level
    ids, begin, end = _nodes(index, level, size2)
    if index == 0:
        # size1 is a power of two: the seed is root1, which the verifier holds.
        return ProofNodes(tuple(ids[1:]), max(begin - 1, 0), max(end - 1, 0))
    return ProofNodes(tuple(ids), begin, end)


def prove_inclusion(index: int, size: int, read: HashReader) -> list[bytes]:
    """The RFC 6962 audit path of leaf `index` in the tree of `size`, bottom up."""
    nodes = inclusion_nodes(index, size)
    return nodes.rehash(read(nodes.ids))


def prove_consistency(size1: int, size2: int, read: HashReader) -> list[bytes]:
    """The RFC 6962 consistency proof from size1 to size2 (empty if size1 is 0)."""
    nodes = consistency_nodes(size1, size2)
    return nodes.rehash(read(nodes.ids))


def _check_hashes(proof: Sequence[bytes], what: str, err: type[ProofError]) -> None:
    if proof and set(map(len, proof)) != {HASH_SIZE}:  # the C-speed check first
        i, n = next((i, len(h)) for i, h in enumerate(proof) if len(h) != HASH_SIZE)
        raise err(f"{what}: proof hash {i} is {n} bytes, not {HASH_SIZE}")


def _inclusion(index: int, size: int) -> str:
    return f"inclusion of index {index} in size {size}"  # for errors only: built on failure


def root_from_inclusion_proof(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes]
) -> bytes:
    """The root that `proof` implies for `leaf_hash` at `index` in a tree of `size`.

    Only meaningful once compared with a trusted root; raises InclusionProofError
    if the shapes are wrong (index, hash lengths, proof length).
    """
    if not 0 <= index < size:
        raise InclusionProofError(f"{_inclusion(index, size)}: the index is not below the size")
    if len(leaf_hash) != HASH_SIZE:
        raise InclusionProofError(f"{_inclusion(index, size)}: leaf hash is "
                                  f"{len(leaf_hash)} bytes, not {HASH_SIZE}")
    # Below `inner` the path passes siblings on both sides; above it, the leaf's
    # ancestors sit on the right edge, so every sibling there is on the left.
    inner = (index ^ (size - 1)).bit_length()
    want = inner + (index >> inner).bit_count()
    if len(proof) != want:
        raise InclusionProofError(f"{_inclusion(index, size)}: proof has {len(proof)} "
                                  f"hashes, expected {want}")
    if proof and set(map(len, proof)) != {HASH_SIZE}:
        _check_hashes(proof, _inclusion(index, size), InclusionProofError)
    sha = _sha256
    node = _NODE
    h = leaf_hash
    bits = index
    for p in proof[:inner]:
        h = sha(node + p + h).digest() if bits & 1 else sha(node + h + p).digest()
        bits >>= 1
    for p in proof[inner:]:
        h = sha(node + p + h).digest()
    return h


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that `proof` puts `leaf_hash` at `index` in the tree of `size` with `root`."""
    computed = root_from_inclusion_proof(leaf_hash, index, size, proof)
    if computed != root:
        raise InclusionProofError(
            f"inclusion of index {index} in size {size}: proof leads to root "
            f"{computed.hex()}, expected {root.hex()}")


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Check that the tree (size1, root1) is a prefix of the tree (size2, root2).

    Semantics follow the RFC 6962 known-answer vectors (transparency-dev/merkle):
    - size1 > size2 is an error;
    - size1 == size2 needs an empty proof and root1 == root2 (for size 0, both must be
      EMPTY_ROOT);
    - size1 == 0 < size2 is an error: every tree extends the empty tree, so a proof
      from 0 proves nothing. Accepting it (as a witness does for `old 0` with an empty
      proof) is the caller's decision, made before calling this.
    """
    what = f"consistency from size {size1} to size {size2}"
    if not 0 <= size1 <= size2:
        raise ConsistencyProofError(f"{what}: size1 must not exceed size2")
    if size1 == size2:
        if proof:
            raise ConsistencyProofError(f"{what}: equal sizes need an empty proof, "
                                        f"got {len(proof)} hashes")
        if root1 != root2:
            raise ConsistencyProofError(f"{what}: equal sizes but root1 {root1.hex()} "
                                        f"differs from root2 {root2.hex()}")
        if size1 == 0 and root1 != EMPTY_ROOT:
            raise ConsistencyProofError(f"{what}: root {root1.hex()} is not the empty "
                                        f"tree's root {EMPTY_ROOT.hex()}")
        return
    if size1 == 0:
        raise ConsistencyProofError(f"{what}: a proof from the empty tree proves nothing; "
                                    "accepting size 0 is the caller's decision")
    for name, root in (("root1", root1), ("root2", root2)):
        if len(root) != HASH_SIZE:
            raise ConsistencyProofError(f"{what}: {name} is {len(root)} bytes, not {HASH_SIZE}")

    # Node (shift, mask) is the largest perfect subtree ending at size1; the proof is
    # its hash (unless size1 is a power of two: then it is root1) followed by its
    # inclusion path in the tree of size2, which also rebuilds root1 from its left part.
    shift = (size1 & -size1).bit_length() - 1
    inner = (((size1 - 1) ^ (size2 - 1)).bit_length()) - shift
    mask = (size1 - 1) >> shift
    border = ((size1 - 1) >> (inner + shift)).bit_count()
    seeded = size1 != 1 << shift
    want = inner + border + (1 if seeded else 0)
    if len(proof) != want:
        raise ConsistencyProofError(f"{what}: proof has {len(proof)} hashes, expected {want}")
    _check_hashes(proof, what, ConsistencyProofError)

    sha = _sha256
    node = _NODE
    seed = proof[0] if seeded else root1
    path = proof[1:] if seeded else proof
    h1 = h2 = seed
    for i in range(inner):
        p = path[i]
        if (mask >> i) & 1:
            h1 = sha(node + p + h1).digest()
            h2 = sha(node + p + h2).digest()
        else:
            h2 = sha(node + h2 + p).digest()
    for p in path[inner:]:
        h1 = sha(node + p + h1).digest()
        h2 = sha(node + p + h2).digest()
    if h1 != root1:
        raise ConsistencyProofError(f"{what}: proof leads to root1 {h1.hex()}, "
                                    f"expected {root1.hex()}")
    if h2 != root2:
        raise ConsistencyProofError(f"{what}: proof leads to root2 {h2.hex()}, "
                                    f"expected {root2.hex()}")
