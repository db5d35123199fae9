"""Transparency log proofs (c2sp.org/tlog-proof@v1): offline evidence that a leaf is logged.

    c2sp.org/tlog-proof@v1
    extra <base64>                    <- optional: opaque data, NOT authenticated
    index <decimal, no leading zeros>
    <base64 hash>                     <- the RFC 6962 inclusion proof, leaf's sibling
    ...                                  first, 0 to 63 lines
    <empty line>
    <the checkpoint, a signed note, verbatim: log signature and any cosignatures>

Every line ends in a newline. Parsing is strict, so that one proof has one spelling:
canonical padded base64 only, no empty extra (omit the line instead), no control
characters, no trailing data (the checkpoint runs to the end and must be a well-formed
signed note of a well-formed checkpoint). Errors name the line and the rule.

Verifying takes the leaf hash from the caller (the spec leaves what a leaf is to the
application; it may come from the extra data, which only the inclusion proof can make
trustworthy) and a function that opens the checkpoint note: a log key, or a trust
policy with its witness quorum. The proof never carries its own rules.

The format may grow only by a new first line (`@v2`); an old parser refuses it.
"""

from __future__ import annotations

import base64
import dataclasses
import re
from collections.abc import Callable, Sequence

from ledger import merkle
from ledger.checkpoint import Checkpoint, open_checkpoint, parse_checkpoint
from ledger.errors import LedgerError, ProofError
from ledger.note import MAX_NOTE_SIZE, Verifier, decode_base64, split_note

HEADER = "c2sp.org/tlog-proof@v1"
HASH_SIZE = merkle.HASH_SIZE
MAX_HASHES = 63  # an index below 2**63 has at most 63 siblings on its path
MAX_INDEX = (1 << 63) - 1
MAX_EXTRA = 256 * 1024
# Header, extra (base64 grows by 4/3), index, hashes, and the note.
MAX_PROOF_SIZE = 64 + (MAX_EXTRA * 4) // 3 + 8 + 64 + MAX_HASHES * 46 + MAX_NOTE_SIZE

_INDEX = re.compile(r"0|[1-9][0-9]{0,18}")

OpenCheckpoint = Callable[[bytes], Checkpoint]
"""Verifies a signed checkpoint note (log signature, cosigner quorum) and returns the
checkpoint it commits to; raises LedgerError when it does not verify."""


class TlogProofError(LedgerError):
    """A tlog-proof that is malformed or does not verify."""


class MalformedProofError(TlogProofError):
    """Bytes that break the format; `line` is 1-based (None: the file as a whole)."""

    def __init__(self, reason: str, *, line: int | None = None) -> None:
        self.line = line
        self.reason = reason
        super().__init__(f"line {line}: {reason}" if line is not None else reason)


class ProofRejectedError(TlogProofError):
    """A well-formed proof that does not verify; `part` says which check failed:
    "checkpoint" (signature, quorum or origin) or "inclusion". `proof` is the evidence."""

    def __init__(self, part: str, reason: str, *, proof: TlogProof) -> None:
        self.part = part
        self.reason = reason
        self.proof = proof
        super().__init__(f"{part}: {reason}")


@dataclasses.dataclass(frozen=True)
class TlogProof:
    index: int
    hashes: tuple[bytes, ...]
    checkpoint: bytes  # the signed note, verbatim
    extra: bytes | None = None

    def __post_init__(self) -> None:
        if isinstance(self.index, bool) or not 0 <= self.index <= MAX_INDEX:
            raise MalformedProofError("index is out of range")
        if len(self.hashes) > MAX_HASHES:
            raise MalformedProofError(f"more than {MAX_HASHES} proof hashes")
        for i, h in enumerate(self.hashes):
            if len(h) != HASH_SIZE:
                raise MalformedProofError(f"proof hash {i} is {len(h)} bytes, not {HASH_SIZE}")
        if self.extra is not None and not 0 < len(self.extra) <= MAX_EXTRA:
            raise MalformedProofError(f"extra data must be 1 to {MAX_EXTRA} bytes "
                                      "(omit it rather than leave it empty)")
        _check_checkpoint(self.checkpoint, line=None)


def _check_checkpoint(note: bytes, *, line: int | None) -> None:
    """The checkpoint part must be a signed note of a checkpoint; signatures unchecked."""
    try:
        text, _ = split_note(note)
        parse_checkpoint(text)
    except LedgerError as exc:
        raise MalformedProofError(f"the checkpoint is not a signed checkpoint note: {exc}",
                                  line=line) from None


