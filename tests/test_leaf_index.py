"""LeafIndex: an entry's index by its leaf hash, indexed lazily from the tree."""

import hashlib

from ledger.tree import MerkleTree
from node.leaf_index import LeafIndex


def leaf(n: int) -> bytes:
    return hashlib.sha256(b"leaf %d" % n).digest()


async def test_finds_every_leaf_and_catches_up_with_a_growing_tree() -> None:
    tree = MerkleTree.from_leaf_hashes(leaf(n) for n in range(120_000))  # several chunks
    index = LeafIndex()
    assert await index.find(tree, leaf(0)) == 0
    assert await index.find(tree, leaf(119_999)) == 119_999
    assert await index.find(tree, leaf(120_000)) is None
    tree.append(leaf(120_000))
    assert await index.find(tree, leaf(120_000)) == 120_000
    assert await index.find(tree, b"\0" * 32) is None


async def test_a_replaced_tree_is_indexed_afresh() -> None:
    index = LeafIndex()
    old = MerkleTree.from_leaf_hashes([leaf(1), leaf(2), leaf(3)])
    assert await index.find(old, leaf(3)) == 2
    # A reloaded ledger (a follower after a truncation): entry 2 is another one now.
    new = MerkleTree.from_leaf_hashes([leaf(1), leaf(2), leaf(9)])
    assert await index.find(new, leaf(3)) is None
    assert await index.find(new, leaf(9)) == 2
