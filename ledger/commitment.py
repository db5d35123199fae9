"""Commitments that keep people off the log: subject commitments and revocation tokens.

A subject commitment binds a person's reference at a controller to a random salt. The
salt goes to the person (in their receipt) and stays with the controller, never on the
log; once both forget it, the log's entries about that person cannot be linked back to
them (erasure, GDPR art. 17), while every signature and proof still verifies.

A revocation token is a random secret handed only to the person; the grant carries its
hash, so whoever presents the token can have that grant withdrawn without the
controller's help.
"""

from __future__ import annotations

import hashlib
import hmac
import os

SALT_SIZE = 32
TOKEN_SIZE = 32

_SUBJECT_TAG = b"consent-ledger subject commitment v1\x00"
_TOKEN_TAG = b"consent-ledger revocation token v1\x00"


def _length_prefixed(data: bytes) -> bytes:
    # Without lengths, ("ab", "c") and ("a", "bc") would commit to the same bytes.
    return len(data).to_bytes(2, "big") + data


def new_salt() -> bytes:
    return os.urandom(SALT_SIZE)


def new_token() -> bytes:
    return os.urandom(TOKEN_SIZE)


def subject_commitment(controller: str, subject_ref: str, salt: bytes) -> bytes:
    """SHA-256 over the domain tag, the controller, the person's reference there, the salt."""
    if len(salt) != SALT_SIZE:
        raise ValueError(f"salt must be {SALT_SIZE} bytes")
    return hashlib.sha256(
        _SUBJECT_TAG
        + _length_prefixed(controller.encode())
        + _length_prefixed(subject_ref.encode())
        + salt
    ).digest()


def token_hash(token: bytes) -> bytes:
    return hashlib.sha256(_TOKEN_TAG + token).digest()


def token_matches(token: bytes, expected_hash: bytes) -> bool:
    return hmac.compare_digest(token_hash(token), expected_hash)
