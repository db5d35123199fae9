"""Checking a node's answer to GET /v1/status, trusting nothing in it.

The answer is proven in three links: the checkpoint is signed by the log (and, through
a trust policy, cosigned); the status root entry is the checkpoint's last entry, proven
included; the status map proof leads from that root to the key's value, or proves the
key absent. The decision is then taken here, on this machine's clock.
"""

from __future__ import annotations

import binascii
import dataclasses
from collections.abc import Callable
from typing import Any

from client.errors import LogVerificationError, ReplyError
from ledger import merkle
from ledger.checkpoint import Checkpoint
from ledger.entry import LogEntry
from ledger.errors import LedgerError
from ledger.events import StatusRoot
from ledger.smt import MapProof, map_key, verify_map_proof
from ledger.status import ConsentStatus, PurposeStatus


@dataclasses.dataclass(frozen=True)
class StatusDecision:
    status: ConsentStatus
    value: PurposeStatus | None  # None: never granted
    checkpoint: Checkpoint
    checkpoint_note: bytes
    root_index: int


class StatusRootCache:
    """The last status root entry decoded, by its bytes.

    Every answer at one checkpoint carries the same root entry, and decoding it (a
    canonical msgpack check and a signed body) costs more than the rest of a status
    check; the bytes decode to the same entry each time, so this saves work and
    trusts nothing: the inclusion proof is still checked for every answer.
    """

    def __init__(self) -> None:
        self._raw = b""
        self._entry: LogEntry | None = None

    def decode(self, raw: bytes) -> LogEntry:
        if self._entry is None or raw != self._raw:
            entry = LogEntry.decode(raw)  # raises before anything is kept
            self._raw, self._entry = raw, entry
        return self._entry


def _b64(value: Any, what: str) -> bytes:
    if type(value) is not str:
        raise ReplyError(f"the status answer lacks {what}")
    try:
        # Strict: no characters outside the alphabet, padding only at the end (and
        # twice as fast as base64.b64decode, which counts with a dozen per answer).
        return binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError):
        raise ReplyError(f"the status answer's {what} is not base64") from None


def verify_status(answer: Any, *, controller: str, subject: bytes, purpose: str,
                  open_checkpoint: Callable[[bytes], Checkpoint], now_ms: int,
                  roots: StatusRootCache | None = None) -> StatusDecision:
    """Check every link of a status answer; raise LogVerificationError with the evidence.

    `open_checkpoint` verifies the signed note (the log key, or a trust policy's quorum
    and freshness) and returns the checkpoint it commits to. `roots`, if given, keeps
    the last root entry decoded for the next call.
    """
    if type(answer) is not dict:
        raise ReplyError("the status answer is not a JSON object")
    note = answer.get("checkpoint")
    if type(note) is not str:
        raise ReplyError("the status answer lacks its checkpoint")
    note_bytes = note.encode()
    checkpoint = open_checkpoint(note_bytes)
    index = answer.get("root_index")
    if type(index) is not int or index != checkpoint.size - 1:
        raise LogVerificationError(
            f"the status root is entry {index!r}, not the checkpoint's last entry "
            f"{checkpoint.size - 1}", checkpoint=note_bytes)
    raw = _b64(answer.get("root_entry"), "root_entry")
    proof_hashes = answer.get("inclusion_proof")
    if type(proof_hashes) is not list:
        raise ReplyError("the status answer lacks its inclusion proof")
    proof = [_b64(h, "inclusion_proof") for h in proof_hashes]
    evidence: dict[str, Any] = {"checkpoint": note_bytes, "index": index,
                                "size": checkpoint.size, "entry": raw}
    try:
        merkle.verify_inclusion(merkle.leaf_hash(raw), index, checkpoint.size, proof,
                                checkpoint.root)
        entry = LogEntry.decode(raw) if roots is None else roots.decode(raw)
    except LedgerError as exc:
        raise LogVerificationError(f"the status root entry does not verify: {exc}",
                                   **evidence) from None
    root = entry.signed.body
    if not isinstance(root, StatusRoot) or root.size != index:
        raise LogVerificationError("the checkpoint's last entry is not the status root "
                                   "over the entries before it", **evidence)
    value_raw = answer.get("value")
    try:
        map_proof = MapProof.decode(_b64(answer.get("map_proof"), "map_proof"))
        value = None if value_raw is None else PurposeStatus.decode(_b64(value_raw, "value"))
        verify_map_proof(root.map_root, map_key(controller, subject, purpose),
                         None if value is None else value.value_hash(), map_proof)
    except LedgerError as exc:
        raise LogVerificationError(f"the status of ({controller}, {subject.hex()[:16]}…, "
                                   f"{purpose}) does not verify: {exc}", **evidence) from None
    status = ConsentStatus.UNKNOWN if value is None else value.status(now_ms)
    return StatusDecision(status, value, checkpoint, note_bytes, index)
