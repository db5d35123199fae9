"""Signed notes: known answers from the spec and from Go, and each way a note can be wrong."""

from __future__ import annotations

import base64
import contextlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.errors import (
    InvalidSignatureError,
    LedgerError,
    MalformedNoteError,
    NoteError,
    UnverifiedNoteError,
)
from ledger.note import (
    ALG_COSIGNATURE_V1,
    ALG_ED25519,
    MAX_NOTE_SIZE,
    Ed25519Signer,
    Ed25519Verifier,
    RememberingVerifier,
    Signature,
    Verifiers,
    format_signature_line,
    format_verifier_key,
    generate_key,
    is_valid_name,
    key_id,
    new_signer,
    new_verifier,
    open_note,
    parse_signature_line,
    parse_verifier_key,
    sign_note,
    split_note,
)

# From the C2SP signed-note example, as quoted in /work/shared/specs/formats.md.
SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_NOTE = (
    "This is an example message.\n\n— example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ON"
    "ncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
).encode()

# From golang.org/x/mod/sumdb/note/note_test.go (TestSign, TestOpen, TestVerifierList).
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = "If you think cryptography is the answer to your problem,\n" \
       "then you don't know what your problem is.\n"
PETER_B64 = "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE" \
            "6RyyBwJnAM="
PETER_SIG = f"— PeterNeumann {PETER_B64}\n"
ENOCH_SIG = "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01o" \
            "OTGwnWLox33WWd1RvMc+QQ=\n"

PETER = new_verifier(PETER_VKEY)
ENOCH = new_verifier(ENOCH_VKEY)


def note(*sig_lines: str, text: str = TEXT) -> bytes:
    return (text + "\n" + "".join(sig_lines)).encode()


# ---- Known answers ---------------------------------------------------------------------


def test_spec_example_verifies() -> None:
    n = open_note(SPEC_NOTE, [new_verifier(SPEC_VKEY)])
    assert n.text == "This is an example message.\n"
    assert [(s.name, s.key_id) for s in n.signatures] == [("example.com/foo", 0x530D903A)]
    assert n.unverified == ()


def test_go_signer_key_signs_go_expected_output() -> None:
    assert sign_note(TEXT, new_signer(PETER_SKEY)) == note(PETER_SIG)


def test_go_two_signatures_one_known() -> None:
    n = open_note(note(PETER_SIG, ENOCH_SIG), [PETER])
    assert n.text == TEXT
    assert [s.name for s in n.signatures] == ["PeterNeumann"]
    assert [(s.name, s.key_id) for s in n.unverified] == [("EnochRoot", 0xAF0CFE78)]


def test_go_two_signatures_both_known() -> None:
    n = open_note(note(PETER_SIG, ENOCH_SIG), [PETER, ENOCH])
    assert [s.name for s in n.signatures] == ["PeterNeumann", "EnochRoot"]
    assert n.unverified == ()


def test_key_ids_match_go() -> None:
    assert PETER.key_id == 0xC74F20A3
    assert ENOCH.key_id == 0xAF0CFE78
    raw = parse_verifier_key(PETER_VKEY).public_key
    assert key_id("PeterNeumann", ALG_ED25519, raw) == 0xC74F20A3
    assert format_verifier_key("PeterNeumann", ALG_ED25519, raw) == PETER_VKEY


# ---- Keys ------------------------------------------------------------------------------


def test_generate_key_round_trips() -> None:
    skey, vkey = generate_key("example.com/log")
    signer, verifier = new_signer(skey), new_verifier(vkey)
    assert (signer.name, signer.key_id) == (verifier.name, verifier.key_id)
    assert skey.startswith("PRIVATE+KEY+example.com/log+")
    n = open_note(sign_note("hello\n", signer), [verifier])
    assert n.text == "hello\n"


def test_keys_from_cryptography_objects() -> None:
    private = Ed25519PrivateKey.generate()
    signer = Ed25519Signer.from_private_key("a.example", private)
    verifier = Ed25519Verifier.from_public_key("a.example", private.public_key())
    assert signer.key_id == verifier.key_id
    assert verifier.verify(b"m", signer.sign(b"m"))
    assert not verifier.verify(b"n", signer.sign(b"m"))
    assert not verifier.verify(b"m", signer.sign(b"m")[:-1])


