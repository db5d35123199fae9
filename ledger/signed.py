"""Signed events: the envelope a controller (or the operator, or a person) submits.

An envelope carries the event's exact canonical bytes and one of:
- a signature by a registered key over the event's hash;
- a batch signature: one signature over the RFC 6962 root of many events' leaf hashes,
  with this event's inclusion path, so a controller can sign a thousand events with one
  Ed25519 operation and each event still stands on its own as provably signed;
- a revocation token (only for a person's withdrawal of one grant).

Signed messages start with a domain tag that holds a NUL byte, so no signature made
here can be replayed as a signed note (notes are text without control characters).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ledger import merkle
from ledger.codec import Bin, Int, Nested, Record, Seq, optional, spec
from ledger.commitment import TOKEN_SIZE
from ledger.errors import FieldValueError, ProofError, SignatureError
from ledger.events import (
    KEY_ID_SIZE,
    MAX_EVENT_SIZE,
    Event,
    Revoke,
    StatusRoot,
    decode_event,
    event_hash,
)
from ledger.lazy import lazy
from ledger.tree import MerkleTree

SIGNATURE_SIZE = 64
MAX_BATCH = 1 << 16
EVENT_TAG = b"consent-ledger event signature v1\x00"
BATCH_TAG = b"consent-ledger batch signature v1\x00"
_KEY_ID_TAG = b"consent-ledger key id v1\x00"


@functools.lru_cache(maxsize=4096)  # a few keys sign nearly everything
def key_id(public_key: bytes) -> bytes:
    """The 8-byte identifier of an Ed25519 public key in envelopes and admin events."""
    return hashlib.sha256(_KEY_ID_TAG + public_key).digest()[:KEY_ID_SIZE]


def public_bytes(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclasses.dataclass(frozen=True)
class BatchPath(Record):
    """Where one event sits among the leaves of a batch signature."""

    size: int = spec(Int(1, MAX_BATCH))
    index: int = spec(Int(0, MAX_BATCH - 1))
    path: tuple[bytes, ...] = spec(Seq(Bin(size=32), max_items=16))

    def validate(self) -> None:
        if self.index >= self.size:
            raise FieldValueError("must be less than size", field="index")


@dataclasses.dataclass(frozen=True)
class SignedEvent(Record):
    MAX_SIZE = MAX_EVENT_SIZE + 1024

    event: bytes = spec(Bin(max_len=MAX_EVENT_SIZE))
    signer: bytes | None = optional(Bin(size=KEY_ID_SIZE))
    sig: bytes | None = optional(Bin(size=SIGNATURE_SIZE))
    batch: BatchPath | None = optional(Nested(BatchPath))
    token: bytes | None = optional(Bin(size=TOKEN_SIZE))

    def validate(self) -> None:
        if self.token is not None:
            if self.signer is not None or self.sig is not None or self.batch is not None:
                raise FieldValueError("a token revocation carries no signature", field="token")
            if not isinstance(self.body, Revoke) or self.body.grant is None \
                    or self.body.by != "subject":
                raise FieldValueError(
                    "a token only withdraws one grant, by the subject", field="token")
        elif self.signer is None and self.sig is None and self.batch is None:
            if not isinstance(self.body, StatusRoot):
                raise FieldValueError("needs a signer and a sig, or a token", field="signer")
        elif self.signer is None or self.sig is None:
            raise FieldValueError("needs a signer and a sig, or a token",
                                  field="signer" if self.signer is None else "sig")
        elif isinstance(self.body, StatusRoot):
            raise FieldValueError("the log writes status roots unsigned", field="sig")
        _ = self.body  # decoding the event here makes an invalid one fail construction

    @lazy
    def body(self) -> Event:
        """The decoded event; its bytes were checked canonical on construction."""
        return decode_event(self.event)

    @lazy
    def id(self) -> bytes:
        """The event hash: how grants are named and resubmissions recognised."""
        return event_hash(self.event)

    @lazy
    def encoded(self) -> bytes:
        """The canonical encoding (given by the decoder when it had the bytes at hand)."""
        return self.encode()

    def signed_message(self) -> bytes:
        """The exact bytes the signer's key signed (computes the batch root if any)."""
        return self.message

    @lazy
    def message(self) -> bytes:
        """signed_message(), kept: a node's decoding process computes it beside the rest."""
        if self.batch is None:
            return EVENT_TAG + self.id
        b = self.batch
        try:
            root = merkle.root_from_inclusion_proof(
                merkle.leaf_hash(self.event), b.index, b.size, b.path)
        except ProofError as exc:
            raise SignatureError(f"batch path does not fit its size and index: {exc}") from None
        return BATCH_TAG + b.size.to_bytes(8, "big") + root


def _envelope(body: Event, data: bytes, **fields: object) -> SignedEvent:
    """Build an envelope around an event we hold decoded, without decoding it again."""
    signed = SignedEvent.__new__(SignedEvent)
    for name, value in {"event": data, "signer": None, "sig": None, "batch": None,
                        "token": None, **fields}.items():
        object.__setattr__(signed, name, value)
    signed.__dict__["body"] = body  # what validate() would otherwise decode from `data`
    signed.__post_init__()
    return signed


def sign_event(event: Event, private_key: Ed25519PrivateKey) -> SignedEvent:
    data = event.encode()
    return _envelope(event, data, signer=key_id(public_bytes(private_key)),
                     sig=private_key.sign(EVENT_TAG + event_hash(data)))


def sign_batch(events: Sequence[Event], private_key: Ed25519PrivateKey) -> list[SignedEvent]:
    """Sign many events with one signature; each envelope proves its own event."""
    if not 1 <= len(events) <= MAX_BATCH:
        raise ValueError(f"a batch holds 1 to {MAX_BATCH} events")
    datas = [e.encode() for e in events]
    tree = MerkleTree.from_leaf_hashes(merkle.leaf_hash(d) for d in datas)
    size = len(datas)
    sig = private_key.sign(BATCH_TAG + size.to_bytes(8, "big") + tree.root())
    signer = key_id(public_bytes(private_key))
    return [
        _envelope(e, d, signer=signer, sig=sig,
                  batch=BatchPath(size=size, index=i, path=tuple(tree.inclusion_proof(i, size))))
        for i, (e, d) in enumerate(zip(events, datas, strict=True))
    ]


def log_authored(event: StatusRoot) -> SignedEvent:
    """An entry the log writes itself: no signature, checked by recomputation."""
    return _envelope(event, event.encode())


def token_revocation(revoke: Revoke, token: bytes) -> SignedEvent:
    """A person's withdrawal of one grant, authorised by the grant's revocation token."""
    return _envelope(revoke, revoke.encode(), token=token)


def verify_signature(signed: SignedEvent, public_key: bytes) -> None:
    """Raise SignatureError unless `public_key` signed this envelope's event."""
    if signed.sig is None or signed.signer is None:
        raise SignatureError("the envelope carries no signature")
    if key_id(public_key) != signed.signer:
        raise SignatureError("the signer key id does not match the key")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signed.sig, signed.signed_message())
    except InvalidSignature:
        raise SignatureError(
            f"signature by key {signed.signer.hex()} does not verify") from None
