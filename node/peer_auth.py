"""Authenticated requests between cluster members.

Every replication or cosigning request carries its sender's name and an Ed25519
signature, by the key pinned for that member in the cluster file, over the sender, the
recipient, the path and the body's hash. A request from an unknown member, for another
member, or with a signature that does not verify is refused before its body is parsed.
A replayed request is harmless: Raft tolerates duplicated messages, and a cosignature is
only ever a statement about the member's own log.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PEER_HEADER = "Consent-Ledger-Peer"
SIGNATURE_HEADER = "Consent-Ledger-Peer-Signature"
_DOMAIN = b"consent-ledger/peer-request/v1\x00"


class PeerAuthError(Exception):
    """The request is not from the member it claims to be from (or not for this one)."""


def _message(src: str, dst: str, path: str, body: bytes) -> bytes:
    return b"".join((_DOMAIN, src.encode(), b"\n", dst.encode(), b"\n", path.encode(), b"\n",
                     hashlib.sha256(body).digest()))


def sign_request(key: Ed25519PrivateKey, *, src: str, dst: str, path: str,
                 body: bytes) -> dict[str, str]:
    """The headers that authenticate `body`, sent from member `src` to `dst` at `path`."""
    sig = key.sign(_message(src, dst, path, body))
    return {PEER_HEADER: src, SIGNATURE_HEADER: base64.b64encode(sig).decode()}


def check_request(peers: dict[str, Ed25519PublicKey], *, me: str, path: str,
                  headers: object, body: bytes) -> str:
    """The sending member's id, or PeerAuthError naming what is wrong."""
    get = headers.get  # type: ignore[attr-defined]
    src = get(PEER_HEADER)
    encoded = get(SIGNATURE_HEADER)
    if not src or not encoded:
        raise PeerAuthError(f"missing {PEER_HEADER} or {SIGNATURE_HEADER} header")
    public = peers.get(src)
    if public is None or src == me:
        raise PeerAuthError(f"{src!r} is not a peer of {me!r}")
    try:
        sig = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise PeerAuthError("the peer signature is not base64") from None
    try:
        public.verify(sig, _message(src, me, path, body))
    except InvalidSignature:
        raise PeerAuthError(f"the signature does not verify with {src!r}'s pinned key") from None
    return str(src)
