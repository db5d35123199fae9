"""tlog-witness add-checkpoint: strict parsing and one test per verdict."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.checkpoint import Checkpoint, sign_checkpoint
from ledger.cosignature import CosignatureSigner, CosignatureVerifier, cosignature_timestamp
from ledger.merkle import EMPTY_ROOT, leaf_hash
from ledger.note import Ed25519Signer, Ed25519Verifier, open_note
from ledger.tree import MerkleTree
from ledger.witness import (
    MAX_PROOF_LINES,
    Cosigned,
    MalformedWitnessRequest,
    cosignature_lines,
    decide,
    format_add_checkpoint,
    parse_add_checkpoint,
)

ORIGIN = "log.example/witnessed"
_LOG_KEY = Ed25519PrivateKey.generate()
LOG = Ed25519Signer.from_private_key(ORIGIN, _LOG_KEY)
LOG_VERIFIER = Ed25519Verifier.from_public_key(ORIGIN, _LOG_KEY.public_key())
STRANGER = Ed25519Signer.from_private_key(ORIGIN, Ed25519PrivateKey.generate())
_W_KEY = Ed25519PrivateKey.generate()
WITNESS = CosignatureSigner.from_private_key("witness.example/w1", _W_KEY)
LOGS = {ORIGIN: [LOG_VERIFIER]}

TREE = MerkleTree.from_leaf_hashes(leaf_hash(b"entry %d" % i) for i in range(40))


def note(size: int, signer: Ed25519Signer = LOG, root: bytes | None = None) -> bytes:
    return sign_checkpoint(Checkpoint(ORIGIN, size, root or TREE.root(size)), signer)


def body(old: int, size: int, **kw: object) -> bytes:
    proof = TREE.consistency_proof(old, size) if 0 < old <= size else []
    return format_add_checkpoint(old, proof, note(size, **kw))  # type: ignore[arg-type]


def seen(size: int) -> dict[str, Cosigned]:
    return {ORIGIN: Cosigned(size, TREE.root(size))}


def test_a_consistent_checkpoint_is_cosigned_and_the_lines_verify() -> None:
    verdict = decide(body(10, 25), logs=LOGS, cosigned=seen(10))
    assert (verdict.status, verdict.reason) == (200, "cosigned")
    assert verdict.request is not None and verdict.request.checkpoint.size == 25
    lines = cosignature_lines(verdict.request.note, WITNESS, 1_700_000_000)
    opened = open_note(verdict.request.note + lines,
                       [CosignatureVerifier.from_public_key(WITNESS.name, _W_KEY.public_key())])
    (sig,) = opened.signatures
    assert cosignature_timestamp(sig.signature) == 1_700_000_000


def test_old_zero_with_no_proof_is_cosigned_for_a_new_log() -> None:
    assert decide(body(0, 25), logs=LOGS, cosigned={}).status == 200


def test_the_same_checkpoint_again_is_cosigned_afresh() -> None:
    assert decide(body(25, 25), logs=LOGS, cosigned=seen(25)).status == 200


def test_a_stale_old_size_is_409_with_the_size_last_cosigned() -> None:
    verdict = decide(body(10, 25), logs=LOGS, cosigned=seen(20))
    assert verdict.status == 409
    assert verdict.size_body() == b"20\n"
    assert not verdict.evidence
    assert decide(body(0, 25), logs=LOGS, cosigned=seen(20)).size_body() == b"20\n"
    assert decide(body(3, 25), logs=LOGS, cosigned={}).size_body() == b"0\n"


def test_the_same_size_with_another_root_is_a_409_conflict_kept_as_evidence() -> None:
    forged = format_add_checkpoint(20, [], note(20, root=hashlib.sha256(b"fork").digest()))
    verdict = decide(forged, logs=LOGS, cosigned=seen(20))
    assert verdict.status == 409 and verdict.latest_size is None
    assert verdict.evidence and "cosigned with root" in verdict.reason


def test_a_bad_proof_is_422() -> None:
    proof = TREE.consistency_proof(10, 25)
    flipped = [proof[0][:-1] + bytes([proof[0][-1] ^ 1]), *proof[1:]]
    for bad in (flipped, proof[:-1], [*proof, proof[0]], []):
        verdict = decide(format_add_checkpoint(10, bad, note(25)), logs=LOGS, cosigned=seen(10))
        assert verdict.status == 422, bad
        assert verdict.evidence


def test_a_checkpoint_inconsistent_with_what_was_cosigned_is_422() -> None:
    other = MerkleTree.from_leaf_hashes(leaf_hash(b"other %d" % i) for i in range(25))
    proof = other.consistency_proof(10, 25)
    forged = format_add_checkpoint(10, proof, note(25, root=other.root()))
    assert decide(forged, logs=LOGS, cosigned=seen(10)).status == 422


def test_a_proof_from_zero_is_422() -> None:
    stray = format_add_checkpoint(0, [TREE.root(1)], note(25))
    assert decide(stray, logs=LOGS, cosigned={}).status == 422


def test_an_empty_tree_must_have_the_empty_root() -> None:
    assert decide(format_add_checkpoint(0, [], note(0, root=EMPTY_ROOT)), logs=LOGS,
                  cosigned={}).status == 200
    assert decide(format_add_checkpoint(0, [], note(0, root=TREE.root(1))), logs=LOGS,
                  cosigned={}).status == 422


def test_no_trusted_signature_is_403() -> None:
    verdict = decide(body(10, 25, signer=STRANGER), logs=LOGS, cosigned=seen(10))
    assert verdict.status == 403 and verdict.note is None


def test_an_unknown_origin_is_404() -> None:
    other = Ed25519Signer.from_private_key("other.example/log", _LOG_KEY)
    cp = sign_checkpoint(Checkpoint("other.example/log", 3, TREE.root(3)), other)
    assert decide(format_add_checkpoint(0, [], cp), logs=LOGS, cosigned={}).status == 404


def test_old_over_the_checkpoint_size_is_400() -> None:
    verdict = decide(format_add_checkpoint(30, [], note(25)), logs=LOGS, cosigned=seen(30))
    assert verdict.status == 400 and "over the checkpoint's size" in verdict.reason


@pytest.mark.parametrize(("raw", "reason"), [
    (b"old 1\n", "no empty line"),
    (b"old 01\n\n", "canonical decimal"),
    (b"old -1\n\n", "canonical decimal"),
    (b"new 1\n\n", "'old <canonical decimal size>'"),
    (b"old 1 \n\n", "canonical decimal"),
    (b"old \xff\n\n", "not ASCII"),
    (b"old 1\nnot base64!\n\n", "proof line 1"),
    (b"old 1\n" + base64.b64encode(b"short") + b"\n\n", "32-byte hash"),
    (b"old 1\n" + (base64.b64encode(bytes(32)) + b"\n") * (MAX_PROOF_LINES + 1) + b"\n",
     "more than 63"),
    (b"old 1\n\nnot a note", "the checkpoint"),
    (b"old 1\n\nx\n1\nAA==\n\n\xe2\x80\x94 x AAAAAAA=\n", "the checkpoint"),
])
def test_malformed_bodies_are_400_saying_why(raw: bytes, reason: str) -> None:
    with pytest.raises(MalformedWitnessRequest, match=reason):
        parse_add_checkpoint(raw)
    verdict = decide(raw, logs=LOGS, cosigned={})
    assert verdict.status == 400 and reason in verdict.reason


def test_a_parsed_request_keeps_the_note_verbatim() -> None:
    raw = body(10, 25)
    request = parse_add_checkpoint(raw)
    assert request.old_size == 10 and request.proof == tuple(TREE.consistency_proof(10, 25))
    assert raw.endswith(request.note) and request.checkpoint.root == TREE.root(25)
