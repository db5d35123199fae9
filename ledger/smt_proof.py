"""The status map's hashes, its proof format, and the proof verifier (no tree here).

The map is a binary Patricia trie (a compressed sparse Merkle tree) over 256-bit keys,
bit 0 being the most significant bit of the key's first byte. Its hash is a function of
the set of (key, value hash) pairs alone, never of the order they were set in:

    hash({})         = EMPTY                      only ever the root of the empty map
    hash({(k, v)})   = SHA-256(LEAF_TAG ‖ k ‖ v)   wherever that one key sits
    hash(S), |S| ≥ 2 = SHA-256(NODE_TAG ‖ d ‖ hash(S0) ‖ hash(S1))

where d (one byte) is the first bit at which the keys of S differ and S0, S1 are the
keys with bit d clear and set: both non-empty, so no node ever has an empty child and
the work per update or proof grows with the number of branchings on the key's path
(about log2 of the number of keys), not with the 256 bit levels nor with how long a
prefix two keys share. The depth is hashed because the verifier reads the key's bit at
that depth to pick a side; without it a proof could move a branching to another depth
and steer the walk away from a key that is present.

The tags are distinct from every other hash of the ledger (RFC 6962's 0x00/0x01
prefixes, event hashes that start with a msgpack map byte, the other text tags) and
cost nothing: leaf and node inputs fit in two SHA-256 blocks either way.

A proof lists, top down, the depth of every branching on the key's path and the hash
of the side the key does not take. It proves presence if the path ends at the key's
leaf, absence if it ends at another key's leaf (which the proof names) or, for the
empty map, at EMPTY.
"""

from __future__ import annotations

import dataclasses
import hashlib

from ledger.codec import Bin, Record, Seq, optional, spec
from ledger.errors import FieldValueError, ProofError

HASH_SIZE = 32
KEY_SIZE = 32
MAX_DEPTH = 256  # branchings on one path; one per key bit at most

LEAF_TAG = b"consent-ledger map leaf v1\x00"
NODE_TAG = b"consent-ledger map node v1\x00"
EMPTY = hashlib.sha256(b"consent-ledger map empty v1\x00").digest()
_KEY_TAG = b"consent-ledger map key v1\x00"

_sha256 = hashlib.sha256
# NODE_TAG ‖ d for every depth, built once: the hot loops only concatenate.
NODE_PREFIX = tuple(NODE_TAG + bytes([d]) for d in range(MAX_DEPTH))


class MapProofError(ProofError):
    """A status map proof does not prove what it is checked for."""


def _part(data: bytes) -> bytes:
    # Without lengths, ("ab", "c") and ("a", "bc") would give the same key.
    return len(data).to_bytes(2, "big") + data


def map_key(controller: str, subject: bytes, purpose: str) -> bytes:
    """The map key of (controller, subject commitment, purpose)."""
    head = _KEY_HEADS.get(controller)
    if head is None:
        head = _KEY_TAG + _part(controller.encode())
        if len(_KEY_HEADS) < _REMEMBERED:
            _KEY_HEADS[controller] = head
    tail = _KEY_TAILS.get(purpose)
    if tail is None:
        tail = _part(purpose.encode())
        if len(_KEY_TAILS) < _REMEMBERED:
            _KEY_TAILS[purpose] = tail
    return _sha256(head + _part(subject) + tail).digest()


# Controllers and purposes repeat in nearly every key: their encoded parts, remembered
# (up to a bound, so that many distinct names only cost the encoding again).
_REMEMBERED = 4096
_KEY_HEADS: dict[str, bytes] = {}
_KEY_TAILS: dict[str, bytes] = {}


def leaf_hash(key: bytes, value_hash: bytes) -> bytes:
    """SHA-256(LEAF_TAG ‖ key ‖ value_hash): the whole key, so a leaf's depth is moot."""
    return _sha256(LEAF_TAG + key + value_hash).digest()


def node_hash(depth: int, left: bytes, right: bytes) -> bytes:
    """SHA-256(NODE_TAG ‖ depth ‖ left ‖ right) of a branching at bit `depth`."""
    return _sha256(NODE_PREFIX[depth] + left + right).digest()


