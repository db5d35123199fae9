"""Small builders of valid events for tests; each test changes only what it is about."""

from __future__ import annotations

import hashlib
from typing import Any

from ledger.commitment import subject_commitment, token_hash
from ledger.events import Grant, Notice, Revoke

CONTROLLER = "shop.example"
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms
DAY = 86_400_000


def grant(**changes: Any) -> Grant:
    fields: dict[str, Any] = dict(
        controller=CONTROLLER,
        subject=subject_commitment(CONTROLLER, "customer-42", bytes(32)),
        purposes=("dpv:Marketing", "shop.example:newsletter"),
        data_categories=("pd:EmailAddress", "pd:Name"),
        legal_basis="dpv:Consent",
        notice=Notice(version="2026-01", sha256=hashlib.sha256(b"notice text").digest(),
                      url="https://shop.example/privacy/2026-01"),
        collection_method="web-form",
        jurisdiction="DE",
        language="de",
        consented_at=T0,
        valid_until=T0 + 365 * DAY,
        retention_days=730,
        withdrawal="https://shop.example/consent",
        token_hash=token_hash(b"t" * 32),
    )
    fields.update(changes)
    return Grant(**fields)


def revoke(**changes: Any) -> Revoke:
    fields: dict[str, Any] = dict(
        controller=CONTROLLER, by="subject", revoked_at=T0 + 1_000, grant=bytes(range(32)))
    fields.update(changes)
    return Revoke(**fields)
