"""ledger.merkle against the literal RFC 6962 reference, and against tampering.

Every tree size up to SMALL is checked exhaustively: root, every inclusion proof and
every consistency proof, built through a reader that fails on any read a proof should
not need. Hypothesis then covers trees up to 1,000 leaves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import cache

import merkle_reference as ref
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import merkle
from ledger.errors import ConsistencyProofError, InclusionProofError, LedgerError, ProofError

SMALL = 100
BIG = 1000
ENTRIES = [b"entry %d" % i for i in range(BIG)]
LEAVES = [merkle.leaf_hash(e) for e in ENTRIES]


@cache
def node(level: int, index: int) -> bytes:
    if level == 0:
        return LEAVES[index]
    return merkle.node_hash(node(level - 1, 2 * index), node(level - 1, 2 * index + 1))


@cache
def root(size: int) -> bytes:
    return merkle.root_of(LEAVES[:size])


class StrictReader:
    """Serves only perfect subtrees inside the tree, each at most once per proof."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.reads: list[merkle.NodeId] = []

    def __call__(self, ids: Sequence[merkle.NodeId]) -> list[bytes]:
        assert len(set(ids)) == len(ids), f"duplicate reads {ids}"
        for level, index in ids:
            assert min(level, index) >= 0, (level, index)
            assert (index + 1) << level <= self.size, f"{(level, index)} is not in size {self.size}"
        self.reads.extend(ids)
        return [node(level, index) for level, index in ids]


