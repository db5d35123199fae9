"""Ed25519 cosignatures (c2sp.org/tlog-cosignature, cosignature/v1, key type 0x04).

A cosignature is an ordinary note signature line on a checkpoint whose payload is

    key ID (4, big-endian) || timestamp (8, big-endian POSIX seconds) || Ed25519 sig (64)

and whose Ed25519 signature covers, not the note text alone, but

    cosignature/v1\\n
    time <timestamp, decimal>\\n
    <the whole checkpoint note text>

It says "at this time, this is the largest consistent tree I have seen for this log".
The message does not name the cosigner, so one key must serve one cosigner only. The
key ID hashes type 0x04, so the same name and key used as a plain 0x01 signer get a
different ID and neither signature can stand in for the other.

The core keeps no clock: a caller picks the time and binds it with `at(timestamp)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger.checkpoint import parse_checkpoint
from ledger.errors import MalformedNoteError
from ledger.note import (
    ALG_COSIGNATURE_V1,
    MAX_SIGNATURES,
    Signature,
    format_note,
    format_verifier_key,
    is_valid_name,
    key_id,
    load_public_key,
    parse_signature_line,
    parse_signer_key,
    parse_verifier_key,
    raw_public_key,
    split_note,
)

MAX_TIMESTAMP = (1 << 63) - 1
COSIGNATURE_SIZE = 8 + 64  # what follows the key ID


def cosigned_message(text: bytes, timestamp: int) -> bytes:
    """The bytes a cosigner signs for checkpoint note `text` at `timestamp`."""
    _check_timestamp(timestamp)
    return b"cosignature/v1\ntime %d\n" % timestamp + text


def cosignature_timestamp(sig: bytes) -> int:
    """The timestamp of a cosignature (the 72 bytes after the key ID)."""
    if len(sig) != COSIGNATURE_SIZE:
        raise MalformedNoteError(f"cosignature is not {COSIGNATURE_SIZE} bytes")
    timestamp = int.from_bytes(sig[:8], "big")
    if timestamp > MAX_TIMESTAMP:
        raise MalformedNoteError("cosignature timestamp is 2^63 or more")
    return timestamp


def _decode(text: bytes) -> str:
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedNoteError("text is not valid UTF-8") from None


def _check_timestamp(timestamp: int) -> None:
    if isinstance(timestamp, bool) or not 0 <= timestamp <= MAX_TIMESTAMP:
        raise MalformedNoteError("cosignature timestamp is out of range")


def _check_name(name: str) -> None:
    if not is_valid_name(name):
        raise MalformedNoteError(f"invalid key name {name!r}")


@dataclasses.dataclass(frozen=True, eq=False)
class CosignatureSigner:
    """A cosigner's key. `sign` needs a time; `at(t)` gives a note Signer for one time."""

    name: str
    key_id: int
    _key: Ed25519PrivateKey = dataclasses.field(repr=False)

    @classmethod
    def from_private_key(cls, name: str, key: Ed25519PrivateKey) -> CosignatureSigner:
        _check_name(name)
        kid = key_id(name, ALG_COSIGNATURE_V1, raw_public_key(key.public_key()))
        return cls(name, kid, key)

    def sign(self, text: bytes, timestamp: int) -> bytes:
        """timestamp (8 bytes) || Ed25519 signature of the cosigned message (64 bytes).

        Only checkpoints are cosigned: the signature's meaning is about a tree head.
        """
        parse_checkpoint(_decode(text))
        signature = self._key.sign(cosigned_message(text, timestamp))
        return timestamp.to_bytes(8, "big") + signature

    def at(self, timestamp: int) -> TimedCosigner:
        _check_timestamp(timestamp)
        return TimedCosigner(self, timestamp)


@dataclasses.dataclass(frozen=True)
class TimedCosigner:
    """A CosignatureSigner bound to one time: a Signer for sign_note."""

    cosigner: CosignatureSigner
    timestamp: int

    @property
    def name(self) -> str:
        return self.cosigner.name

    @property
    def key_id(self) -> int:
        return self.cosigner.key_id

    def sign(self, msg: bytes) -> bytes:
        return self.cosigner.sign(msg, self.timestamp)