def _manglings(key: str) -> list[str]:
    # Go's TestNewVerifier/TestNewSigner: every proper substring and every byte + 1.
    out = [key[i:j] for i in range(len(key) + 1) for j in range(i + 1, len(key) + 1)
           if (i, j) != (0, len(key))]
    out += [key[:i] + chr(ord(key[i]) + 1) + key[i + 1:] for i in range(len(key))]
    return out


def test_verifier_key_manglings_rejected() -> None:
    for bad in _manglings(PETER_VKEY):
        with pytest.raises(MalformedNoteError):
            new_verifier(bad)


def test_signer_key_manglings_rejected() -> None:
    for bad in _manglings(PETER_SKEY):
        with pytest.raises(MalformedNoteError):
            new_signer(bad)


@pytest.mark.parametrize("vkey", [
    # From Go's TestNewVerifier: wrong key length and unknown algorithm, each with a
    # key ID recomputed to match.
    "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
    "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # uppercase ID
    "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TX",  # padding bits
    "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    "+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
])
def test_bad_verifier_keys(vkey: str) -> None:
    with pytest.raises(MalformedNoteError):
        parse_verifier_key(vkey)


def test_verifier_key_for_cosigner_type_parses_but_is_not_ed25519() -> None:
    raw = bytes(range(32))
    vkey = format_verifier_key("w.example", ALG_COSIGNATURE_V1, raw)
    parsed = parse_verifier_key(vkey)
    assert (parsed.key_type, parsed.public_key) == (ALG_COSIGNATURE_V1, raw)
    with pytest.raises(MalformedNoteError):
        new_verifier(vkey)


@pytest.mark.parametrize("name,ok", [
    ("example.com/log", True), ("ünïcode", True), ("", False), ("a+b", False),
    ("a b", False), ("a\u00a0b", False), ("a\u3000b", False), ("a\u2028b", False),
    ("a\x01b", False), ("a\ud800b", False), ("a\x7fb", True),
])
def test_name_rules(name: str, ok: bool) -> None:
    assert is_valid_name(name) is ok


# ---- Verifier collections --------------------------------------------------------------


def test_verifiers_lookup() -> None:
    known = Verifiers([PETER, ENOCH])
    assert known.lookup("PeterNeumann", 0xC74F20A3) is PETER
    assert known.lookup("PeterNeumann", 0xC74F20A4) is None
    assert known.lookup("PeterNeuman", 0xC74F20A3) is None
    assert len(known) == 2


def test_verifiers_refuse_ambiguous_keys() -> None:
    with pytest.raises(NoteError, match="ambiguous key EnochRoot\\+af0cfe78"):
        Verifiers([PETER, ENOCH, ENOCH])


# ---- Each way a note can be wrong -------------------------------------------------------


def test_unknown_signer_only_is_unverified() -> None:
    with pytest.raises(UnverifiedNoteError) as info:
        open_note(note(PETER_SIG, ENOCH_SIG), [])
    parsed = info.value.note  # type: ignore[attr-defined]
    assert parsed.signatures == ()
    assert [s.name for s in parsed.unverified] == ["PeterNeumann", "EnochRoot"]


def test_bad_signature_by_known_key_rejects() -> None:
    bad = PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]  # Go's TestOpen corruption
    with pytest.raises(InvalidSignatureError, match="PeterNeumann\\+c74f20a3"):
        open_note(note(bad), [PETER])


def test_bad_signature_even_beside_a_good_one_rejects() -> None:
    bad_enoch = ENOCH_SIG[:60] + "ABCD" + ENOCH_SIG[60:]
    with pytest.raises(InvalidSignatureError):
        open_note(note(PETER_SIG, bad_enoch), [PETER, ENOCH])


def test_bad_key_id_is_an_unknown_key() -> None:
    # The same signature bytes under another key ID belong to nobody we know.
    sig = parse_signature_line(PETER_SIG)
    other = format_signature_line(Signature(sig.name, sig.key_id ^ 1, sig.signature))
    with pytest.raises(UnverifiedNoteError):
        open_note(note(other), [PETER])
    n = open_note(note(other, PETER_SIG), [PETER])
    assert [s.key_id for s in n.unverified] == [sig.key_id ^ 1]


def test_same_key_id_other_name_is_unknown() -> None:
    renamed = PETER_SIG.replace("PeterNeumann", "CarmenSandiego")
    with pytest.raises(UnverifiedNoteError):
        open_note(note(renamed), [PETER])


