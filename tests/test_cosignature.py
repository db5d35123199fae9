"""cosignature/v1: key IDs, the signed message, timestamps, and merging witness lines."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from ledger.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from ledger.cosignature import (
    MAX_TIMESTAMP,
    CosignatureSigner,
    CosignatureVerifier,
    add_cosignatures,
    cosignature_timestamp,
    cosigned_message,
    cosigner_verifier_key,
    new_cosignature_signer,
    new_cosignature_verifier,
)
from ledger.errors import InvalidSignatureError, MalformedNoteError, UnverifiedNoteError
from ledger.note import (
    ALG_COSIGNATURE_V1,
    ALG_ED25519,
    Ed25519Signer,
    Ed25519Verifier,
    format_signature_line,
    generate_key,
    key_id,
    new_verifier,
    open_note,
    parse_signature_line,
    parse_verifier_key,
    raw_public_key,
    sign_note,
    split_note,
)

ROOT = bytes(range(32))
LOG_KEY = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)
LOG = Ed25519Signer.from_private_key("example.com/log", LOG_KEY)
LOG_V = Ed25519Verifier.from_public_key("example.com/log", LOG_KEY.public_key())
W_KEY = Ed25519PrivateKey.from_private_bytes(b"\x02" * 32)
WITNESS = CosignatureSigner.from_private_key("w.example/w1", W_KEY)
WITNESS_V = CosignatureVerifier.from_public_key("w.example/w1", W_KEY.public_key())
CHECKPOINT = Checkpoint("example.com/log", 7, ROOT)


def test_message_bytes() -> None:
    # The example message in c2sp.org/tlog-cosignature.
    text = b"example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    assert cosigned_message(text, 1679315147) == b"cosignature/v1\ntime 1679315147\n" + text
    assert cosigned_message(text, 0).startswith(b"cosignature/v1\ntime 0\n")


def test_spec_example_line_timestamp() -> None:
    # The witness line of the c2sp.org/tlog-cosignature example; its message is signed
    # at time 1679315147, the time in the spec's example message.
    line = ("— witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dl"
            "rDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==")
    sig = parse_signature_line(line)
    assert len(sig.signature) == 72
    assert cosignature_timestamp(sig.signature) == 1679315147


def test_transparency_dev_timestamp_vector() -> None:
    # From transparency-dev/formats note/note_cosigv1_test.go (TestCoSigV1Timestamp).
    line = ("— x ZGhGuQAAAABm/qTPeyKXD+R2rzyQsxPiP8mXum7qq/iF0u4vanlqJyocWODBt97w9uL+8qT7S5gxEHWW"
            "OworDcFiEBYJXORmnFBOBA==")
    assert cosignature_timestamp(parse_signature_line(line).signature) == 1727964367
    # The same test's "wrong type of signature": a plain 64-byte Ed25519 signature.
    plain = ("— x eQjRQm6eSKzFoiYalgwCPXu2y3ijtg68is9M46JKxuZB+dRfTmeQeDBoXnvxZx2ugnkyV+MUMLXpWs1"
             "hPb/W/4xkNQY=")
    with pytest.raises(MalformedNoteError):
        cosignature_timestamp(parse_signature_line(plain).signature)


def test_transparency_dev_native_cosigner_vkey_parses() -> None:
    # From transparency-dev/formats TestCoSigV1NewVerifier: a native 0x04 verifier key.
    vkey = "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2"
    v = new_cosignature_verifier(vkey)
    assert (v.name, v.key_id) == ("remora.n621.de", 0xDA77ADE7)
    assert parse_verifier_key(vkey).key_type == ALG_COSIGNATURE_V1


def test_cosignature_key_id_differs_from_ed25519_key_id() -> None:
    pub = raw_public_key(W_KEY.public_key())
    plain = Ed25519Signer.from_private_key("w.example/w1", W_KEY)
    assert WITNESS.key_id == key_id("w.example/w1", ALG_COSIGNATURE_V1, pub)
    assert plain.key_id == key_id("w.example/w1", ALG_ED25519, pub)
    assert WITNESS.key_id != plain.key_id


def test_vkey_round_trip_and_type() -> None:
    vkey = cosigner_verifier_key("w.example/w1", W_KEY.public_key())
    v = new_cosignature_verifier(vkey)
    assert (v.name, v.key_id) == (WITNESS.name, WITNESS.key_id)
    with pytest.raises(MalformedNoteError):
        new_verifier(vkey)  # a 0x04 key is not a plain Ed25519 verifier
    _, plain_vkey = generate_key("w.example/w1")
    with pytest.raises(MalformedNoteError):
        new_cosignature_verifier(plain_vkey)


def test_signer_from_go_private_key_string() -> None:
    skey, vkey = generate_key("w.example/w2")
    cosigner = new_cosignature_signer(skey)
    plain = new_verifier(vkey)
    assert cosigner.key_id != plain.key_id
    pub = parse_verifier_key(vkey).public_key
    assert cosigner.key_id == key_id("w.example/w2", ALG_COSIGNATURE_V1, pub)


def test_payload_layout() -> None:
    text = CHECKPOINT.format().encode()
    sig = WITNESS.sign(text, 1_700_000_000)
    assert len(sig) == 72
    assert sig[:8] == (1_700_000_000).to_bytes(8, "big")
    W_KEY.public_key().verify(sig[8:], cosigned_message(text, 1_700_000_000))
    _, [line] = split_note(sign_note(CHECKPOINT.format(), WITNESS.at(1_700_000_000)))
    assert len(line.key_id.to_bytes(4, "big") + line.signature) == 76


def test_cosigned_checkpoint_opens_with_timestamps() -> None:
    msg = sign_checkpoint(CHECKPOINT, [LOG, WITNESS.at(1_700_000_000)])
    cp, note = open_checkpoint(msg, LOG_V, cosigners=[WITNESS_V])
    assert cp == CHECKPOINT
    [cosig] = [s for s in note.signatures if s.name == "w.example/w1"]
    assert WITNESS_V.timestamp(cosig) == 1_700_000_000
    with pytest.raises(MalformedNoteError):
        WITNESS_V.timestamp(note.signatures[0])  # the log's signature, not this key's


def test_bad_cosignature_rejects() -> None:
    text, [log_sig, cosig] = split_note(
        sign_checkpoint(CHECKPOINT, [LOG, WITNESS.at(1_700_000_000)]))
    # Moving the time without re-signing breaks the signature.
    moved = (1_700_000_001).to_bytes(8, "big") + cosig.signature[8:]
    forged = format_signature_line(type(cosig)(cosig.name, cosig.key_id, moved))
    msg = (text + "\n" + format_signature_line(log_sig) + forged).encode()
    with pytest.raises(InvalidSignatureError):
        open_checkpoint(msg, LOG_V, cosigners=[WITNESS_V])
    # Unknown to a verifier without the witness key: ignored.
    assert open_checkpoint(msg, LOG_V)[0] == CHECKPOINT


def test_cosignature_does_not_verify_as_plain_signature() -> None:
    msg = sign_note(CHECKPOINT.format(), WITNESS.at(5))
    plain = Ed25519Verifier.from_public_key("w.example/w1", W_KEY.public_key())
    with pytest.raises(UnverifiedNoteError):
        open_note(msg, [plain])  # different key ID: the line is simply unknown
    assert not plain.verify(CHECKPOINT.format().encode(), split_note(msg)[1][0].signature)


def test_timestamp_bounds() -> None:
    assert cosignature_timestamp(MAX_TIMESTAMP.to_bytes(8, "big") + bytes(64)) == MAX_TIMESTAMP
    with pytest.raises(MalformedNoteError):
        cosignature_timestamp((MAX_TIMESTAMP + 1).to_bytes(8, "big") + bytes(64))
    with pytest.raises(MalformedNoteError):
        cosignature_timestamp(bytes(71))
    for bad in (-1, MAX_TIMESTAMP + 1):
        with pytest.raises(MalformedNoteError):
            WITNESS.at(bad)
    assert not WITNESS_V.verify(CHECKPOINT.format().encode(),
                                (MAX_TIMESTAMP + 1).to_bytes(8, "big") + bytes(64))


def test_only_checkpoints_are_cosigned() -> None:
    with pytest.raises(MalformedNoteError):
        sign_note("hello\n", WITNESS.at(1))


def test_extension_lines_are_covered() -> None:
    cp = Checkpoint("example.com/log", 7, ROOT, ("Extendo",))
    sig = WITNESS.sign(cp.format().encode(), 9)
    assert WITNESS_V.verify(cp.format().encode(), sig)
    assert not WITNESS_V.verify(cp.format().replace("Extendo", "Extend@").encode(), sig)


@given(st.integers(0, MAX_TIMESTAMP))
def test_timestamp_round_trip(t: int) -> None:
    sig = WITNESS.sign(CHECKPOINT.format().encode(), t)
    assert cosignature_timestamp(sig) == t
    assert WITNESS_V.verify(CHECKPOINT.format().encode(), sig)


# ---- Merging cosignatures into a signed checkpoint ---------------------------------------


def _cosig_lines(*signers: object) -> str:
    msg = sign_note(CHECKPOINT.format(), signers)  # type: ignore[arg-type]
    return "".join(format_signature_line(s) for s in split_note(msg)[1])


def test_add_cosignatures() -> None:
    logged = sign_checkpoint(CHECKPOINT, LOG)
    merged = add_cosignatures(logged, _cosig_lines(WITNESS.at(100)))
    assert merged.startswith(logged)
    _, note = open_checkpoint(merged, LOG_V, cosigners=[WITNESS_V])
    assert [s.name for s in note.signatures] == ["example.com/log", "w.example/w1"]


def test_add_cosignatures_dedups_and_replaces_stale() -> None:
    logged = sign_checkpoint(CHECKPOINT, LOG)
    once = add_cosignatures(logged, _cosig_lines(WITNESS.at(100)).encode())
    assert add_cosignatures(once, _cosig_lines(WITNESS.at(100))) == once
    fresher = add_cosignatures(once, _cosig_lines(WITNESS.at(200)))
    _, sigs = split_note(fresher)
    assert len(sigs) == 2
    _, note = open_checkpoint(fresher, LOG_V, cosigners=[WITNESS_V])
    assert WITNESS_V.timestamp(note.signatures[1]) == 200


def test_add_cosignatures_takes_signature_objects() -> None:
    logged = sign_checkpoint(CHECKPOINT, LOG)
    _, sigs = split_note(sign_note(CHECKPOINT.format(), WITNESS.at(3)))
    assert add_cosignatures(logged, sigs) == add_cosignatures(logged, _cosig_lines(WITNESS.at(3)))


@pytest.mark.parametrize("lines", [
    "not a signature line\n",
    "— w.example/w1 AAAA\n",
    "— w.example/w1 !!!!\n",
    b"\xff\n",
    "— w.example/w1 AAAAAAAA",  # no final newline
    "\n",
])
def test_add_cosignatures_rejects_bad_lines(lines: str | bytes) -> None:
    with pytest.raises(MalformedNoteError):
        add_cosignatures(sign_checkpoint(CHECKPOINT, LOG), lines)


def test_add_cosignatures_caps_the_total() -> None:
    logged = sign_checkpoint(CHECKPOINT, LOG)
    many = [CosignatureSigner.from_private_key(f"w{i}.example", W_KEY).at(1) for i in range(100)]
    with pytest.raises(MalformedNoteError, match="more than 100"):
        add_cosignatures(logged, _cosig_lines(*many))


def test_cosigned_checkpoint_that_go_checked() -> None:
    # Signed here, verified by Go; see tests/data/notes/README.md.
    data = Path(__file__).parent / "data" / "notes"
    log_vkey, witness_vkey = (data / "py-cosigned-checkpoint.keys").read_text().split()
    witness = new_cosignature_verifier(witness_vkey)
    msg = (data / "py-cosigned-checkpoint.note").read_bytes()
    cp, note = open_checkpoint(msg, new_verifier(log_vkey), cosigners=[witness])
    assert (cp.origin, cp.size) == ("example.com/pylog", 123456)
    assert witness.timestamp(note.signatures[1]) == 0x6B0BA52B
