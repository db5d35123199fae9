"""C2SP signed notes (c2sp.org/signed-note@v1.0.0) with Ed25519 keys.

A signed note is bytes of this shape, every line ending in U+000A:

    <text: one or more lines>
    <empty line>
    — <key name> <base64(4-byte big-endian key ID || signature)>
    ... (one line per signature, at most MAX_SIGNATURES)

The text is what is signed, including its final newline but not the empty line. The
whole note is UTF-8 with no control characters other than newline. The last empty
line splits text from signatures, so the text may itself hold empty lines.

Opening follows Go's golang.org/x/mod/sumdb/note.Open, so that a note accepted here is
accepted there and the other way round, with two deliberate, stricter exceptions:
base64 must be canonical (Go tolerates non-zero padding bits) and a note may not
exceed MAX_NOTE_SIZE bytes. Neither can reject a note that Go's Sign produced.

The format grows by new signature types (the byte hashed into the key ID): a verifier
that does not know a key leaves its signature unverified instead of failing.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from ledger.errors import (
    InvalidSignatureError,
    MalformedNoteError,
    NoteError,
    UnverifiedNoteError,
)

ALG_ED25519 = 0x01
ALG_COSIGNATURE_V1 = 0x04

MAX_NOTE_SIZE = 1 << 20
# Go's cap: checking more signatures than this only lets a sender burn our CPU.
MAX_SIGNATURES = 100

SIGNATURE_PREFIX = "— "
_PRIVATE_PREFIX = "PRIVATE+KEY+"
_KEY_ID_HEX = re.compile(r"[0-9a-f]{8}")

# Unicode White_Space, which is what Go's unicode.IsSpace tests. Python's str.isspace
# differs (it counts U+001C..U+001F), so the set is spelled out.
_SPACES = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
    "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


def key_id(name: str, key_type: int, public_key: bytes) -> int:
    """The recommended key ID: SHA-256(name || 0x0A || type || public key)[:4], big-endian."""
    digest = hashlib.sha256(_utf8(name) + b"\n" + bytes([key_type]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def is_valid_name(name: str) -> bool:
    """A key name is non-empty UTF-8 with no Unicode space and no '+'.

    Control characters are refused too (Go allows them): a note can never carry them,
    so a key named with one could sign nothing that opens.
    """
    if not name or "+" in name or not _is_utf8(name):
        return False
    return not any(c in _SPACES or c < " " for c in name)


def decode_base64(text: str, *, what: str = "base64") -> bytes:
    """Decode standard, padded base64, refusing any other spelling of the same bytes."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise MalformedNoteError(f"{what} is not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise MalformedNoteError(f"{what} is not canonical base64")
    return raw


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        raise MalformedNoteError("text is not valid UTF-8") from None


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# ---- Signers and verifiers -------------------------------------------------------------


class Signer(Protocol):
    """Signs note texts with one key. The signature excludes the key ID prefix."""

    @property
    def name(self) -> str: ...

    @property
    def key_id(self) -> int: ...

    def sign(self, msg: bytes) -> bytes: ...