def test_duplicate_signatures_as_go() -> None:
    # Go's TestOpen: repeated signatures by a known key count once; later ones are not
    # even checked. Identical unknown lines are kept once, differing ones all kept.
    bad_enoch = ENOCH_SIG[:60] + "ABCD" + ENOCH_SIG[60:]
    n = open_note(note(PETER_SIG, PETER_SIG, ENOCH_SIG, ENOCH_SIG, bad_enoch), [PETER])
    assert len(n.signatures) == 1
    assert [format_signature_line(s) for s in n.unverified] == [ENOCH_SIG, bad_enoch]


def test_duplicate_known_key_second_bad_is_skipped() -> None:
    bad = PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    assert len(open_note(note(PETER_SIG, bad), [PETER]).signatures) == 1
    with pytest.raises(InvalidSignatureError):
        open_note(note(bad, PETER_SIG), [PETER])


def test_too_many_signatures() -> None:
    assert open_note(note(*[PETER_SIG] * 100), [PETER]).signatures
    for known in ([PETER], []):
        with pytest.raises(MalformedNoteError, match="more than 100"):
            open_note(note(*[PETER_SIG] * 101), known)


def test_sixteen_distinct_signers_accepted() -> None:
    keys = [Ed25519PrivateKey.generate() for _ in range(16)]
    signers = [Ed25519Signer.from_private_key(f"s{i}.example", k) for i, k in enumerate(keys)]
    msg = sign_note(TEXT, signers)
    assert len(split_note(msg)[1]) == 16
    first = Ed25519Verifier.from_public_key("s0.example", keys[0].public_key())
    n = open_note(msg, [PETER, ENOCH, first])
    assert (len(n.signatures), len(n.unverified)) == (1, 15)


@pytest.mark.parametrize("msg", [
    # Go's TestOpen bad messages.
    TEXT.encode(),
    (TEXT + "\n").encode(),
    note(PETER_SIG[:-1]),
    b"\x01" + note(PETER_SIG),
    b"\xff" + note(PETER_SIG),
    note(f"— Bad Name {PETER_B64}"),
    note(PETER_SIG, "Unexpected line.\n"),
], ids=["no-sigs", "blank-no-sigs", "no-final-newline", "control", "bad-utf8", "bad-name",
        "junk-line"])
def test_go_malformed_notes(msg: bytes) -> None:
    with pytest.raises(MalformedNoteError):
        open_note(msg, [PETER])


def test_no_signature() -> None:
    with pytest.raises(MalformedNoteError):
        open_note((TEXT + "\n").encode(), [PETER])


@pytest.mark.parametrize("char", ["\x00", "\r", "\t", "\x1b", "\x1f"])
def test_control_characters(char: str) -> None:
    with pytest.raises(MalformedNoteError, match="control"):
        open_note(note(PETER_SIG, text=TEXT[:5] + char + TEXT[5:]), [PETER])
    with pytest.raises(MalformedNoteError, match="control"):
        open_note(note(PETER_SIG.replace("\n", char + "\n")), [PETER])


def test_missing_final_newline() -> None:
    with pytest.raises(MalformedNoteError):
        open_note(note(PETER_SIG).rstrip(b"\n"), [PETER])


def test_text_without_final_newline_cannot_be_signed() -> None:
    with pytest.raises(MalformedNoteError):
        sign_note(TEXT.rstrip("\n"), new_signer(PETER_SKEY))


@pytest.mark.parametrize("b64", [
    PETER_B64[:-2] + "N=",
    PETER_B64[:-1],
    PETER_B64 + "=",
    PETER_B64.replace("/", "_"),
    PETER_B64 + " ",
    "",
    "AAAA",  # decodes, but to fewer than 5 bytes
], ids=["padding-bits", "unpadded", "over-padded", "urlsafe", "trailing-space", "empty", "short"])
def test_bad_base64(b64: str) -> None:
    with pytest.raises(MalformedNoteError):
        open_note(note(f"— PeterNeumann {b64}\n"), [PETER])


def test_oversized() -> None:
    big = "x" * (MAX_NOTE_SIZE - 200) + "\n"
    signer = new_signer(PETER_SKEY)
    msg = sign_note(big, signer)
    assert open_note(msg, [PETER]).text == big
    with pytest.raises(MalformedNoteError, match="larger"):
        open_note(sign_note("y" * 100 + big, signer), [PETER])
    with pytest.raises(MalformedNoteError, match="larger"):
        sign_note("y" * 200 + big, signer)


