"""The log entry: what the sequencer appends and the Merkle tree commits to.

An entry wraps a signed event with its index, the log's own timestamp and the leaf
hash of the previous entry, so the log is a hash chain as well as a Merkle tree: an
auditor replaying entries in order can check each link without the tree.
"""

from __future__ import annotations

import dataclasses

from ledger import merkle
from ledger.codec import Bin, Int, Nested, Record, pack, spec
from ledger.errors import OversizeError
from ledger.events import MAX_TIME_MS
from ledger.lazy import lazy
from ledger.signed import SignedEvent

MAX_ENTRY_SIZE = 65_535  # a tlog-tiles entry bundle stores each length in 16 bits
GENESIS_PREV = bytes(32)
_MAP4 = b"\x84"  # msgpack fixmap of 4 pairs; the head of 3 is replaced by it
_SIGNED_KEY = pack("signed")


@dataclasses.dataclass(frozen=True)
class LogEntry(Record):
    MAX_SIZE = MAX_ENTRY_SIZE

    index: int = spec(Int(0, 2**63 - 1))
    time: int = spec(Int(0, MAX_TIME_MS))
    prev: bytes = spec(Bin(size=32))
    signed: SignedEvent = spec(Nested(SignedEvent))

    def validate(self) -> None:
        if len(self.encoded) > MAX_ENTRY_SIZE:
            raise OversizeError(f"entry is {len(self.encoded)} bytes", field="signed")

    @lazy
    def encoded(self) -> bytes:
        # The canonical map {index, time, prev, signed} with the envelope's own canonical
        # bytes spliced in: a leader's envelopes come with them from the request, and
        # encoding every envelope again was a tenth of a node's work.
        head = pack({"index": self.index, "time": self.time, "prev": self.prev})
        return _MAP4 + head[1:] + _SIGNED_KEY + self.signed.encoded

    @lazy
    def leaf_hash(self) -> bytes:
        return merkle.leaf_hash(self.encoded)