def flip(h: bytes, bit: int) -> bytes:
    b = bytearray(h)
    b[bit // 8 % len(b)] ^= 1 << (bit % 8)
    return bytes(b)


def _inner(a: int, size: int) -> int:
    """How many proof levels lie below the right edge; the only way size shapes a proof."""
    return (a ^ (size - 1)).bit_length()


# ---------------------------------------------------------------- basics


def test_hashes_are_rfc6962() -> None:
    assert hashlib.sha256(b"").digest() == merkle.EMPTY_ROOT
    assert merkle.leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    a, b = LEAVES[0], LEAVES[1]
    assert merkle.node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()
    assert merkle.root_of([]) == merkle.EMPTY_ROOT == ref.mth([])


def test_range_nodes_cover_exactly() -> None:
    for begin in range(0, 70):
        for end in range(begin, 70):
            covered: list[int] = []
            for level, index in merkle.range_nodes(begin, end):
                covered.extend(range(index << level, (index + 1) << level))
            assert covered == list(range(begin, end))


# ---------------------------------------------------------------- exhaustive, small trees


@pytest.mark.parametrize("size", range(1, SMALL + 1))
def test_every_proof_of_a_small_tree_matches_the_rfc(size: int) -> None:
    entries = ENTRIES[:size]
    want_root = ref.mth(entries)
    assert merkle.root_of(LEAVES[:size]) == want_root
    for index in range(size):
        reader = StrictReader(size)
        proof = merkle.prove_inclusion(index, size, reader)
        assert proof == ref.path(index, entries)
        assert reader.reads == list(merkle.inclusion_nodes(index, size).ids)
        merkle.verify_inclusion(LEAVES[index], index, size, proof, want_root)
        for other in (index - 1, index + 1):
            with pytest.raises(InclusionProofError):
                merkle.verify_inclusion(LEAVES[index], other, size, proof, want_root)
    for size1 in range(1, size + 1):
        proof = merkle.prove_consistency(size1, size, StrictReader(size))
        assert proof == ref.proof(size1, entries)
        merkle.verify_consistency(size1, size, proof, root(size1), want_root)
        for other in (size1 - 1, size1 + 1):
            with pytest.raises(ConsistencyProofError):
                merkle.verify_consistency(other, size, proof, root(size1), want_root)


# ---------------------------------------------------------------- edges and shapes


def test_proving_impossible_things_is_a_proof_error() -> None:
    reader = StrictReader(10)
    for index, size in [(0, 0), (5, 5), (-1, 3)]:
        with pytest.raises(InclusionProofError):
            merkle.prove_inclusion(index, size, reader)
    with pytest.raises(ConsistencyProofError):
        merkle.prove_consistency(6, 5, reader)
    with pytest.raises(ConsistencyProofError):
        merkle.prove_consistency(-1, 5, reader)
    assert reader.reads == []


def test_a_proof_from_size_zero_is_empty_and_the_verifier_rejects_it() -> None:
    assert merkle.prove_consistency(0, 7, StrictReader(7)) == []
    with pytest.raises(ConsistencyProofError, match="caller's decision"):
        merkle.verify_consistency(0, 7, [], merkle.EMPTY_ROOT, root(7))


def test_equal_sizes() -> None:
    assert merkle.prove_consistency(7, 7, StrictReader(7)) == []
    merkle.verify_consistency(7, 7, [], root(7), root(7))
    merkle.verify_consistency(0, 0, [], merkle.EMPTY_ROOT, merkle.EMPTY_ROOT)
    with pytest.raises(ConsistencyProofError):
        merkle.verify_consistency(7, 7, [], root(7), root(6))
    with pytest.raises(ConsistencyProofError):
        merkle.verify_consistency(7, 7, [root(7)], root(7), root(7))
    with pytest.raises(ConsistencyProofError):
        merkle.verify_consistency(0, 0, [], root(1), root(1))


def test_hash_lengths_are_checked() -> None:
    proof = merkle.prove_inclusion(3, 10, StrictReader(10))
    for bad in (proof[0][:31], proof[0] + b"\x00", b""):
        with pytest.raises(InclusionProofError, match="bytes"):
            merkle.verify_inclusion(LEAVES[3], 3, 10, [bad, *proof[1:]], root(10))
    with pytest.raises(InclusionProofError, match="leaf hash"):
        merkle.verify_inclusion(LEAVES[3][:16], 3, 10, proof, root(10))
    cproof = merkle.prove_consistency(3, 10, StrictReader(10))
    with pytest.raises(ConsistencyProofError, match="bytes"):
        merkle.verify_consistency(3, 10, [*cproof[:-1], cproof[-1][:-1]], root(3), root(10))
    with pytest.raises(ConsistencyProofError, match="root2"):
        merkle.verify_consistency(3, 10, cproof, root(3), root(10)[:-1])


def test_error_messages_carry_the_evidence() -> None:
    proof = merkle.prove_inclusion(3, 10, StrictReader(10))
    with pytest.raises(InclusionProofError) as info:
        merkle.verify_inclusion(LEAVES[3], 3, 10, proof, root(9))
    text = str(info.value)
    assert "index 3" in text and "size 10" in text and root(9).hex() in text
    with pytest.raises(InclusionProofError, match="expected 4"):
        merkle.verify_inclusion(LEAVES[3], 3, 10, proof[:-1], root(10))


def test_rehash_rejects_a_reader_that_lies_about_shape() -> None:
    nodes = merkle.inclusion_nodes(5, 11)
    good = [node(*i) for i in nodes.ids]
    with pytest.raises(ProofError):
        nodes.rehash(good[:-1])
    with pytest.raises(ProofError):
        nodes.rehash([*good[:-1], good[-1][:31]])


# ---------------------------------------------------------------- properties, up to 1,000 leaves


@st.composite
def leaf_in_tree(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(st.integers(1, BIG))
    return draw(st.integers(0, size - 1)), size


@settings(max_examples=150, deadline=None)
@given(leaf_in_tree(), st.data())
def test_inclusion_proofs_verify_and_resist_tampering(at: tuple[int, int], data: st.DataObject
                                                      ) -> None:
    index, size = at
    leaf, good_root = LEAVES[index], root(size)
    proof = merkle.prove_inclusion(index, size, StrictReader(size))
    merkle.verify_inclusion(leaf, index, size, proof, good_root)
    assert merkle.root_from_inclusion_proof(leaf, index, size, proof) == good_root

    bit = data.draw(st.integers(0, 255), label="bit")
    bad: list[tuple[bytes, int, int, list[bytes], bytes]] = [
        (flip(leaf, bit), index, size, proof, good_root),
        (leaf, index, size, proof, flip(good_root, bit)),
        (leaf, index - 1, size, proof, good_root),
        (leaf, index + 1, size, proof, good_root),
        (leaf, index, size, [*proof, proof[-1] if proof else leaf], good_root),
    ]
    bad += [(leaf, index, size, [*proof[:i], flip(p, bit), *proof[i + 1:]], good_root)
            for i, p in enumerate(proof)]
    if proof:
        bad.append((leaf, index, size, proof[:-1], good_root))
    for other in (size - 1, size + 1):
        # A proof's shape depends on the size only through _inner: where that is
        # unchanged the proof cannot tell the sizes apart, and the signed tree
        # head's size is what binds it.
        if _inner(index, other) != _inner(index, size) or other <= index:
            bad.append((leaf, index, other, proof, good_root))
    for args in bad:
        with pytest.raises(InclusionProofError):
            merkle.verify_inclusion(*args)


@st.composite
def two_sizes(draw: st.DrawFn) -> tuple[int, int]:
    size2 = draw(st.integers(2, BIG))
    return draw(st.integers(1, size2 - 1)), size2


@settings(max_examples=150, deadline=None)
@given(two_sizes(), st.data())
def test_consistency_proofs_verify_and_resist_tampering(sizes: tuple[int, int],
                                                        data: st.DataObject) -> None:
    size1, size2 = sizes
    root1, root2 = root(size1), root(size2)
    proof = merkle.prove_consistency(size1, size2, StrictReader(size2))
    merkle.verify_consistency(size1, size2, proof, root1, root2)

    bit = data.draw(st.integers(0, 255), label="bit")
    bad: list[tuple[int, int, list[bytes], bytes, bytes]] = [
        (size1, size2, proof, flip(root1, bit), root2),
        (size1, size2, proof, root1, flip(root2, bit)),
        (size1, size2, proof, root2, root1),
        (size1 - 1, size2, proof, root1, root2),
        (size1 + 1, size2, proof, root1, root2),
        (size1, size2, proof[:-1], root1, root2),
        (size1, size2, [*proof, proof[-1]], root1, root2),
        (size1, size2, [root1, *proof], root1, root2),
    ]
    bad += [(size1, size2, [*proof[:i], flip(p, bit), *proof[i + 1:]], root1, root2)
            for i, p in enumerate(proof)]
    for other in (size2 - 1, size2 + 1):
        if _inner(size1 - 1, other) != _inner(size1 - 1, size2) or other <= size1:
            bad.append((size1, other, proof, root1, root2))
    for args in bad:
        with pytest.raises(ConsistencyProofError):
            merkle.verify_consistency(*args)


@settings(max_examples=300, deadline=None)
@given(st.integers(-2, 2**64), st.integers(-2, 2**64),
       st.lists(st.binary(max_size=40), max_size=70), st.binary(max_size=40),
       st.binary(max_size=40))
def test_garbage_only_ever_raises_proof_errors(a: int, b: int, proof: list[bytes],
                                               h1: bytes, h2: bytes) -> None:
    for call in (lambda: merkle.verify_inclusion(h1, a, b, proof, h2),
                 lambda: merkle.verify_consistency(a, b, proof, h1, h2)):
        try:
            call()
        except LedgerError as exc:
            assert isinstance(exc, ProofError)
