"""The current status of one (controller, subject, purpose): what the status map holds.

Each key of the map (ledger/smt.py) is map_key(controller, subject, purpose); its value
is the hash of a canonical PurposeStatus: the entry index of the latest event for that
key, the grant it concerns, until when that grant is valid, and who withdrew it if
anyone did. From that a verifier decides the DPV status at any time, offline.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib

from ledger.codec import Bin, Int, Record, Text, optional, spec
from ledger.events import MAX_TIME_MS, WITHDRAWN_BY

_VALUE_TAG = b"consent-ledger status value v1\x00"


class ConsentStatus(enum.StrEnum):
    """W3C DPV consent status terms."""

    GIVEN = "ConsentGiven"
    WITHDRAWN = "ConsentWithdrawn"  # by the person
    REVOKED = "ConsentRevoked"  # by the controller
    EXPIRED = "ConsentExpired"
    UNKNOWN = "ConsentUnknown"  # never granted


@dataclasses.dataclass(frozen=True, slots=True)
class PurposeStatus(Record):
    """The latest event for one (controller, subject, purpose)."""

    index: int = spec(Int(0, 2**63 - 1))  # entry index of that event
    grant: bytes = spec(Bin(size=32))  # event hash of the grant it concerns
    valid_until: int = spec(Int(0, MAX_TIME_MS))
    withdrawn_by: str | None = optional(Text(16, choices=WITHDRAWN_BY))

    def status(self, now_ms: int) -> ConsentStatus:
        if self.withdrawn_by == "subject":
            return ConsentStatus.WITHDRAWN
        if self.withdrawn_by == "controller":
            return ConsentStatus.REVOKED
        return ConsentStatus.GIVEN if now_ms < self.valid_until else ConsentStatus.EXPIRED

    def value_hash(self) -> bytes:
        """What the status map stores for this key."""
        return hashlib.sha256(_VALUE_TAG + self.encode()).digest()
