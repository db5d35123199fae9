"""Checkpoints: strict parsing, format/parse round trips, and the origin == key name rule."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import assume, given
from hypothesis import strategies as st

from ledger.checkpoint import (
    MAX_SIZE,
    Checkpoint,
    MalformedCheckpointError,
    open_checkpoint,
    parse_checkpoint,
    sign_checkpoint,
)
from ledger.errors import InvalidSignatureError, MalformedNoteError, UnverifiedNoteError
from ledger.note import (
    Ed25519Signer,
    Ed25519Verifier,
    Signature,
    format_note,
    is_valid_name,
    new_signer,
    new_verifier,
    sign_note,
    split_note,
)

# The example in c2sp.org/tlog-checkpoint (its key is not published, so only the text).
SPEC_TEXT = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
ROOT = bytes(range(32))
ROOT_B64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="

LOG_KEY = Ed25519PrivateKey.from_private_bytes(bytes(32))
LOG = Ed25519Signer.from_private_key("example.com/log", LOG_KEY)
LOG_V = Ed25519Verifier.from_public_key("example.com/log", LOG_KEY.public_key())


def test_spec_example_parses_and_formats_back() -> None:
    cp = parse_checkpoint(SPEC_TEXT)
    assert (cp.origin, cp.size, cp.extensions) == ("example.com/behind-the-sofa", 20852163, ())
    assert cp.format() == SPEC_TEXT


def test_format_bytes() -> None:
    cp = Checkpoint("example.com/log", 0, ROOT, ("ext one",))
    assert cp.format() == f"example.com/log\n0\n{ROOT_B64}\next one\n"


@pytest.mark.parametrize("text,reason", [
    ("", "newline"),
    ("example.com/log\n1\n" + ROOT_B64, "newline"),
    ("example.com/log\n1\n", "three"),
    ("\n1\n" + ROOT_B64 + "\n", "origin is empty"),
    (" example.com/log\n1\n" + ROOT_B64 + "\n", "whitespace"),
    ("example.com/log \n1\n" + ROOT_B64 + "\n", "whitespace"),
    ("example.com/log\n01\n" + ROOT_B64 + "\n", "canonical"),
    ("example.com/log\n00\n" + ROOT_B64 + "\n", "canonical"),
    ("example.com/log\n+1\n" + ROOT_B64 + "\n", "canonical"),
    ("example.com/log\n-1\n" + ROOT_B64 + "\n", "canonical"),
    ("example.com/log\n 1\n" + ROOT_B64 + "\n", "canonical"),
    ("example.com/log\n1_000\n" + ROOT_B64 + "\n", "canonical"),
    ("example.com/log\n\u0661\n" + ROOT_B64 + "\n", "canonical"),  # Arabic-Indic one
    ("example.com/log\n0x10\n" + ROOT_B64 + "\n", "canonical"),
    ("example.com/log\n\n" + ROOT_B64 + "\n", "canonical"),
    (f"example.com/log\n{1 << 63}\n" + ROOT_B64 + "\n", "2\\^63"),
    ("example.com/log\n99999999999999999999\n" + ROOT_B64 + "\n", "canonical"),
    ("example.com/log\n1\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8\n", "base64"),
    ("example.com/log\n1\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh9=\n", "canonical"),
    ("example.com/log\n1\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd\n", "32 bytes"),
    ("example.com/log\n1\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gIQ==\n", "32 bytes"),
    ("example.com/log\n1\n" + ROOT_B64 + "\n\n", "extension"),
    ("example.com/log\n1\n" + ROOT_B64 + "\n\next\n", "extension"),
    ("example.com/log\n1\n" + ROOT_B64 + "\nbad\rext\n", "control"),
    ("example.com/log\n1\n" + ROOT_B64 + "\r\n", "base64"),
    ("example.com/log\r\n1\n" + ROOT_B64 + "\n", "whitespace"),
    ("example.com/log\n1\n" + ROOT_B64 + "\n" + "x\n" * 65, "extension lines"),
])
def test_parse_rejects(text: str, reason: str) -> None:
    with pytest.raises(MalformedNoteError, match=reason):
        parse_checkpoint(text)


def test_size_bounds() -> None:
    assert parse_checkpoint(f"o\n{MAX_SIZE}\n{ROOT_B64}\n").size == MAX_SIZE
    assert parse_checkpoint(f"o\n0\n{ROOT_B64}\n").size == 0
    for bad in (-1, MAX_SIZE + 1, True):
        with pytest.raises(MalformedCheckpointError):
            Checkpoint("o", bad, ROOT)


def test_constructor_rejects_what_parse_would() -> None:
    for args in [("", 1, ROOT), ("o", 1, ROOT[:31]), ("o", 1, ROOT, ("",)),
                 ("o", 1, ROOT, ("a\nb",))]:
        with pytest.raises(MalformedCheckpointError):
            Checkpoint(*args)  # type: ignore[arg-type]


_line = st.text(st.characters(min_codepoint=0x20, exclude_categories=("Cs",)), min_size=1,
                max_size=30)
_origin = _line.filter(lambda s: s == s.strip())
checkpoints = st.builds(Checkpoint, _origin, st.integers(0, MAX_SIZE),
                        st.binary(min_size=32, max_size=32),
                        st.lists(_line, max_size=4).map(tuple))


@given(checkpoints)
def test_format_parse_round_trip(cp: Checkpoint) -> None:
    assert parse_checkpoint(cp.format()) == cp


@given(checkpoints)
def test_signed_checkpoint_round_trip(cp: Checkpoint) -> None:
    assume(is_valid_name(cp.origin))
    signer = Ed25519Signer.from_private_key(cp.origin, LOG_KEY)
    verifier = Ed25519Verifier.from_public_key(cp.origin, LOG_KEY.public_key())
    opened, note = open_checkpoint(sign_checkpoint(cp, signer), verifier)
    assert opened == cp
    assert note.text == cp.format()


@given(st.text(max_size=200))
def test_arbitrary_text_only_raises_malformed(text: str) -> None:
    with contextlib.suppress(MalformedNoteError):
        parse_checkpoint(text)


def test_sign_and_open() -> None:
    cp = Checkpoint("example.com/log", 42, ROOT)
    msg = sign_checkpoint(cp, LOG)
    opened, note = open_checkpoint(msg, LOG_V, origin="example.com/log")
    assert opened == cp
    assert [s.name for s in note.signatures] == ["example.com/log"]


def test_origin_must_equal_log_key_name() -> None:
    other = Ed25519Signer.from_private_key("example.com/other", LOG_KEY)
    other_v = Ed25519Verifier.from_public_key("example.com/other", LOG_KEY.public_key())
    msg = sign_checkpoint(Checkpoint("example.com/log", 1, ROOT), other)
    with pytest.raises(MalformedCheckpointError, match="key name"):
        open_checkpoint(msg, other_v)


def test_origin_must_equal_the_expected_origin() -> None:
    msg = sign_checkpoint(Checkpoint("example.com/log", 1, ROOT), LOG)
    with pytest.raises(MalformedCheckpointError, match="origin"):
        open_checkpoint(msg, LOG_V, origin="example.com/elsewhere")


def test_signed_by_a_cosigner_only_is_refused() -> None:
    key = Ed25519PrivateKey.generate()
    witness = Ed25519Signer.from_private_key("w.example", key)
    witness_v = Ed25519Verifier.from_public_key("w.example", key.public_key())
    msg = sign_checkpoint(Checkpoint("example.com/log", 1, ROOT), witness)
    with pytest.raises(UnverifiedNoteError):
        open_checkpoint(msg, LOG_V, cosigners=[witness_v])
    both = sign_checkpoint(Checkpoint("example.com/log", 1, ROOT), [LOG, witness])
    _, note = open_checkpoint(both, LOG_V, cosigners=[witness_v])
    assert len(note.signatures) == 2


def test_bad_log_signature() -> None:
    text, [sig] = split_note(sign_checkpoint(Checkpoint("example.com/log", 1, ROOT), LOG))
    flipped = Signature(sig.name, sig.key_id, bytes([sig.signature[0] ^ 1]) + sig.signature[1:])
    with pytest.raises(InvalidSignatureError):
        open_checkpoint(format_note(text, [flipped]), LOG_V)


def test_signed_text_that_is_not_a_checkpoint() -> None:
    with pytest.raises(MalformedCheckpointError):
        open_checkpoint(sign_note("example.com/log\n01\n" + ROOT_B64 + "\n", LOG), LOG_V)


def test_go_signed_checkpoint() -> None:
    # Signed by Go's note.Sign; see tests/data/notes/README.md.
    data = Path(__file__).parent / "data" / "notes"
    skey, vkey = (data / "go-golog.keys").read_text().split()
    msg = (data / "go-checkpoint.note").read_bytes()
    cp, _ = open_checkpoint(msg, new_verifier(vkey), origin="example.com/golog")
    assert cp == Checkpoint("example.com/golog", 42, ROOT)
    assert sign_checkpoint(cp, new_signer(skey)) == msg