def test_text_may_hold_empty_lines_and_the_last_one_splits() -> None:
    text = "a\n\nb\n\n"
    msg = sign_note(text, new_signer(PETER_SKEY))
    assert open_note(msg, [PETER]).text == text


def test_sign_refuses_duplicate_and_badly_named_signers() -> None:
    signer = new_signer(PETER_SKEY)
    with pytest.raises(NoteError):
        sign_note(TEXT, [signer, signer])

    class Misnamed:
        name, key_id = "bad name", 1

        def sign(self, msg: bytes) -> bytes:
            return b"sig"

    with pytest.raises(NoteError):
        sign_note(TEXT, Misnamed())


def test_sign_refuses_text_open_would_refuse() -> None:
    for text in ["a\x00\n", "a\ud800\n"]:
        with pytest.raises(MalformedNoteError):
            sign_note(text, new_signer(PETER_SKEY))


def test_signature_line_round_trip() -> None:
    sig = parse_signature_line(PETER_SIG)
    assert (sig.name, sig.key_id, len(sig.signature)) == ("PeterNeumann", 0xC74F20A3, 64)
    assert format_signature_line(sig) == PETER_SIG


# ---- Properties ------------------------------------------------------------------------

SIGNED = sign_note(TEXT, new_signer(PETER_SKEY))


@settings(max_examples=400)
@given(st.data())
def test_any_single_byte_change_breaks_or_leaves_signed_content(data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(SIGNED) - 1))
    b = data.draw(st.integers(0, 255).filter(lambda b: b != SIGNED[i]))
    mutated = SIGNED[:i] + bytes([b]) + SIGNED[i + 1:]
    try:
        n = open_note(mutated, [PETER])
    except NoteError:
        return
    assert n.text == TEXT
    assert [format_signature_line(s) for s in n.signatures] == [PETER_SIG]


@given(st.binary(max_size=400) | st.text(max_size=400).map(lambda s: s.encode("utf-8", "replace")))
def test_arbitrary_input_only_raises_note_errors(msg: bytes) -> None:
    with contextlib.suppress(NoteError):
        open_note(msg, [PETER])


@given(st.text(max_size=80))
def test_arbitrary_keys_only_raise_note_errors(key: str) -> None:
    for parse in (new_verifier, new_signer):
        with contextlib.suppress(LedgerError):
            parse(key)


def test_b64_sanity() -> None:
    # Guards the fixtures above: Go's expected signature is 4 + 64 bytes.
    assert len(base64.b64decode(PETER_SIG.split()[-1])) == 68


# ---- Made by Go (see tests/data/notes/README.md) ----------------------------------------

DATA = Path(__file__).parent / "data" / "notes"


def test_go_signed_note_opens_and_signing_here_gives_the_same_bytes() -> None:
    skey, vkey = (DATA / "go-golog.keys").read_text().split()
    msg = (DATA / "go-text.note").read_bytes()
    n = open_note(msg, [new_verifier(vkey)])
    assert n.text == "Signed by Go.\n\nLast line — with an em dash.\n"
    assert sign_note(n.text, new_signer(skey)) == msg


def test_a_remembering_verifier_checks_each_signature_once_and_remembers_only_successes(
        ) -> None:
    key = Ed25519PrivateKey.generate()
    signer = Ed25519Signer.from_private_key("log.example/remember", key)
    inner = Ed25519Verifier.from_public_key("log.example/remember", key.public_key())
    calls: list[bytes] = []

    class Counting:
        name, key_id = inner.name, inner.key_id

        def verify(self, msg: bytes, sig: bytes) -> bool:
            calls.append(msg)
            return inner.verify(msg, sig)

    v = RememberingVerifier(Counting(), remember=2)
    assert (v.name, v.key_id) == (inner.name, inner.key_id)
    good = [(b"msg %d\n" % i, signer.sign(b"msg %d\n" % i)) for i in range(3)]
    assert v.verify(*good[0]) and v.verify(*good[0]) and len(calls) == 1
    bad = (good[0][0], good[1][1])
    assert not v.verify(*bad) and not v.verify(*bad) and len(calls) == 3  # never remembered
    assert v.verify(*good[1]) and v.verify(*good[2]) and len(calls) == 5
    assert v.verify(*good[0]) and len(calls) == 6  # the oldest was forgotten: checked again
