"""Events encoded+signed and decoded+verified per second, single and batch-signed.

    python -m bench.bench_events [--events N]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.commitment import subject_commitment, token_hash
from ledger.events import Grant, Notice
from ledger.signed import SignedEvent, public_bytes, sign_batch, sign_event, verify_signature

T0 = 1_767_225_600_000


def sample_grants(n: int) -> list[Grant]:
    notice = Notice(version="2026-01", sha256=hashlib.sha256(b"notice").digest(),
                    url="https://shop.example/privacy")
    return [
        Grant(controller="shop.example",
              subject=subject_commitment("shop.example", f"customer-{i}", os.urandom(32)),
              purposes=("dpv:Marketing", "dpv:ServiceProvision"),
              data_categories=("pd:EmailAddress", "pd:Name", "pd:PurchaseHistory"),
              legal_basis="dpv:Consent", notice=notice, collection_method="web-form",
              jurisdiction="DE", language="de", consented_at=T0 + i,
              valid_until=T0 + i + 365 * 86_400_000, retention_days=730,
              withdrawal="https://shop.example/consent", token_hash=token_hash(os.urandom(32)))
        for i in range(n)
    ]


def rate(n: int, fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return n / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args(argv)
    n = args.events
    key = Ed25519PrivateKey.generate()
    public = public_bytes(key)
    grants = sample_grants(n)

    singles: list[SignedEvent] = []
    r = rate(n, lambda: singles.extend(sign_event(g, key) for g in grants))
    print(f"events encoded+signed (one signature each):    {r:>10,.0f} /s")
    batched: list[SignedEvent] = []
    r = rate(n, lambda: [batched.extend(sign_batch(grants[i:i + 100], key))
                         for i in range(0, n, 100)])
    print(f"events encoded+signed (batches of 100):        {r:>10,.0f} /s")

    single_bytes = [s.encode() for s in singles]
    batch_bytes = [s.encode() for s in batched]
    r = rate(n, lambda: [SignedEvent.decode(b) for b in single_bytes])
    print(f"envelopes decoded (strict, canonical):         {r:>10,.0f} /s")

    def decode_verify_single() -> None:
        for b in single_bytes:
            verify_signature(SignedEvent.decode(b), public)

    r = rate(n, decode_verify_single)
    print(f"events decoded+verified (one signature each):  {r:>10,.0f} /s")

    def decode_verify_batched() -> None:
        verified: set[bytes] = set()
        for b in batch_bytes:
            s = SignedEvent.decode(b)
            message = s.signed_message()
            if message not in verified:  # one Ed25519 check per batch, as the node does
                verify_signature(s, public)
                verified.add(message)

    r = rate(n, decode_verify_batched)
    print(f"events decoded+verified (batches of 100):      {r:>10,.0f} /s")


if __name__ == "__main__":
    main()
