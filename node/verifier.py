"""Signature checks off the event loop, on every core.

Ed25519 verification is the write path's real ceiling (~8,000/s a core here), and
`cryptography` releases the GIL while it verifies, so checks run in a thread pool, one
chunk per thread. Envelopes that share a batch signature are checked once.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger.errors import LedgerError, RejectedError
from ledger.events import StatusRoot
from ledger.signed import SignedEvent, key_id
from ledger.state import LedgerState

# What the verifier says of one envelope: checked here (True), left to the sequencer
# because its key is not in the log yet (False), or refused.
Verdict = bool | RejectedError

_Check = tuple[bytes, bytes, bytes]  # (public key, signed message, signature)

INLINE_CHECKS = 2  # at most this many signatures are checked on the event loop itself


def _verify_chunk(checks: Sequence[_Check]) -> list[bool]:
    results = []
    for public, message, sig in checks:
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(sig, message)
            results.append(True)
        except InvalidSignature:
            results.append(False)
    return results


def _settle(done: asyncio.Future[list[bool]],
            chunk: list[tuple[_Check, asyncio.Future[bool]]]) -> None:
    if done.cancelled() or done.exception() is not None:
        exc = done.exception() if not done.cancelled() else asyncio.CancelledError()
        for _, future in chunk:
            if not future.done():
                future.set_exception(exc or RuntimeError("verification failed"))
        return
    for (_, future), ok in zip(chunk, done.result(), strict=True):
        if not future.done():
            future.set_result(ok)


class SignatureVerifier:
    """Checks signatures in a thread pool, coalescing the checks of concurrent requests.

    Many clients each sending one event would otherwise pay a thread hop per event (or
    block the event loop); instead checks queue up while the loop runs other requests,
    and the first request to need them flushes the whole queue in one chunk per thread.
    """

    def __init__(self, threads: int) -> None:
        self._threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="verify")
        self._pending: list[tuple[_Check, asyncio.Future[bool]]] = []
        self._flush_scheduled = False
        self._running = 0  # chunks on the pool's threads

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _check_all(self, checks: Sequence[_Check]) -> list[asyncio.Future[bool]]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in checks]
        self._pending.extend(zip(checks, futures, strict=True))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)  # after the requests already runnable add theirs
        return futures

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, []
        loop = asyncio.get_running_loop()
        step = max(16, -(-len(pending) // self._threads))
        for i in range(0, len(pending), step):
            chunk = pending[i:i + step]
            job = loop.run_in_executor(self._pool, _verify_chunk, [c for c, _ in chunk])
            self._running += 1
            job.add_done_callback(functools.partial(_settle, chunk=chunk))
            job.add_done_callback(self._chunk_done)

    def _chunk_done(self, _: asyncio.Future[list[bool]]) -> None:
        self._running -= 1

    async def verify(self, state: LedgerState, items: Sequence[SignedEvent]) -> list[Verdict]:
        verdicts: list[Verdict | None] = [None] * len(items)
        unique: dict[_Check, list[int]] = {}
        for i, signed in enumerate(items):
            if isinstance(signed.body, StatusRoot):
                verdicts[i] = RejectedError("log-authored", "only the log writes status roots")
                continue
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
        if len(checks) <= INLINE_CHECKS and not self._pending and not self._running:
            # Alone, a check or two (a batch signature) costs less than waking a thread:
            # on an idle member that hop measured 1-5 ms of a commit's latency. Under
            # load, checks keep coalescing into chunks on the pool's threads.
            results = _verify_chunk(checks)
        else:
            results = await asyncio.gather(*self._check_all(checks))
        if checks:
            for check, ok in zip(checks, results, strict=True):
                for i in unique[check]:
                    verdicts[i] = True if ok else RejectedError(
                        "bad-signature",
                        f"the signature by key {check[0].hex()[:16]}… does not verify")
        return [v if v is not None else False for v in verdicts]