@dataclasses.dataclass(frozen=True)
class MapProof(Record):
    """A key's path in the status map: presence, or absence at another leaf or EMPTY.

    Wire form (canonical msgpack map, keys in this order, absent optionals omitted):
        depths    bin, one byte per branching, strictly ascending, ≤ 256 bytes
        siblings  array of bin32, the other side of each branching, same order
        key       bin32, only in an absence proof ending at another key's leaf
        value     bin32, that leaf's value hash; present exactly when `key` is
    New fields may only be added as optional ones, so old proofs keep one encoding.
    """

    MAX_SIZE = 12 * 1024  # 256 siblings of 34 bytes, the depths and two leaf fields

    depths: bytes = spec(Bin(max_len=MAX_DEPTH))
    siblings: tuple[bytes, ...] = spec(Seq(Bin(size=HASH_SIZE), max_items=MAX_DEPTH))
    key: bytes | None = optional(Bin(size=KEY_SIZE))
    value: bytes | None = optional(Bin(size=HASH_SIZE))

    def validate(self) -> None:
        depths = self.depths
        if len(self.siblings) != len(depths):
            raise FieldValueError(f"{len(self.siblings)} siblings for {len(depths)} depths",
                                  field="siblings")
        for i in range(1, len(depths)):
            if depths[i - 1] >= depths[i]:
                raise FieldValueError("must be strictly ascending", field="depths")
        if (self.key is None) != (self.value is None):
            raise FieldValueError("the other leaf needs both its key and its value",
                                  field="value" if self.value is None else "key")


def verify_map_proof(root: bytes, key: bytes, value_hash: bytes | None,
                     proof: MapProof) -> None:
    """Check that in the map with `root`, `key` maps to `value_hash` (None: is absent).

    Raises MapProofError saying what failed; returns None when the proof holds.
    """
    what = f"map proof for key {key.hex()[:16]}…"
    if len(root) != HASH_SIZE:
        raise MapProofError(f"{what}: root is {len(root)} bytes, not {HASH_SIZE}")
    if len(key) != KEY_SIZE:
        raise MapProofError(f"map proof: key is {len(key)} bytes, not {KEY_SIZE}")
    if type(proof) is not MapProof:
        raise MapProofError(f"{what}: expected a MapProof, got {type(proof).__name__}")
    depths, siblings = proof.depths, proof.siblings
    k = int.from_bytes(key, "big")
    if value_hash is not None:
        if len(value_hash) != HASH_SIZE:
            raise MapProofError(f"{what}: value hash is {len(value_hash)} bytes, "
                                f"not {HASH_SIZE}")
        if proof.key is not None:
            raise MapProofError(f"{what}: a presence proof names another leaf")
        h = _sha256(LEAF_TAG + key + value_hash).digest()
    elif proof.key is None:
        # Only the empty map has an EMPTY subtree: every branching has two keys below.
        if depths:
            raise MapProofError(f"{what}: an absence proof without another leaf must be "
                                f"of the empty map, but it has {len(depths)} branchings")
        h = EMPTY
    else:
        if proof.key == key:
            raise MapProofError(f"{what}: the absence proof ends at the key's own leaf")
        other = int.from_bytes(proof.key, "big")
        for d in depths:
            if (k ^ other) >> (255 - d) & 1:
                raise MapProofError(f"{what}: the other leaf's key leaves the path at bit {d}")
        h = _sha256(LEAF_TAG + proof.key + proof.value).digest()  # type: ignore[operator]

    sha = _sha256
    prefix = NODE_PREFIX
    for i in range(len(depths) - 1, -1, -1):
        d = depths[i]
        if k >> (255 - d) & 1:
            h = sha(prefix[d] + siblings[i] + h).digest()
        else:
            h = sha(prefix[d] + h + siblings[i]).digest()
    if h != root:
        claim = "absence" if value_hash is None else f"value {value_hash.hex()[:16]}…"
        raise MapProofError(f"{what}: proof of {claim} leads to root {h.hex()}, "
                            f"expected {root.hex()}")
