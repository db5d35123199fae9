"""The client's errors: one root, and evidence kept wherever the node may have lied.

A `LogVerificationError` keeps what the node said (the signed checkpoint note, the
proof, the index and size) so that it can be shown to someone else: a signed
checkpoint that does not fit a proof or an earlier checkpoint is evidence against the
log, and it must outlive the connection that produced it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

PROBLEM_BASE = "https://consent-ledger.dev/problems/"


class ClientError(Exception):
    """Root of every error the client raises; its message is one readable line."""


class KeyFileError(ClientError):
    """A key file that is missing, unreadable, or does not hold an Ed25519 key."""


class NodeUnavailableError(ClientError):
    """The node could not be reached, or kept answering 503 past the retry budget."""


class ReplyError(ClientError):
    """The node answered, but not in the documented format."""


class ProblemError(ClientError):
    """An RFC 9457 problem the node returned (application/problem+json)."""

    def __init__(self, type: str, title: str, status: int, detail: str,
                 extra: Mapping[str, Any] | None = None) -> None:
        self.type = type
        self.title = title
        self.status = status
        self.detail = detail
        self.extra = dict(extra or {})
        super().__init__(f"{status} {self.code}: {detail or title}")

    @property
    def code(self) -> str:
        """The stable short code (`unknown-grant`, ...), or the full type if foreign."""
        return self.type.removeprefix(PROBLEM_BASE)

    @classmethod
    def from_json(cls, obj: Any, status: int) -> ProblemError:
        """Build from a decoded problem document; tolerant, since it only reports."""
        if not isinstance(obj, dict):
            return cls("about:blank", "error", status, f"non-problem reply: {obj!r:.200}")
        extra = {k: v for k, v in obj.items() if k not in ("type", "title", "status", "detail")}
        return cls(
            str(obj.get("type", "about:blank")),
            str(obj.get("title", "")),
            # The HTTP status wins: a body that claims another one is not believed.
            status,
            str(obj.get("detail", "")),
            extra,
        )


class LogVerificationError(ClientError):
    """An answer that does not verify; the attributes are the evidence."""

    def __init__(self, message: str, *, checkpoint: bytes | None = None,
                 other_checkpoint: bytes | None = None, proof: Sequence[bytes] = (),
                 index: int | None = None, size: int | None = None,
                 leaf_hash: bytes | None = None, entry: bytes | None = None) -> None:
        self.checkpoint = checkpoint  # a signed note as the node served it
        # For a failed consistency check, the other note (the larger tree is in
        # `checkpoint`): together the two prove the log forked or rewrote its history.
        self.other_checkpoint = other_checkpoint
        self.proof = tuple(proof)
        self.index = index
        self.size = size
        self.leaf_hash = leaf_hash
        self.entry = entry
        super().__init__(message)
