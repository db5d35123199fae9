"""The error hierarchy of the core.

Every error raised on attacker-controlled input derives from LedgerError, so that a
caller can catch one root. Errors that matter carry their evidence as attributes.
"""

from __future__ import annotations


class LedgerError(Exception):
    """Root of every error the core raises on bad input or failed verification."""


class DecodeError(LedgerError):
    """Bytes that are not a valid canonical encoding of a record."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        self.reason = message
        super().__init__(f"{field}: {message}" if field else message)


class MalformedError(DecodeError):
    """Not msgpack at all, truncated, or followed by trailing bytes."""


class NonCanonicalError(DecodeError):
    """Valid msgpack, but not the one byte string the encoder would produce."""


class DuplicateKeyError(DecodeError):
    """A map repeats a key."""


class UnknownFieldError(DecodeError):
    """A map holds a key the schema does not define."""


class MissingFieldError(DecodeError):
    """A required field is absent."""


class FieldTypeError(DecodeError):
    """A field holds a value of the wrong type (floats are always wrong)."""


class FieldValueError(DecodeError):
    """A field's value is out of bounds, badly formed, or not NFC-normalised."""


class OversizeError(DecodeError):
    """The input, or one of its parts, exceeds a size limit."""


class ProofError(LedgerError):
    """A Merkle proof does not verify."""


class InclusionProofError(ProofError):
    """An inclusion proof does not lead from the leaf to the root."""


class ConsistencyProofError(ProofError):
    """A consistency proof does not link the two tree heads."""


class NoteError(LedgerError):
    """A signed note is malformed or does not verify."""


class MalformedNoteError(NoteError):
    """A note, signature line, key or checkpoint that breaks its format."""


class InvalidSignatureError(NoteError):
    """A known key's signature does not verify; `signature` is the offending line."""

    signature: object = None


class UnverifiedNoteError(NoteError):
    """A note carries no valid signature by any known key; `note` is what was parsed."""

    note: object = None


class SignatureError(LedgerError):
    """An event's signature or batch proof does not verify."""


class RejectedError(LedgerError):
    """An event that is well formed but may not enter the log now.

    `code` is stable: the node turns it into a problem type, clients match on it.
    """

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)