class Verifier(Protocol):
    """Checks signatures by one key; `verify` never raises on a bad signature."""

    @property
    def name(self) -> str: ...

    @property
    def key_id(self) -> int: ...

    def verify(self, msg: bytes, sig: bytes) -> bool: ...


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _raw_seed(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


@dataclasses.dataclass(frozen=True, eq=False)
class Ed25519Signer:
    """A type 0x01 signer: an Ed25519 signature over the note text."""

    name: str
    key_id: int
    _key: Ed25519PrivateKey = dataclasses.field(repr=False)

    @classmethod
    def from_private_key(cls, name: str, key: Ed25519PrivateKey) -> Ed25519Signer:
        if not is_valid_name(name):
            raise MalformedNoteError(f"invalid key name {name!r}")
        return cls(name, key_id(name, ALG_ED25519, raw_public_key(key.public_key())), key)

    def sign(self, msg: bytes) -> bytes:
        return self._key.sign(msg)


@dataclasses.dataclass(frozen=True, eq=False)
class Ed25519Verifier:
    """A type 0x01 verifier."""

    name: str
    key_id: int
    _key: Ed25519PublicKey = dataclasses.field(repr=False)

    @classmethod
    def from_public_key(cls, name: str, key: Ed25519PublicKey) -> Ed25519Verifier:
        if not is_valid_name(name):
            raise MalformedNoteError(f"invalid key name {name!r}")
        return cls(name, key_id(name, ALG_ED25519, raw_public_key(key)), key)

    def verify(self, msg: bytes, sig: bytes) -> bool:
        if len(sig) != 64:
            return False
        try:
            self._key.verify(sig, msg)
        except InvalidSignature:
            return False
        return True


class RememberingVerifier:
    """A verifier that remembers the signatures it accepted lately.

    A cluster member opens the same checkpoint several times: to cosign it, as published
    with its cosignatures, and again at every re-cosigning each second. An Ed25519 check
    costs about 130 µs; a lookup costs nothing. Only successes are remembered, keyed by
    the exact message and signature, so nothing passes that did not verify once."""

    def __init__(self, inner: Verifier, remember: int = 64) -> None:
        self._inner = inner
        self._remember = remember
        self._accepted: dict[tuple[bytes, bytes], None] = {}  # oldest first

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def key_id(self) -> int:
        return self._inner.key_id

    def verify(self, msg: bytes, sig: bytes) -> bool:
        seen = (msg, sig)
        if seen in self._accepted:
            return True
        if not self._inner.verify(msg, sig):
            return False
        if len(self._accepted) >= self._remember:
            del self._accepted[next(iter(self._accepted))]
        self._accepted[seen] = None
        return True


# ---- Key strings -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VerifierKey:
    """A parsed `name+<hex key ID>+<base64(type || public key)>` string."""

    name: str
    key_id: int
    key_type: int
    public_key: bytes


def format_verifier_key(name: str, key_type: int, public_key: bytes) -> str:
    if not is_valid_name(name):
        raise MalformedNoteError(f"invalid key name {name!r}")
    kid = key_id(name, key_type, public_key)
    encoded = base64.b64encode(bytes([key_type]) + public_key).decode("ascii")
    return f"{name}+{kid:08x}+{encoded}"


def parse_verifier_key(vkey: str) -> VerifierKey:
    """Parse a verifier key of a type this package knows (0x01 or 0x04, 32-byte keys)."""
    parts = vkey.split("+", 2)  # base64 may hold "+"
    if len(parts) != 3:
        raise MalformedNoteError("verifier key is not name+id+key")
    name, key_type, key, kid = _parse_key_parts(*parts, what="verifier key")
    if key_id(name, key_type, key) != kid:
        raise MalformedNoteError("verifier key ID does not match the key")
    return VerifierKey(name, kid, key_type, key)


def _parse_key_parts(name: str, hex_id: str, b64: str, *, what: str) -> tuple[str, int, bytes, int]:
    if not is_valid_name(name):
        raise MalformedNoteError(f"{what} has an invalid name")
    if not _KEY_ID_HEX.fullmatch(hex_id):
        raise MalformedNoteError(f"{what} ID is not 8 lowercase hex digits")
    raw = decode_base64(b64, what=what)
    if len(raw) != 33 or raw[0] not in (ALG_ED25519, ALG_COSIGNATURE_V1):
        raise MalformedNoteError(f"{what} is not a 32-byte key of a known type")
    return name, raw[0], raw[1:], int(hex_id, 16)


def new_verifier(vkey: str) -> Ed25519Verifier:
    """A verifier for an Ed25519 (type 0x01) verifier key string."""
    parsed = parse_verifier_key(vkey)
    if parsed.key_type != ALG_ED25519:
        raise MalformedNoteError("verifier key is not an Ed25519 (0x01) key")
    return Ed25519Verifier(parsed.name, parsed.key_id, load_public_key(parsed.public_key))


def load_public_key(raw: bytes) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise MalformedNoteError("not an Ed25519 public key") from None


def parse_signer_key(skey: str) -> tuple[str, int, Ed25519PrivateKey]:
    """Parse `PRIVATE+KEY+name+<hex id>+<base64(type || seed)>` into name, type and key.

    The type is 0x01 (Go's format) or 0x04 (a cosigner's key, as transparency-dev
    writes them). The ID is the public key's, so it is checked after deriving that.
    """
    if not skey.startswith(_PRIVATE_PREFIX):
        raise MalformedNoteError("signer key does not start with PRIVATE+KEY+")
    parts = skey[len(_PRIVATE_PREFIX):].split("+", 2)
    if len(parts) != 3:
        raise MalformedNoteError("signer key is not PRIVATE+KEY+name+id+key")
    name, key_type, seed, kid = _parse_key_parts(*parts, what="signer key")
    private = Ed25519PrivateKey.from_private_bytes(seed)
    if key_id(name, key_type, raw_public_key(private.public_key())) != kid:
        raise MalformedNoteError("signer key ID does not match the key")
    return name, key_type, private


def new_signer(skey: str) -> Ed25519Signer:
    name, key_type, private = parse_signer_key(skey)
    if key_type != ALG_ED25519:
        raise MalformedNoteError("signer key is not an Ed25519 (0x01) key")
    return Ed25519Signer.from_private_key(name, private)


def format_signer_key(name: str, key: Ed25519PrivateKey) -> str:
    """The Go-compatible private key string. Whoever holds it can sign: keep it secret."""
    if not is_valid_name(name):
        raise MalformedNoteError(f"invalid key name {name!r}")
    kid = key_id(name, ALG_ED25519, raw_public_key(key.public_key()))
    encoded = base64.b64encode(bytes([ALG_ED25519]) + _raw_seed(key)).decode("ascii")
    return f"{_PRIVATE_PREFIX}{name}+{kid:08x}+{encoded}"


def generate_key(name: str) -> tuple[str, str]:
    """A new Ed25519 key pair for `name` as (signer key, verifier key) strings."""
    private = Ed25519PrivateKey.generate()  # the operating system's CSPRNG
    vkey = format_verifier_key(name, ALG_ED25519, raw_public_key(private.public_key()))
    return format_signer_key(name, private), vkey


class Verifiers:
    """The known keys, looked up by (name, key ID).

    Two verifiers with the same name and ID make every lookup ambiguous, so they are
    refused up front rather than on the first note that uses them (Go's choice).
    """

    def __init__(self, verifiers: Iterable[Verifier] = ()) -> None:
        self._by_key: dict[tuple[str, int], Verifier] = {}
        for v in verifiers:
            key = (v.name, v.key_id)
            if key in self._by_key:
                raise NoteError(f"ambiguous key {v.name}+{v.key_id:08x}")
            self._by_key[key] = v

    def lookup(self, name: str, key_id: int) -> Verifier | None:
        """The verifier for this key, or None when the key is unknown."""
        return self._by_key.get((name, key_id))

    def __len__(self) -> int:
        return len(self._by_key)


# ---- Notes -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Signature:
    """One signature line: the key's name and ID and the signature without the ID."""

    name: str
    key_id: int
    signature: bytes


@dataclasses.dataclass(frozen=True)
class Note:
    """An opened note: its text, the signatures that verified, and those by unknown keys."""

    text: str
    signatures: tuple[Signature, ...]
    unverified: tuple[Signature, ...] = ()


def format_signature_line(sig: Signature) -> str:
    if not is_valid_name(sig.name):
        raise MalformedNoteError(f"invalid key name {sig.name!r}")
    if not sig.signature or not 0 <= sig.key_id < 1 << 32:
        raise MalformedNoteError("signature is empty or its key ID is out of range")
    payload = sig.key_id.to_bytes(4, "big") + sig.signature
    return f"{SIGNATURE_PREFIX}{sig.name} {base64.b64encode(payload).decode('ascii')}\n"


def parse_signature_line(line: str) -> Signature:
    """Parse one signature line, with or without its final newline."""
    line = line.removesuffix("\n")
    if not line.startswith(SIGNATURE_PREFIX):
        raise MalformedNoteError("signature line does not start with '— '")
    name, space, b64 = line[len(SIGNATURE_PREFIX):].partition(" ")
    if not space or not is_valid_name(name):
        raise MalformedNoteError("signature line has no valid key name")
    raw = decode_base64(b64, what="signature")
    if len(raw) < 5:
        raise MalformedNoteError("signature is shorter than a key ID and one byte")
    return Signature(name, int.from_bytes(raw[:4], "big"), raw[4:])


def _check_text(text: str) -> bytes:
    if any(c < " " and c != "\n" for c in text):
        raise MalformedNoteError("note holds a control character")
    return _utf8(text)


def split_note(msg: bytes) -> tuple[str, list[Signature]]:
    """Check a note's syntax and split it into text and signatures, verifying nothing."""
    if len(msg) > MAX_NOTE_SIZE:
        raise MalformedNoteError(f"note is larger than {MAX_NOTE_SIZE} bytes")
    try:
        decoded = msg.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedNoteError("note is not valid UTF-8") from None
    _check_text(decoded)
    split = decoded.rfind("\n\n")
    if split < 0:
        raise MalformedNoteError("note has no empty line before its signatures")
    text, block = decoded[: split + 1], decoded[split + 2:]
    if not block.endswith("\n"):
        raise MalformedNoteError("note has no signatures or does not end in a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise MalformedNoteError(f"note has more than {MAX_SIGNATURES} signatures")
    return text, [parse_signature_line(line) for line in lines]


def open_note(msg: bytes, verifiers: Verifiers | Iterable[Verifier]) -> Note:
    """Parse a signed note and check its signatures against the known keys.

    Signatures by unknown (name, ID) pairs are kept as unverified. Only the first
    signature by each known key is checked, and a bad one rejects the note
    (InvalidSignatureError); later ones by the same key are dropped unchecked, as in
    Go. Identical unknown lines are kept once. With no verified signature the note is
    refused (UnverifiedNoteError, whose `note` attribute holds what was parsed).
    """
    known = verifiers if isinstance(verifiers, Verifiers) else Verifiers(verifiers)
    text, sigs = split_note(msg)
    signed = text.encode("utf-8")
    verified: list[Signature] = []
    unverified: list[Signature] = []
    seen: set[tuple[str, int]] = set()
    for sig in sigs:
        v = known.lookup(sig.name, sig.key_id)
        if v is None:
            if sig not in unverified:
                unverified.append(sig)
            continue
        if (sig.name, sig.key_id) in seen:
            continue
        seen.add((sig.name, sig.key_id))
        if not v.verify(signed, sig.signature):
            err = InvalidSignatureError(f"invalid signature for key {sig.name}+{sig.key_id:08x}")
            err.signature = sig
            raise err
        verified.append(sig)
    note = Note(text, tuple(verified), tuple(unverified))
    if not verified:
        unverified_err = UnverifiedNoteError("note has no verifiable signatures")
        unverified_err.note = note
        raise unverified_err
    return note


def format_note(text: str, signatures: Sequence[Signature]) -> bytes:
    """Assemble a note from its text and signature lines, checking what Open will check."""
    if not text.endswith("\n"):
        raise MalformedNoteError("note text does not end in a newline")
    if not signatures:
        raise MalformedNoteError("note has no signatures")
    if len(signatures) > MAX_SIGNATURES:
        raise MalformedNoteError(f"note has more than {MAX_SIGNATURES} signatures")
    body = _check_text(text)
    msg = body + b"\n" + "".join(format_signature_line(s) for s in signatures).encode("utf-8")
    if len(msg) > MAX_NOTE_SIZE:
        raise MalformedNoteError(f"note is larger than {MAX_NOTE_SIZE} bytes")
    return msg


def sign_note(text: str, signers: Signer | Sequence[Signer]) -> bytes:
    """Sign `text` (which must end in a newline) with each signer, in order."""
    group = list(signers) if isinstance(signers, Sequence) else [signers]
    if len({(s.name, s.key_id) for s in group}) != len(group):
        raise NoteError("two signers share a name and key ID")
    for s in group:
        if not is_valid_name(s.name):
            raise NoteError(f"invalid signer name {s.name!r}")
    if not text.endswith("\n"):
        raise MalformedNoteError("note text does not end in a newline")
    signed = _check_text(text)
    return format_note(text, [Signature(s.name, s.key_id, s.sign(signed)) for s in group])