def _ascii_line(raw: bytes, number: int) -> str:
    if not raw:
        raise MalformedProofError("is empty", line=number)
    if any(b < 0x20 or b > 0x7E for b in raw):
        raise MalformedProofError("holds a byte that is not printable ASCII", line=number)
    return raw.decode("ascii")


def _base64(text: str, what: str, number: int) -> bytes:
    try:
        return decode_base64(text, what=what)
    except LedgerError as exc:
        raise MalformedProofError(str(exc), line=number) from None


def parse_proof(data: bytes) -> TlogProof:
    """Parse a tlog-proof strictly; MalformedProofError names the line and the rule."""
    if len(data) > MAX_PROOF_SIZE:
        raise MalformedProofError(f"larger than {MAX_PROOF_SIZE} bytes")
    split = data.find(b"\n\n")
    if split < 0:
        raise MalformedProofError("no empty line before the checkpoint")
    lines = data[:split].split(b"\n")
    if _ascii_line(lines[0], 1) != HEADER:
        raise MalformedProofError(f"the first line is not {HEADER!r}", line=1)
    extra: bytes | None = None
    number = 2
    if number - 1 < len(lines) and lines[number - 1].startswith(b"extra "):
        text = _ascii_line(lines[number - 1], number)[len("extra "):]
        extra = _base64(text, "extra data", number)
        if not extra:
            raise MalformedProofError("extra data is empty (omit the line)", line=number)
        if len(extra) > MAX_EXTRA:
            raise MalformedProofError(f"extra data is larger than {MAX_EXTRA} bytes",
                                      line=number)
        number += 1
    if number - 1 >= len(lines):
        raise MalformedProofError("expected 'index <n>', found the empty line", line=number)
    line = _ascii_line(lines[number - 1], number)
    if not line.startswith("index "):
        raise MalformedProofError("expected 'index <n>'", line=number)
    digits = line[len("index "):]
    if not _INDEX.fullmatch(digits) or int(digits) > MAX_INDEX:
        raise MalformedProofError("the index is not a canonical decimal below 2^63",
                                  line=number)
    index = int(digits)
    hash_lines = lines[number:]
    if len(hash_lines) > MAX_HASHES:
        raise MalformedProofError(f"more than {MAX_HASHES} proof hashes",
                                  line=number + MAX_HASHES + 1)
    hashes: list[bytes] = []
    for raw in hash_lines:
        number += 1
        h = _base64(_ascii_line(raw, number), "proof hash", number)
        if len(h) != HASH_SIZE:
            raise MalformedProofError(f"proof hash is {len(h)} bytes, not {HASH_SIZE}",
                                      line=number)
        hashes.append(h)
    checkpoint = data[split + 2:]
    _check_checkpoint(checkpoint, line=number + 2)
    return TlogProof(index, tuple(hashes), checkpoint, extra)


def format_proof(proof: TlogProof) -> bytes:
    """The one canonical spelling; parse_proof(format_proof(p)) == p."""
    lines = [HEADER]
    if proof.extra is not None:
        lines.append("extra " + base64.b64encode(proof.extra).decode("ascii"))
    lines.append(f"index {proof.index}")
    lines += [base64.b64encode(h).decode("ascii") for h in proof.hashes]
    return ("\n".join(lines) + "\n\n").encode("ascii") + proof.checkpoint


def verify_proof(proof: TlogProof, leaf_hash: bytes, open_checkpoint: OpenCheckpoint, *,
                 origin: str | None = None) -> Checkpoint:
    """Check that `leaf_hash` is at `proof.index` in a checkpoint `open_checkpoint` trusts.

    Raises ProofRejectedError naming the part that failed. Returns the checkpoint.
    """
    try:
        checkpoint = open_checkpoint(proof.checkpoint)
    except LedgerError as exc:
        raise ProofRejectedError("checkpoint", str(exc), proof=proof) from None
    if origin is not None and checkpoint.origin != origin:
        raise ProofRejectedError("checkpoint", f"the origin is {checkpoint.origin!r}, not "
                                 f"{origin!r}", proof=proof)
    try:
        merkle.verify_inclusion(leaf_hash, proof.index, checkpoint.size, proof.hashes,
                                checkpoint.root)
    except ProofError as exc:
        raise ProofRejectedError("inclusion", str(exc), proof=proof) from None
    return checkpoint


def log_key_opener(log: Verifier, *, cosigners: Sequence[Verifier] = ()) -> OpenCheckpoint:
    """Open checkpoints signed by one log key (cosignatures by `cosigners` are checked
    when present, but none is required: a quorum is a trust policy's business)."""

    def opened(note: bytes) -> Checkpoint:
        return open_checkpoint(note, log, cosigners=cosigners)[0]

    return opened
