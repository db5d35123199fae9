"""ledger.smt / ledger.smt_proof against a slow reference, and against tampering.

The reference below restates the map's hash from the definition (a naive recursion over
the sorted key set, with its own literal tags), so a change to the tree, the hashes or
the proof format shows up as a mismatch rather than as a silently self-consistent map.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import merkle
from ledger.errors import DecodeError, LedgerError, ProofError
from ledger.smt import (
    EMPTY,
    MapProof,
    MapProofError,
    StatusMap,
    leaf_hash,
    map_key,
    node_hash,
    verify_map_proof,
)

# ---------------------------------------------------------------- the reference

R_LEAF = b"consent-ledger map leaf v1\x00"
R_NODE = b"consent-ledger map node v1\x00"
R_EMPTY = hashlib.sha256(b"consent-ledger map empty v1\x00").digest()


def bit(key: bytes, d: int) -> int:
    return key[d // 8] >> (7 - d % 8) & 1


def first_split(keys: list[bytes]) -> int:
    """The first bit at which the (at least two, distinct) keys do not all agree."""
    return next(d for d in range(256) if len({bit(k, d) for k in keys}) == 2)


def ref_root(items: dict[bytes, bytes]) -> bytes:
    keys = sorted(items)
    if not keys:
        return R_EMPTY
    if len(keys) == 1:
        return hashlib.sha256(R_LEAF + keys[0] + items[keys[0]]).digest()
    d = first_split(keys)
    left = {k: items[k] for k in keys if not bit(k, d)}
    right = {k: items[k] for k in keys if bit(k, d)}
    return hashlib.sha256(R_NODE + bytes([d]) + ref_root(left) + ref_root(right)).digest()


def ref_proof(items: dict[bytes, bytes], key: bytes) -> MapProof:
    depths, siblings = [], []
    while len(items) > 1:
        d = first_split(list(items))
        side = {k: v for k, v in items.items() if bit(k, d) == bit(key, d)}
        other = {k: v for k, v in items.items() if bit(k, d) != bit(key, d)}
        depths.append(d)
        siblings.append(ref_root(other))
        items = side
    if not items or key in items:
        return MapProof(depths=bytes(depths), siblings=tuple(siblings))
    [(k, v)] = items.items()
    return MapProof(depths=bytes(depths), siblings=tuple(siblings), key=k, value=v)


# ---------------------------------------------------------------- helpers

BASE = hashlib.sha256(b"base key").digest()


def flip(data: bytes, i: int) -> bytes:
    """`data` with bit i (0 = the most significant bit of byte 0) inverted."""
    b = bytearray(data)
    b[i // 8] ^= 0x80 >> (i % 8)
    return bytes(b)


def near(bits: frozenset[int]) -> bytes:
    """BASE with some bits flipped: keys that share long prefixes, so deep branchings."""
    key = BASE
    for i in bits:
        key = flip(key, i)
    return key


def value(n: int) -> bytes:
    return hashlib.sha256(b"value %d" % n).digest()


def build(items: dict[bytes, bytes]) -> StatusMap:
    m = StatusMap()
    for k, v in items.items():
        m.set(k, v)
    return m


def verifies(root: bytes, key: bytes, value_hash: bytes | None, proof: MapProof) -> bool:
    try:
        verify_map_proof(root, key, value_hash, proof)
    except MapProofError:
        return False
    return True


keys_st = st.one_of(
    st.binary(min_size=32, max_size=32),
    st.builds(near, st.frozensets(st.integers(0, 255), max_size=3)),
    st.builds(near, st.frozensets(st.sampled_from([0, 1, 7, 8, 100, 254, 255]), max_size=4)),
)
values_st = st.builds(value, st.integers(0, 3))
batches_st = st.lists(st.lists(st.tuples(keys_st, values_st), min_size=1, max_size=8),
                      max_size=8)


# ---------------------------------------------------------------- small maps


def test_empty_map() -> None:
    m = StatusMap()
    assert len(m) == 0 and m.root() == EMPTY == R_EMPTY
    assert m.get(BASE) is None
    proof = m.prove(BASE)
    assert proof == MapProof(depths=b"", siblings=())
    assert proof.encode() == bytes.fromhex("82a6646570746873c400a87369626c696e677390")
    verify_map_proof(EMPTY, BASE, None, proof)
    with pytest.raises(MapProofError, match="leads to root"):
        verify_map_proof(EMPTY, BASE, value(0), proof)
    with pytest.raises(MapProofError, match="leads to root"):
        verify_map_proof(leaf_hash(BASE, value(0)), BASE, None, proof)


def test_one_key() -> None:
    m = StatusMap()
    m.set(BASE, value(1))
    assert len(m) == 1 and m.get(BASE) == value(1)
    assert m.root() == leaf_hash(BASE, value(1)) == ref_root({BASE: value(1)})
    present = m.prove(BASE)
    assert present == MapProof(depths=b"", siblings=())
    verify_map_proof(m.root(), BASE, value(1), present)
    with pytest.raises(MapProofError, match="leads to root"):
        verify_map_proof(m.root(), BASE, value(2), present)
    other = near(frozenset({3}))
    absent = m.prove(other)
    assert absent == MapProof(depths=b"", siblings=(), key=BASE, value=value(1))
    verify_map_proof(m.root(), other, None, absent)
    with pytest.raises(MapProofError, match="own leaf"):
        verify_map_proof(m.root(), BASE, None, absent)
    with pytest.raises(MapProofError, match="names another leaf"):
        verify_map_proof(m.root(), other, value(1), absent)
    m.set(BASE, value(2))
    assert len(m) == 1 and m.root() == leaf_hash(BASE, value(2))


@pytest.mark.parametrize("split", [0, 1, 7, 8, 128, 254, 255])
def test_two_keys_sharing_a_prefix(split: int) -> None:
    a, b = BASE, flip(BASE, split)
    left, right = (a, b) if not bit(a, split) else (b, a)
    m = StatusMap()
    m.set_many([(a, value(0)), (b, value(1))])
    vals = {a: value(0), b: value(1)}
    expected = node_hash(split, leaf_hash(left, vals[left]), leaf_hash(right, vals[right]))
    assert m.root() == expected == ref_root(vals)
    for k, other in ((a, b), (b, a)):
        proof = m.prove(k)
        assert proof.depths == bytes([split])
        assert proof.siblings == (leaf_hash(other, vals[other]),)
        verify_map_proof(m.root(), k, vals[k], proof)
    # A third key past the split ends at the leaf on its side, whatever its later bits.
    if split < 255:
        c = flip(right, 255)
        proof = m.prove(c)
        assert proof.key == right and proof.depths == bytes([split])
        verify_map_proof(m.root(), c, None, proof)
        # The same absence proof, moved to another depth, must not verify.
        moved = MapProof(depths=bytes([(split + 1) % 256]), siblings=proof.siblings,
                         key=proof.key, value=proof.value)
        assert not verifies(m.root(), c, None, moved)


def test_insertion_order_does_not_matter() -> None:
    keys = [near(frozenset({i, j})) for i in range(0, 256, 37) for j in range(3)]
    items = {k: value(i) for i, k in enumerate(keys)}
    forward, backward, batched = StatusMap(), StatusMap(), StatusMap()
    for k in keys:
        forward.set(k, items[k])
    for k in reversed(keys):
        backward.set(k, items[k])
    batched.set_many(sorted(items.items()))
    assert forward.root() == backward.root() == batched.root() == ref_root(items)


def test_domain_separated_from_rfc6962() -> None:
    k, v = BASE, value(0)
    assert leaf_hash(k, v) != merkle.leaf_hash(k + v)
    assert leaf_hash(k, v) != merkle.node_hash(k, v)
    assert node_hash(0, k, v) != merkle.node_hash(k, v)
    assert EMPTY != merkle.EMPTY_ROOT


def test_map_key() -> None:
    key = map_key("shop.example", b"\x01" * 32, "dpv:Marketing")
    assert key == hashlib.sha256(
        b"consent-ledger map key v1\x00" + b"\x00\x0cshop.example" + b"\x00\x20" + b"\x01" * 32
        + b"\x00\x0ddpv:Marketing").digest()
    assert map_key("ab", b"c", "d") != map_key("a", b"bc", "d")
    assert map_key("a", b"b", "cd") != map_key("a", b"bc", "d")


def test_inputs_are_checked() -> None:
    m = StatusMap()
    for key, val in ((BASE[:31], value(0)), (BASE, value(0)[:31]), (BASE.hex(), value(0))):
        with pytest.raises(ValueError):
            m.set(key, val)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        m.set_many([(BASE, value(0)), (near(frozenset({1})), b"short")])
    assert len(m) == 0 and m.root() == EMPTY  # all checked before anything changed
    with pytest.raises(ValueError):
        m.prove(BASE[:31])


def test_every_proof_of_every_small_map() -> None:
    # Keys that differ in a few bits near the top and the bottom: every shape of small
    # trie, including branchings at depth 0 and 255 and long unbranched prefixes.
    bits = (0, 3, 100, 200, 255)
    pool = [near(frozenset(b for j, b in enumerate(bits) if (i * 7 % 32) >> j & 1))
            for i in range(32)]
    absent = [near(frozenset({1, 254})), near(frozenset({0, 3, 201})), flip(BASE, 100)]
    for n in range(len(pool) + 1):
        items = {k: value(i) for i, k in enumerate(pool[:n])}
        m = StatusMap()
        m.set_many(items.items())
        assert m.root() == ref_root(items) == build(items).root()
        for k in [*items, *absent]:
            proof = m.prove(k)
            assert proof == ref_proof(items, k)
            verify_map_proof(m.root(), k, items.get(k), proof)


def test_keys_across_and_within_the_dense_levels() -> None:
    # The map keeps its top levels as arrays: keys sharing all of those bits, keys
    # parting at the last of them or the first below, and keys whose way down passes
    # through empty halves (an absent key in an empty bucket ends at another key's leaf).
    def key(prefix: int, rest: int) -> bytes:
        return prefix.to_bytes(2, "big") + rest.to_bytes(30, "big")

    pool = [key(0, 0), key(0, 1), key(0, 1 << 239), key(1, 0), key(0x8000, 5),
            key(0xFFFF, 0), key(0xFFFE, 2**240 - 1), key(0x7FFF, 3)]
    absent = [key(0x4000, 0), key(0, 2), key(0xFFFF, 1), key(0x8001, 5), key(2, 0)]
    for n in range(len(pool) + 1):
        items = {k: value(i) for i, k in enumerate(pool[:n])}
        batched, built = StatusMap(), StatusMap.from_sorted(
            sorted(items), [items[k] for k in sorted(items)])
        batched.set_many(items.items())
        for m in (batched, built, build(items)):
            assert m.root() == ref_root(items)
            assert len(m) == len(items)
            assert [leaf[1] for leaf in m.leaves()] == sorted(items)
            for k in [*items, *absent]:
                assert m.get(k) == items.get(k)
                proof = m.prove(k)
                assert proof == ref_proof(items, k)
                verify_map_proof(m.root(), k, items.get(k), proof)


# ---------------------------------------------------------------- properties


@settings(max_examples=150, deadline=None)
@given(batches=batches_st, probes=st.lists(keys_st, max_size=6))
def test_any_sequence_of_updates(batches: list[list[tuple[bytes, bytes]]],
                                 probes: list[bytes]) -> None:
    m = StatusMap()
    items: dict[bytes, bytes] = {}
    for i, batch in enumerate(batches):
        if i % 2:
            m.set_many(batch)
        else:
            for k, v in batch:
                m.set(k, v)
        items.update(batch)
        assert len(m) == len(items)
        assert m.root() == ref_root(items)
    root = m.root()
    for k, v in items.items():
        assert m.get(k) == v
        proof = m.prove(k)
        assert proof == ref_proof(items, k)
        verify_map_proof(root, k, v, proof)
        assert not verifies(root, k, flip(v, 0), proof)
        assert not verifies(root, k, None, proof)
    for k in probes:
        if k in items:
            continue
        assert m.get(k) is None
        proof = m.prove(k)
        assert proof == ref_proof(items, k)
        verify_map_proof(root, k, None, proof)
        assert not verifies(root, k, value(0), proof)
    # Replaying the final set in any order gives the same root.
    assert build(dict(sorted(items.items()))).root() == root
    assert build(dict(reversed(items.items()))).root() == root


@settings(max_examples=25, deadline=None)
@given(items=st.dictionaries(keys_st, values_st, max_size=12), probe=keys_st,
       data=st.data())
def test_every_bit_flip_fails(items: dict[bytes, bytes], probe: bytes,
                              data: st.DataObject) -> None:
    m = build(items)
    root = m.root()
    key = data.draw(st.sampled_from(sorted(items))) if items and data.draw(st.booleans()) \
        else probe
    val = items.get(key)
    proof = m.prove(key)
    verify_map_proof(root, key, val, proof)

    for i in range(256):
        assert not verifies(flip(root, i), key, val, proof)
        if val is not None:
            assert not verifies(root, key, flip(val, i), proof)
            assert not verifies(root, flip(key, i), val, proof)
        else:
            # An absence proof also proves absence for the keys that share its path;
            # what must never happen is that it "proves" a key that is present absent.
            other = flip(key, i)
            if verifies(root, other, None, proof):
                assert other not in items
    wire = proof.encode()
    for i in range(len(wire) * 8):
        try:
            tampered = MapProof.decode(flip(wire, i))
        except DecodeError:
            continue
        assert not verifies(root, key, val, tampered), f"bit {i} of the proof"


# ---------------------------------------------------------------- the format


def sample_proofs() -> list[tuple[bytes, bytes | None, MapProof, bytes]]:
    items = {near(frozenset({i})): value(i) for i in (0, 9, 200)}
    m = build(items)
    absent = near(frozenset({0, 1}))
    return [(k, items.get(k), m.prove(k), m.root()) for k in (*items, absent)]


def test_round_trip() -> None:
    for _, _, proof, _ in sample_proofs():
        assert MapProof.decode(proof.encode()) == proof
    m = StatusMap()
    m.set_many((flip(BASE, d), value(d)) for d in range(256))
    m.set(BASE, value(999))
    proof = m.prove(BASE)
    assert len(proof.depths) == 256  # the deepest possible path still fits
    assert MapProof.decode(proof.encode()) == proof
    verify_map_proof(m.root(), BASE, value(999), proof)


@pytest.mark.parametrize(("wire", "match"), [
    ({"depths": b"\x02\x01", "siblings": [bytes(32)] * 2}, "ascending"),
    ({"depths": b"\x01\x01", "siblings": [bytes(32)] * 2}, "ascending"),
    ({"depths": b"\x01", "siblings": []}, "siblings"),
    ({"depths": b"", "siblings": [bytes(32)]}, "siblings"),
    ({"depths": b"\x01", "siblings": [bytes(31)]}, "32 bytes"),
    ({"depths": b"", "siblings": [], "key": bytes(32)}, "both"),
    ({"depths": b"", "siblings": [], "value": bytes(32)}, "both"),
    ({"depths": b"", "siblings": [], "key": bytes(31), "value": bytes(32)}, "32 bytes"),
    ({"depths": bytes(range(256)) + b"\x00", "siblings": []}, "longer"),
    ({"depths": "", "siblings": []}, "expected bytes"),
    ({"siblings": [], "depths": b""}, "order"),
    ({"depths": b""}, "required"),
    ({"depths": b"", "siblings": [], "extra": 1}, "unknown"),
    ({"depths": b"", "siblings": [], "value": bytes(32), "key": bytes(32)}, "order"),
])
def test_malformed_proofs_are_rejected(wire: dict[str, object], match: str) -> None:
    import msgpack

    with pytest.raises(DecodeError, match=match):
        MapProof.decode(msgpack.packb(wire, use_bin_type=True))


def test_non_canonical_and_trailing_bytes_are_rejected() -> None:
    _, _, proof, _ = sample_proofs()[0]
    wire = proof.encode()
    with pytest.raises(DecodeError):
        MapProof.decode(wire + b"\x00")
    with pytest.raises(DecodeError):
        MapProof.decode(wire[:-1])
    # The depths as bin16 rather than bin8: the same value, not the canonical bytes.
    i = wire.index(b"\xc4", 1)
    with pytest.raises(DecodeError, match="canonical"):
        MapProof.decode(wire[:i] + b"\xc5\x00" + wire[i + 1:])


def test_verifier_says_what_failed() -> None:
    key, val, proof, root = sample_proofs()[0]
    assert val is not None
    for args, match in [
        ((root[:31], key, val, proof), "root is 31 bytes"),
        ((root, key[:31], val, proof), "key is 31 bytes"),
        ((root, key, val[:31], proof), "value hash is 31 bytes"),
        ((root, key, val, proof.encode()), "expected a MapProof"),
        ((root, key, None, proof), "without another leaf must be of the empty map"),
    ]:
        with pytest.raises(MapProofError, match=match) as info:
            verify_map_proof(*args)  # type: ignore[arg-type]
        assert isinstance(info.value, ProofError) and isinstance(info.value, LedgerError)
    absent, _, aproof, _ = sample_proofs()[-1]
    assert aproof.key is not None
    # The other leaf must lie on the queried key's path, at every branching named.
    stray = flip(aproof.key, aproof.depths[0])
    forged = MapProof(depths=aproof.depths, siblings=aproof.siblings, key=stray,
                      value=aproof.value)
    with pytest.raises(MapProofError, match="leaves the path at bit"):
        verify_map_proof(root, absent, None, forged)


@given(st.one_of(
    st.dictionaries(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32),
                    max_size=40),
    st.dictionaries(keys_st, values_st, max_size=40)))  # many keys in one bucket
def test_a_map_built_from_sorted_keys_is_the_map_set_many_makes(items: dict[bytes, bytes]
                                                                ) -> None:
    keys = sorted(items)
    built = StatusMap.from_sorted(keys, [items[k] for k in keys])
    assert built.root() == ref_root(items)
    assert [leaf[1] for leaf in built.leaves()] == keys
    grown = StatusMap()
    grown.set_many(items.items())
    assert built.leaves() == grown.leaves() and len(built) == len(items)
    if len(keys) > 1:
        with pytest.raises(ValueError, match=r"^\[1\]: keys are not in increasing order"):
            StatusMap.from_sorted([keys[1], keys[0]], [items[keys[1]], items[keys[0]]])


@settings(max_examples=150, deadline=None)
@given(items=st.dictionaries(keys_st, values_st, max_size=24), data=st.data())
def test_deleting_keys_leaves_the_map_of_the_rest(items: dict[bytes, bytes],
                                                  data: st.DataObject) -> None:
    m = StatusMap()
    m.set_many(items.items())
    gone = data.draw(st.sets(st.sampled_from(sorted(items))) if items else st.just(set()))
    absent = [k for k in data.draw(st.lists(keys_st, max_size=3)) if k not in items]
    m.delete_many([*gone, *absent, *gone])  # absent keys and repeats are passed over
    rest = {k: v for k, v in items.items() if k not in gone}
    assert m.root() == ref_root(rest)
    assert len(m) == len(rest)
    assert [leaf[1] for leaf in m.leaves()] == sorted(rest)
    for k in [*items, *absent]:
        assert m.get(k) == rest.get(k)
        assert m.prove(k) == ref_proof(rest, k)
    # And it goes on as a map of the rest would.
    m.set_many(list(items.items())[:3])
    rest.update(list(items.items())[:3])
    assert m.root() == ref_root(rest)


def test_deleting_across_the_dense_levels() -> None:
    def key(prefix: int, rest: int) -> bytes:
        return prefix.to_bytes(2, "big") + rest.to_bytes(30, "big")

    pool = [key(0, 0), key(0, 1), key(0, 1 << 239), key(1, 0), key(0x8000, 5),
            key(0xFFFF, 0), key(0xFFFE, 2**240 - 1), key(0x7FFF, 3)]
    items = {k: value(i) for i, k in enumerate(pool)}
    for i in range(len(pool)):
        m = StatusMap.from_sorted(sorted(items), [items[k] for k in sorted(items)])
        m.delete_many(pool[i:])
        rest = {k: items[k] for k in pool[:i]}
        assert m.root() == ref_root(rest) and len(m) == i
