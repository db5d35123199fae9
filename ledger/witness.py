"""The witness's side of c2sp.org/tlog-witness (add-checkpoint): parse a request, decide.

A request body is an old size line, the consistency proof from that size, an empty
line, then the signed checkpoint:

    old 20852014
    PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=      <- 0 to 63 base64 hashes
    ...
    <empty line>
    example.com/behind-the-sofa                       <- the checkpoint note, verbatim
    20852163
    CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=

    — example.com/behind-the-sofa Az3g...

The decision follows the spec's order: a malformed body is 400; an origin the witness
has no key for is 404; no verified signature by a trusted key is 403; old > size is
400; old other than the size last cosigned is 409 with that size as
`text/x.tlog.size`; an equal size with another root is 409 too (the spec's choice: it
conflicts with what was cosigned); a consistency proof that does not verify (or any
proof with old 0) is 422; otherwise 200, and the caller must persist the new
state before it sends the cosignature. Nothing here keeps state or a clock: the
caller passes what it last cosigned and the time to cosign at.
"""

from __future__ import annotations

import base64
import dataclasses
import re
from collections.abc import Mapping, Sequence

from ledger.checkpoint import Checkpoint, parse_checkpoint
from ledger.cosignature import CosignatureSigner
from ledger.errors import LedgerError, MalformedNoteError, ProofError
from ledger.merkle import EMPTY_ROOT, HASH_SIZE, verify_consistency
from ledger.note import (
    MAX_NOTE_SIZE,
    Note,
    Signature,
    Verifier,
    decode_base64,
    format_signature_line,
    open_note,
    split_note,
)

MAX_PROOF_LINES = 63
MAX_REQUEST_SIZE = MAX_NOTE_SIZE + 4096  # the note plus an old line and 63 hashes
SIZE_CONTENT_TYPE = "text/x.tlog.size"
_OLD = re.compile(r"old (0|[1-9][0-9]{0,18})")


class MalformedWitnessRequest(LedgerError):
    """An add-checkpoint body that breaks the format; `reason` says which rule."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"malformed add-checkpoint request: {reason}")


@dataclasses.dataclass(frozen=True)
class AddCheckpoint:
    """A parsed request: nothing in it is verified yet."""

    old_size: int
    proof: tuple[bytes, ...]
    note: bytes
    checkpoint: Checkpoint


@dataclasses.dataclass(frozen=True)
class Cosigned:
    """What the witness last cosigned for an origin: the state it must persist."""

    size: int
    root: bytes


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The answer to one request. On 200 the caller persists `checkpoint`, then replies
    with `cosignature_lines`; on 409 the body is `latest_size` as text/x.tlog.size."""

    status: int
    reason: str
    request: AddCheckpoint | None = None
    note: Note | None = None  # the opened note, once a trusted signature verified
    latest_size: int | None = None

    @property
    def accepted(self) -> bool:
        return self.status == 200

    @property
    def evidence(self) -> bool:
        """A log-signed checkpoint that conflicts with what was cosigned: worth keeping."""
        return self.note is not None and self.status in (409, 422) and self.latest_size is None

    def size_body(self) -> bytes:
        if self.latest_size is None:
            raise ValueError("only a 409 for a stale old size carries a size")
        return b"%d\n" % self.latest_size


def parse_add_checkpoint(body: bytes) -> AddCheckpoint:
    """Parse an add-checkpoint body strictly; the note's signatures are not checked."""
    if len(body) > MAX_REQUEST_SIZE:
        raise MalformedWitnessRequest(f"the body is over {MAX_REQUEST_SIZE} bytes")
    head, sep, note = body.partition(b"\n\n")
    if not sep:
        raise MalformedWitnessRequest("no empty line before the checkpoint")
    try:
        lines = head.decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise MalformedWitnessRequest("the old size and proof lines are not ASCII") from None
    match = _OLD.fullmatch(lines[0])
    if match is None:
        raise MalformedWitnessRequest("the first line is not 'old <canonical decimal size>'")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise MalformedWitnessRequest(f"more than {MAX_PROOF_LINES} proof lines")
    proof = []
    for i, line in enumerate(lines[1:]):
        try:
            h = decode_base64(line, what=f"proof line {i + 1}")
        except MalformedNoteError as exc:
            raise MalformedWitnessRequest(str(exc)) from None
        if len(h) != HASH_SIZE:
            raise MalformedWitnessRequest(f"proof line {i + 1} is not a {HASH_SIZE}-byte hash")
        proof.append(h)
    try:
        text, _ = split_note(note)
        checkpoint = parse_checkpoint(text)
    except MalformedNoteError as exc:
        raise MalformedWitnessRequest(f"the checkpoint: {exc}") from None
    return AddCheckpoint(int(match.group(1)), tuple(proof), note, checkpoint)


def decide(
    body: bytes,
    *,
    logs: Mapping[str, Sequence[Verifier]],
    cosigned: Mapping[str, Cosigned],
) -> Verdict:
    """The verdict on an add-checkpoint body, given the trusted log keys by origin and
    what was last cosigned by origin (absent: never cosigned, size 0)."""
    try:
        request = parse_add_checkpoint(body)
    except MalformedWitnessRequest as exc:
        return Verdict(400, exc.reason)
    cp = request.checkpoint
    keys = logs.get(cp.origin)
    if not keys:
        return Verdict(404, f"unknown log origin {cp.origin!r}", request)
    try:
        note = open_note(request.note, keys)
    except LedgerError as exc:
        return Verdict(403, f"no valid signature by a trusted key of {cp.origin}: {exc}",
                       request)
    if request.old_size > cp.size:
        return Verdict(400, f"old size {request.old_size} is over the checkpoint's size "
                       f"{cp.size}", request, note)
    last = cosigned.get(cp.origin)
    last_size = 0 if last is None else last.size
    if request.old_size != last_size:
        return Verdict(409, f"old size {request.old_size} is not the size last cosigned, "
                       f"{last_size}", request, note, latest_size=last_size)
    if last is not None and cp.size == last.size and cp.root != last.root:
        return Verdict(409, f"size {cp.size} was cosigned with root {last.root.hex()}, "
                       f"this checkpoint says {cp.root.hex()}", request, note)
    if request.old_size == 0:
        # Every tree extends the empty tree: the spec wants no proof here.
        if request.proof:
            return Verdict(422, "a proof from size 0 must be empty", request, note)
        if cp.size == 0 and cp.root != EMPTY_ROOT:
            return Verdict(422, "a tree of size 0 must have the empty root", request, note)
        return Verdict(200, "cosigned", request, note)
    assert last is not None  # old_size == last_size > 0
    try:
        verify_consistency(last.size, cp.size, request.proof, last.root, cp.root)
    except ProofError as exc:
        return Verdict(422, str(exc), request, note)
    return Verdict(200, "cosigned", request, note)


def cosignature_lines(checkpoint_note: bytes, cosigner: CosignatureSigner,
                      timestamp: int) -> bytes:
    """The 200 reply body: the cosigner's signature line on the checkpoint's text."""
    text, _ = split_note(checkpoint_note)
    raw = text.encode("utf-8")
    sig = Signature(cosigner.name, cosigner.key_id, cosigner.sign(raw, timestamp))
    return format_signature_line(sig).encode("utf-8")


def format_add_checkpoint(old_size: int, proof: Sequence[bytes], note: bytes) -> bytes:
    """A request body, as a log (or a test) sends it."""
    lines = [f"old {old_size}", *(base64.b64encode(h).decode("ascii") for h in proof)]
    return ("\n".join(lines) + "\n\n").encode("ascii") + note
