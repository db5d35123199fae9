"""tlog-proof: strict parsing, one rejection per malformed-input class, canonical
round trips, verification against a log key and a cosigned checkpoint, and bit flips."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.checkpoint import Checkpoint, sign_checkpoint
from ledger.cosignature import CosignatureSigner, CosignatureVerifier
from ledger.errors import LedgerError
from ledger.merkle import leaf_hash
from ledger.note import Ed25519Signer, Ed25519Verifier
from ledger.tlog_proof import (
    HEADER,
    MAX_HASHES,
    MalformedProofError,
    ProofRejectedError,
    TlogProof,
    format_proof,
    log_key_opener,
    parse_proof,
    verify_proof,
)
from ledger.tree import MerkleTree

ORIGIN = "example.com/proofs"
LOG_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
LOG = Ed25519Signer.from_private_key(ORIGIN, LOG_KEY)
LOG_VERIFIER = Ed25519Verifier.from_public_key(ORIGIN, LOG_KEY.public_key())
WITNESS_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
WITNESS = CosignatureSigner.from_private_key("witness.example", WITNESS_KEY)
WITNESS_VERIFIER = CosignatureVerifier.from_public_key("witness.example",
                                                       WITNESS_KEY.public_key())

ENTRIES = [f"entry {i}".encode() for i in range(13)]
TREE = MerkleTree.from_leaf_hashes(leaf_hash(e) for e in ENTRIES)
NOTE = sign_checkpoint(Checkpoint(ORIGIN, TREE.size, TREE.root()), LOG)


def proof_for(index: int, *, extra: bytes | None = b"opaque", note: bytes = NOTE
              ) -> TlogProof:
    return TlogProof(index, tuple(TREE.inclusion_proof(index, TREE.size)), note, extra)


def test_every_index_round_trips_and_verifies() -> None:
    for index in range(TREE.size):
        proof = proof_for(index, extra=None if index % 2 else ENTRIES[index])
        data = format_proof(proof)
        assert data.startswith(f"{HEADER}\n".encode())
        assert parse_proof(data) == proof and format_proof(parse_proof(data)) == data
        cp = verify_proof(proof, leaf_hash(ENTRIES[index]), log_key_opener(LOG_VERIFIER),
                          origin=ORIGIN)
        assert (cp.size, cp.root) == (TREE.size, TREE.root())


def test_the_layout_is_the_specs() -> None:
    data = format_proof(proof_for(5, extra=b"hi"))
    head, _, rest = data.partition(b"\n\n")
    lines = head.decode().split("\n")
    assert lines[:3] == [HEADER, "extra aGk=", "index 5"]
    assert len(lines) == 3 + len(TREE.inclusion_proof(5, TREE.size))
    assert rest == NOTE  # the checkpoint, verbatim


def test_a_single_leaf_tree_has_no_proof_lines() -> None:
    note = sign_checkpoint(Checkpoint(ORIGIN, 1, leaf_hash(b"only")), LOG)
    proof = TlogProof(0, (), note)
    data = format_proof(proof)
    assert data == f"{HEADER}\nindex 0\n\n".encode() + note
    assert parse_proof(data) == proof
    verify_proof(proof, leaf_hash(b"only"), log_key_opener(LOG_VERIFIER))


def _replace_line(data: bytes, number: int, new: bytes) -> bytes:
    lines = data.split(b"\n")
    lines[number - 1] = new
    return b"\n".join(lines)


GOOD = format_proof(proof_for(5))
H0 = base64.b64encode(TREE.inclusion_proof(5, TREE.size)[0])

# One case per class of malformed input: (bytes, the line named, words in the reason).
MALFORMED = [
    (b"", None, "no empty line"),
    (GOOD.replace(b"\n\n", b"\n", 1), None, None),  # the checkpoint then parses as proof
    (_replace_line(GOOD, 1, b"c2sp.org/tlog-proof@v2"), 1, "first line"),
    (_replace_line(GOOD, 1, b"c2sp.org/tlog-proof@v1\r"), 1, "printable ASCII"),
    (_replace_line(GOOD, 2, b"extra "), 2, "empty"),
    (_replace_line(GOOD, 2, b"extra aGk"), 2, "base64"),
    (_replace_line(GOOD, 2, b"extra aGl="), 2, "canonical"),
    (_replace_line(GOOD, 2, b"extra  aGk="), 2, "base64"),
    (_replace_line(GOOD, 3, b"index 05"), 3, "canonical decimal"),
    (_replace_line(GOOD, 3, b"index -1"), 3, "canonical decimal"),
    (_replace_line(GOOD, 3, b"index 9223372036854775808"), 3, "below 2^63"),
    (_replace_line(GOOD, 3, b"index \xd9\xa3"), 3, "printable ASCII"),  # Arabic-Indic 3
    (_replace_line(GOOD, 3, b"Index 5"), 3, "expected 'index"),
    (GOOD.replace(b"\nindex 5\n", b"\nindex 5\nextra aGk=\n"), 4, "base64"),
    (GOOD.replace(H0, H0[:-4] + b"AA=="), 4, "bytes, not 32"),
    (GOOD.replace(H0, H0 + b" "), 4, "base64"),
    (f"{HEADER}\nindex 0\n".encode() + (H0 + b"\n") * (MAX_HASHES + 1)
     + b"\n" + NOTE, 3 + MAX_HASHES, "more than 63"),
    (GOOD + b"\n", None, "checkpoint"),  # trailing data after the note
    (GOOD[:-1], None, "checkpoint"),  # the note's last newline cut off
    (GOOD.replace(f"{ORIGIN}\n13\n".encode(), f"{ORIGIN}\n013\n".encode()), None,
     "checkpoint"),
    (GOOD.replace(b"\n\n", b"\n\n\n", 1), None, "checkpoint"),
]


@pytest.mark.parametrize("data, line, words", MALFORMED)
def test_each_malformed_input_is_refused_naming_its_line(
        data: bytes, line: int | None, words: str | None) -> None:
    with pytest.raises(MalformedProofError) as caught:
        parse_proof(data)
    if line is not None:
        assert caught.value.line == line
        assert str(caught.value).startswith(f"line {line}: ")
    if words is not None:
        assert words in str(caught.value)


def test_a_proof_cannot_be_built_malformed_either() -> None:
    for bad in [dict(index=-1), dict(index=True), dict(hashes=(b"x",)),
                dict(hashes=(bytes(32),) * 64), dict(extra=b""),
                dict(checkpoint=b"not a note\n")]:
        fields = {"index": 0, "hashes": (), "checkpoint": NOTE, "extra": None, **bad}
        with pytest.raises(MalformedProofError):
            TlogProof(**fields)  # type: ignore[arg-type]


def test_verification_names_what_failed() -> None:
    proof = proof_for(5)
    opener = log_key_opener(LOG_VERIFIER)
    with pytest.raises(ProofRejectedError) as caught:
        verify_proof(proof, leaf_hash(b"another entry"), opener)
    assert caught.value.part == "inclusion" and caught.value.proof == proof

    wrong = dict(proof.__dict__, index=4)
    with pytest.raises(ProofRejectedError, match=r"^inclusion: "):
        verify_proof(TlogProof(**wrong), leaf_hash(ENTRIES[5]), opener)

    other_key = Ed25519PrivateKey.generate()
    stranger = Ed25519Verifier.from_public_key(ORIGIN, other_key.public_key())
    with pytest.raises(ProofRejectedError, match=r"^checkpoint: ") as caught:
        verify_proof(proof, leaf_hash(ENTRIES[5]), log_key_opener(stranger))
    assert caught.value.part == "checkpoint"

    with pytest.raises(ProofRejectedError, match="origin"):
        verify_proof(proof, leaf_hash(ENTRIES[5]), opener, origin="example.com/other")


def test_a_cosigned_checkpoint_is_kept_verbatim_and_its_cosignature_checked() -> None:
    cosigned = sign_checkpoint(Checkpoint(ORIGIN, TREE.size, TREE.root()),
                               [LOG, WITNESS.at(1_700_000_000)])
    proof = proof_for(7, note=cosigned)
    data = format_proof(proof)
    assert data.endswith(cosigned) and parse_proof(data) == proof
    opener = log_key_opener(LOG_VERIFIER, cosigners=[WITNESS_VERIFIER])
    verify_proof(proof, leaf_hash(ENTRIES[7]), opener)
    # A forged cosignature by a known witness rejects the checkpoint.
    forged = cosigned[:-10] + (b"A" if cosigned[-10:-9] != b"A" else b"B") + cosigned[-9:]
    with pytest.raises((ProofRejectedError, MalformedProofError)):
        verify_proof(parse_proof(format_proof(proof_for(7, note=forged))),
                     leaf_hash(ENTRIES[7]), opener)


def test_every_bit_flip_outside_the_extra_data_is_caught() -> None:
    """Flip each bit of a proof: it must fail to parse or to verify, unless the flip
    hit the extra data, which the format leaves unauthenticated."""
    proof = proof_for(6, extra=b"x" * 3)
    data = format_proof(proof)
    extra_line = data.split(b"\n")[1]
    start = data.index(extra_line)
    opener = log_key_opener(LOG_VERIFIER)
    leaf = leaf_hash(ENTRIES[6])
    survived = []
    for i in range(len(data)):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[i] ^= 1 << bit
            try:
                verify_proof(parse_proof(bytes(flipped)), leaf, opener)
            except LedgerError:
                continue
            survived.append(i)
    assert all(start + len("extra ") <= i < start + len(extra_line) for i in survived)