@dataclasses.dataclass(frozen=True, eq=False)
class CosignatureVerifier:
    """Checks cosignature/v1 signatures: a Verifier for open_note."""

    name: str
    key_id: int
    _key: Ed25519PublicKey = dataclasses.field(repr=False)

    @classmethod
    def from_public_key(cls, name: str, key: Ed25519PublicKey) -> CosignatureVerifier:
        _check_name(name)
        return cls(name, key_id(name, ALG_COSIGNATURE_V1, raw_public_key(key)), key)

    def verify(self, msg: bytes, sig: bytes) -> bool:
        # Go's transparency-dev verifier needs at least three lines; so do we, so that
        # the two accept the same notes.
        if msg.count(b"\n") < 2:
            return False
        try:
            timestamp = cosignature_timestamp(sig)
        except MalformedNoteError:
            return False
        try:
            self._key.verify(sig[8:], cosigned_message(msg, timestamp))
        except InvalidSignature:
            return False
        return True

    def timestamp(self, sig: Signature) -> int:
        """The time of a cosignature by this key (one that open_note verified)."""
        if (sig.name, sig.key_id) != (self.name, self.key_id):
            raise MalformedNoteError("signature is not by this cosigner")
        return cosignature_timestamp(sig.signature)


def cosigner_verifier_key(name: str, key: Ed25519PublicKey) -> str:
    """The vkey string for a cosigner: type 0x04 and its Ed25519 public key."""
    return format_verifier_key(name, ALG_COSIGNATURE_V1, raw_public_key(key))


def new_cosignature_verifier(vkey: str) -> CosignatureVerifier:
    parsed = parse_verifier_key(vkey)
    if parsed.key_type != ALG_COSIGNATURE_V1:
        raise MalformedNoteError("verifier key is not a cosignature/v1 (0x04) key")
    return CosignatureVerifier(parsed.name, parsed.key_id, load_public_key(parsed.public_key))


def new_cosignature_signer(skey: str) -> CosignatureSigner:
    """A cosigner from a PRIVATE+KEY string of type 0x01 (Go's note.GenerateKey) or 0x04.

    As in transparency-dev/formats, a 0x01 key is reused: the cosigner's ID is derived
    anew for type 0x04, so it differs from the ID in the string.
    """
    name, _, private = parse_signer_key(skey)
    return CosignatureSigner.from_private_key(name, private)


def add_cosignatures(msg: bytes, lines: str | bytes | Iterable[Signature]) -> bytes:
    """Merge signature lines (e.g. a witness's add-checkpoint reply) into a signed note.

    A line by a key the note already holds replaces the old one in place, so a fresher
    cosignature supersedes a stale one instead of sitting after it unread (only the
    first line per known key is checked); identical lines are kept once. Nothing is
    verified here, and a bad line by a trusted key makes the note fail to open, so
    check what a witness sent (open the result) before publishing it.
    """
    text, merged = split_note(msg)
    incoming = _parse_lines(lines) if isinstance(lines, str | bytes) else list(lines)
    for sig in incoming:
        key = (sig.name, sig.key_id)
        same = [i for i, old in enumerate(merged) if (old.name, old.key_id) == key]
        if not same:
            merged.append(sig)
            continue
        merged[same[0]] = sig
        for i in reversed(same[1:]):
            del merged[i]
    return format_note(text, merged)


def _parse_lines(block: str | bytes) -> list[Signature]:
    if isinstance(block, bytes):
        try:
            block = block.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedNoteError("signature lines are not valid UTF-8") from None
    if not block:
        return []
    if not block.endswith("\n"):
        raise MalformedNoteError("signature lines do not end in a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise MalformedNoteError(f"more than {MAX_SIGNATURES} signature lines")
    return [parse_signature_line(line) for line in lines]
