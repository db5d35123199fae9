"""MerkleTree agrees with the RFC reference and with ledger.merkle for every size it holds."""

from __future__ import annotations

import merkle_reference as ref
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import merkle
from ledger.errors import ConsistencyProofError, InclusionProofError
from ledger.tree import MerkleTree

ENTRIES = [b"tree entry %d" % i for i in range(1100)]
LEAVES = [merkle.leaf_hash(e) for e in ENTRIES]
FULL = MerkleTree.from_leaf_hashes(LEAVES)


def test_empty_tree() -> None:
    tree = MerkleTree()
    assert tree.size == 0
    assert tree.root() == merkle.EMPTY_ROOT
    with pytest.raises(InclusionProofError):
        tree.inclusion_proof(0)
    assert tree.consistency_proof(0) == []


def test_append_returns_indexes_and_builds_the_same_tree_as_extend() -> None:
    tree = MerkleTree()
    assert [tree.append(h) for h in LEAVES[:300]] == list(range(300))
    other = MerkleTree()
    other.extend(LEAVES[:17])
    other.extend([])
    other.extend(LEAVES[17:300])
    for level in range(10):
        for index in range(300 >> level):
            assert tree.hash_at(level, index) == other.hash_at(level, index)
    assert tree.root() == other.root() == merkle.root_of(LEAVES[:300])


def test_bad_leaf_hashes_are_refused_without_damage() -> None:
    tree = MerkleTree.from_leaf_hashes(LEAVES[:5])
    with pytest.raises(ValueError):
        tree.append(b"short")
    with pytest.raises(ValueError):
        tree.extend([LEAVES[5], b"x" * 33])
    assert tree.size == 5
    assert tree.root() == merkle.root_of(LEAVES[:5])


@pytest.mark.parametrize("size", range(1, 101))
def test_small_trees_match_the_reference(size: int) -> None:
    tree = MerkleTree()
    for h in LEAVES[:size]:
        tree.append(h)
    entries = ENTRIES[:size]
    assert tree.root() == ref.mth(entries)
    for index in range(size):
        assert tree.inclusion_proof(index) == ref.path(index, entries)
        assert tree.hash_at(0, index) == LEAVES[index]
    for size1 in range(0, size + 1):
        assert tree.root(size1) == ref.mth(entries[:size1])
        if size1:
            assert tree.consistency_proof(size1) == ref.proof(size1, entries)


def test_every_stored_node_is_the_reference_node() -> None:
    tree = MerkleTree.from_leaf_hashes(LEAVES[:77])
    for level in range(7):
        for index in range(77 >> level):
            assert tree.hash_at(level, index) == ref.node(ENTRIES, level, index)
        with pytest.raises(IndexError):
            tree.hash_at(level, 77 >> level)
    with pytest.raises(IndexError):
        tree.hash_at(7, 0)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_earlier_size_is_served(data: st.DataObject) -> None:
    size = data.draw(st.integers(1, len(LEAVES)), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    size1 = data.draw(st.integers(1, size), label="size1")
    proof = FULL.inclusion_proof(index, size)
    assert proof == merkle.prove_inclusion(index, size, FULL.read_hashes)
    merkle.verify_inclusion(LEAVES[index], index, size, proof, FULL.root(size))
    cproof = FULL.consistency_proof(size1, size)
    merkle.verify_consistency(size1, size, cproof, FULL.root(size1), FULL.root(size))
    assert FULL.root(size) == merkle.root_of(LEAVES[:size])


def test_sizes_beyond_the_tree_are_refused() -> None:
    tree = MerkleTree.from_leaf_hashes(LEAVES[:10])
    with pytest.raises(IndexError):
        tree.root(11)
    with pytest.raises(IndexError):
        tree.inclusion_proof(3, 11)
    with pytest.raises(InclusionProofError):
        tree.inclusion_proof(10, 10)
    with pytest.raises(ConsistencyProofError):
        tree.consistency_proof(6, 5)


def test_edge_hash_memo_stays_correct_while_the_tree_grows() -> None:
    tree = MerkleTree()
    for i, h in enumerate(LEAVES[:600]):
        tree.append(h)
        size = i + 1
        index = (i * 7) % size
        proof = tree.inclusion_proof(index)
        merkle.verify_inclusion(h if index == i else LEAVES[index], index, size, proof,
                                tree.root())
        # An older size keeps giving the proofs it gave before the tree grew.
        old = size // 2 or 1
        assert tree.inclusion_proof(0, old) == merkle.prove_inclusion(0, old, tree.read_hashes)


@settings(max_examples=100, deadline=None)
@given(size=st.integers(0, 300), cut=st.data(), more=st.integers(0, 40))
def test_a_prefix_is_the_tree_of_its_leaves_and_grows_like_it(
        size: int, cut: st.DataObject, more: int) -> None:
    leaves = LEAVES[:size + more]
    tree = MerkleTree.from_leaf_hashes(leaves[:size])
    keep = cut.draw(st.integers(0, size))
    head = tree.prefix(keep)
    fresh = MerkleTree.from_leaf_hashes(leaves[:keep])
    assert head is not tree and head.size == keep
    assert head._levels == fresh._levels
    assert tree.size == size  # the original is untouched
    for i, h in enumerate(leaves[keep:], keep):  # and both grow alike from there
        assert head.append(h) == fresh.append(h) == i
    assert head._levels == fresh._levels and head.root() == fresh.root()
    if head.size:
        assert head.inclusion_proof(0) == fresh.inclusion_proof(0)
    with pytest.raises(IndexError):
        tree.prefix(size + 1)
