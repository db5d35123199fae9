"""Checkpoints (c2sp.org/tlog-checkpoint@v1.0.0): a log's signed tree head as note text.

    example.com/log42                              <- origin, equal to the log's key name
    20852163                                       <- tree size, decimal, no leading zeros
    CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=   <- base64 of the 32-byte RFC 6962 root
    <extension lines, optional, each non-empty>

Every line ends in a newline. Extension lines are how the format may grow, but they
are NOT RECOMMENDED: monitors cannot audit them, so this log writes none and parsing
only keeps them, opaque, for logs that do.
"""

from __future__ import annotations

import base64
import dataclasses
import re
from collections.abc import Iterable, Sequence

from ledger.errors import MalformedNoteError, UnverifiedNoteError
from ledger.note import (
    MAX_NOTE_SIZE,
    Note,
    Signer,
    Verifier,
    decode_base64,
    open_note,
    sign_note,
)

HASH_SIZE = 32
MAX_SIZE = (1 << 63) - 1  # sizes travel as int64 in Go and in tlog-tiles paths
MAX_EXTENSIONS = 64

_SIZE = re.compile(r"0|[1-9][0-9]{0,18}")  # ASCII digits only: int() takes others


class MalformedCheckpointError(MalformedNoteError):
    """Note text that is not a checkpoint; `reason` says which rule it breaks."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"malformed checkpoint: {reason}")


def _check_line(line: str, what: str) -> None:
    if not line:
        raise MalformedCheckpointError(f"{what} is empty")
    if line != line.strip():
        raise MalformedCheckpointError(f"{what} has leading or trailing whitespace")
    if any(c < " " for c in line):
        raise MalformedCheckpointError(f"{what} holds a control character")


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line(self.origin, "origin")
        if isinstance(self.size, bool) or not 0 <= self.size <= MAX_SIZE:
            raise MalformedCheckpointError("size is out of range")
        if len(self.root) != HASH_SIZE:
            raise MalformedCheckpointError(f"root is not {HASH_SIZE} bytes")
        if len(self.extensions) > MAX_EXTENSIONS:
            raise MalformedCheckpointError(f"more than {MAX_EXTENSIONS} extension lines")
        for ext in self.extensions:
            if not ext or any(c < " " for c in ext):
                raise MalformedCheckpointError("extension line is empty or holds a control "
                                               "character")

    def format(self) -> str:
        """The note text, every line ending in a newline."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode("ascii"),
                 *self.extensions]
        return "".join(line + "\n" for line in lines)


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse checkpoint note text strictly: one spelling per checkpoint, nothing extra."""
    if len(text) > MAX_NOTE_SIZE:
        raise MalformedCheckpointError("text is too large")
    if not text.endswith("\n"):
        raise MalformedCheckpointError("text does not end in a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise MalformedCheckpointError("fewer than three lines")
    origin, size, root, *extensions = lines
    _check_line(origin, "origin")
    if not _SIZE.fullmatch(size):
        raise MalformedCheckpointError("size is not a canonical decimal")
    if int(size) > MAX_SIZE:
        raise MalformedCheckpointError("size is 2^63 or more")
    raw = decode_base64(root, what="root hash")
    if len(raw) != HASH_SIZE:
        raise MalformedCheckpointError(f"root is not {HASH_SIZE} bytes")
    if len(extensions) > MAX_EXTENSIONS:
        raise MalformedCheckpointError(f"more than {MAX_EXTENSIONS} extension lines")
    return Checkpoint(origin, int(size), raw, tuple(extensions))


def sign_checkpoint(checkpoint: Checkpoint, signers: Signer | Sequence[Signer]) -> bytes:
    return sign_note(checkpoint.format(), signers)


def open_checkpoint(
    msg: bytes,
    log: Verifier,
    *,
    origin: str | None = None,
    cosigners: Iterable[Verifier] = (),
) -> tuple[Checkpoint, Note]:
    """Open a checkpoint that the log's own key signed.

    The origin line must equal the log key's name (and `origin`, when given), so a
    checkpoint of one log can never pass for another's. Cosigner keys, if given, are
    checked in the same pass; a bad cosignature rejects the note like any bad
    signature by a known key. A note verified only by cosigners is refused.
    """
    note = open_note(msg, [log, *cosigners])
    if not any((s.name, s.key_id) == (log.name, log.key_id) for s in note.signatures):
        err = UnverifiedNoteError(f"checkpoint is not signed by log key {log.name}")
        err.note = note
        raise err
    checkpoint = parse_checkpoint(note.text)
    if checkpoint.origin != log.name:
        raise MalformedCheckpointError("origin does not match the log's key name")
    if origin is not None and checkpoint.origin != origin:
        raise MalformedCheckpointError(f"origin is not {origin!r}")
    return checkpoint, note
