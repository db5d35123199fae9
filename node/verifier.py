"""Signature checks off the event loop, on every core.

Ed25519 verification is the write path's real ceiling (~8,000/s a core here), and
`cryptography` releases the GIL while it verifies, so checks run in a thread pool, one
chunk per thread. Envelopes that share a batch signature are checked once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger.errors import LedgerError, RejectedError
from ledger.signed import SignedEvent, key_id
from ledger.state import LedgerState

# What the verifier says of one envelope: checked here (True), left to the sequencer
# because its key is not in the log yet (False), or refused.
Verdict = bool | RejectedError

_Check = tuple[bytes, bytes, bytes]  # (public key, signed message, signature)


def _verify_chunk(checks: Sequence[_Check]) -> list[bool]:
    results = []
    for public, message, sig in checks:
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(sig, message)
            results.append(True)
        except InvalidSignature:
            results.append(False)
    return results


class SignatureVerifier:
    def __init__(self, threads: int) -> None:
        self._threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="verify")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    async def verify(self, state: LedgerState, items: Sequence[SignedEvent]) -> list[Verdict]:
        verdicts: list[Verdict | None] = [None] * len(items)
        unique: dict[_Check, list[int]] = {}
        for i, signed in enumerate(items):
            if signed.token is not None:
                verdicts[i] = True  # the state machine checks the token against the grant
                continue
            try:
                public = state.signer_key(signed)
            except RejectedError:
                verdicts[i] = False  # maybe registered earlier in this same submission
                continue
            assert public is not None and signed.sig is not None
            if key_id(public) != signed.signer:
                verdicts[i] = RejectedError("bad-signature", "signer id does not match its key")
                continue
            try:
                check = (public, signed.signed_message(), signed.sig)
            except LedgerError as exc:
                verdicts[i] = RejectedError("bad-signature", str(exc))
                continue
            unique.setdefault(check, []).append(i)
        checks = list(unique)
        if checks:
            loop = asyncio.get_running_loop()
            step = max(64, -(-len(checks) // self._threads))
            chunks = [checks[i:i + step] for i in range(0, len(checks), step)]
            if len(chunks) == 1 and len(checks) <= 4:
                results = [_verify_chunk(checks)]  # a thread hop costs more than a few checks
            else:
                results = await asyncio.gather(
                    *(loop.run_in_executor(self._pool, _verify_chunk, c) for c in chunks))
            for check, ok in zip(checks, (r for chunk in results for r in chunk), strict=True):
                for i in unique[check]:
                    verdicts[i] = True if ok else RejectedError(
                        "bad-signature",
                        f"the signature by key {check[0].hex()[:16]}… does not verify")
        return [v if v is not None else False for v in verdicts]
