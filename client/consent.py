"""Refusing to use personal data without a verified proof of current consent.

`ConsentClient.require(controller, subject, purpose)` returns a StatusDecision only
when the node proved ConsentGiven, and raises otherwise. Each answer of GET /v1/status
passes three gates before its status is believed:

1. the trust policy: a log of the policy signed the checkpoint and, if the policy
   names a quorum, enough witnesses cosigned it within `max_age_s`;
2. the trust store: the checkpoint extends the last one verified (a consistency proof
   is fetched when it grew), so a rollback or a fork raises RollbackDetected or
   ForkDetected with both signed notes as evidence;
3. client/status.py: the status root entry is included in that checkpoint and the
   status map proof leads from it to the value, or to its absence.

Freshness. Under a quorum, a decision may be relied on until the quorum's latest
cosignature time plus `max_age_s`, and an older checkpoint raises CheckpointStale.
Under `quorum none` nothing signed carries a time: the log's signature is then all
that is checked, a node can replay its latest checkpoint for as long as it likes
(the trust store only refuses one that is older than what it has seen), and a
decision is cached for `max_age_s` after it was fetched. Require witnesses where
staleness matters.

Decisions are cached per (controller, subject, purpose) within that bound, and
re-judged from the proven value at each use: a cached grant that reaches valid_until
raises Expired without a request. Denials are cached too (a refusal is the safe side);
call `forget` after recording a new grant through another client.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import aiohttp

from client.decisions import DEFAULT_MAX_ENTRIES, DecisionCache
from client.errors import ClientError, NodeUnavailableError, ProblemError, ReplyError
from client.http_session import SessionOwner, read_capped
from client.log_client import MAX_REPLY, _hashes, _json_or_text
from client.policy import TrustedCheckpoint, TrustPolicy
from client.status import StatusDecision, StatusRootCache, verify_status
from client.trust_store import TrustStore, TrustStoreChanged
from ledger.checkpoint import Checkpoint
from ledger.status import ConsentStatus

P = ParamSpec("P")
R = TypeVar("R")

SUBJECT_SIZE = 32
_ADVANCE_ATTEMPTS = 3  # another process advancing the shared store between our steps


# ---- Errors ----------------------------------------------------------------------------


class ConsentDenied(ClientError):
    """The status is proven, and it is not ConsentGiven; `decision` is the evidence."""

    def __init__(self, decision: StatusDecision, *, controller: str, subject: bytes,
                 purpose: str) -> None:
        self.decision = decision
        self.controller = controller
        self.subject = subject
        self.purpose = purpose
        super().__init__(f"{controller} has no consent of subject {subject.hex()[:16]}… for "
                         f"{purpose}: {decision.status.value} (proven at checkpoint "
                         f"{decision.checkpoint.size} of {decision.checkpoint.origin})")


class NotGranted(ConsentDenied):
    """ConsentUnknown: no grant was ever recorded for this key."""


class Revoked(ConsentDenied):
    """ConsentRevoked: the controller withdrew the grant."""


class Withdrawn(ConsentDenied):
    """ConsentWithdrawn: the person withdrew the grant."""


class Expired(ConsentDenied):
    """ConsentExpired: the grant's valid_until has passed on this machine's clock."""


_DENIALS: dict[ConsentStatus, type[ConsentDenied]] = {
    ConsentStatus.UNKNOWN: NotGranted,
    ConsentStatus.REVOKED: Revoked,
    ConsentStatus.WITHDRAWN: Withdrawn,
    ConsentStatus.EXPIRED: Expired,
}


# ---- The client ------------------------------------------------------------------------


class ConsentClient(SessionOwner):
    _timeout_s = 30.0

    def __init__(self, base_url: str, *, policy: TrustPolicy, trust_store: TrustStore,
                 max_age_s: int, session: aiohttp.ClientSession | None = None,
                 clock: Callable[[], float] = time.time,
                 max_cached: int = DEFAULT_MAX_ENTRIES, max_retries: int = 3) -> None:
        """`clock` returns seconds since the epoch (time.time); tests move it."""
        if type(max_age_s) is not int or max_age_s <= 0:
            raise ValueError("max_age_s must be a positive number of seconds")
        self.base_url = base_url.rstrip("/")
        self.policy = policy
        self.trust_store = trust_store
        self.max_age_s = max_age_s
        self._clock = clock
        super().__init__(session)
        self._max_retries = max_retries
        self._cache = DecisionCache(max_cached)
        # The last checkpoint of each origin this process proved into the store: while
        # the node's checkpoint has not grown, the store's file is not read again.
        self._trusted: dict[str, Checkpoint] = {}
        self._last: TrustedCheckpoint | None = None  # the last note the policy accepted
        self._roots = StatusRootCache()
        self._advancing = asyncio.Lock()

    # ---------------------------------------------------------------- public API

    async def require(self, controller: str, subject: bytes, purpose: str) -> StatusDecision:
        """The verified decision if consent is given now; else raise a ConsentDenied.

        Verification failures raise LogVerificationError (CheckpointStale,
        QuorumNotMet, RollbackDetected, ForkDetected among them).
        """
        decision = await self.status(controller, subject, purpose)
        if decision.status is ConsentStatus.GIVEN:
            return decision
        raise _DENIALS[decision.status](decision, controller=controller, subject=subject,
                                        purpose=purpose)

    async def status(self, controller: str, subject: bytes, purpose: str) -> StatusDecision:
        """The verified decision whatever it says, from the cache while it is fresh."""
        if len(subject) != SUBJECT_SIZE:
            raise ValueError(f"subject must be a {SUBJECT_SIZE}-byte commitment")
        key = (controller, bytes(subject), purpose)
        cached = self._cache.get(key, self._now_ms())
        if cached is not None:
            return cached
        fetched_ms = self._now_ms()
        answer = await self._get_json("/v1/status", {
            "controller": controller, "subject": subject.hex(), "purpose": purpose})
        now_ms = self._now_ms()
        trusted = await self._trust(_note_of(answer), now_ms)

        def opened(note: bytes) -> Checkpoint:
            if note != trusted.note:  # verify_status reads the note again from the answer
                raise ReplyError("the status answer changed its checkpoint")
            return trusted.checkpoint

        decision = verify_status(answer, controller=controller, subject=key[1],
                                 purpose=purpose, open_checkpoint=opened, now_ms=now_ms,
                                 roots=self._roots)
        if trusted.quorum_time is None:
            fresh_until = fetched_ms + self.max_age_s * 1000
        else:
            fresh_until = (trusted.quorum_time + self.max_age_s) * 1000
        self._cache.put(key, decision, fresh_until)
        return decision

    def forget(self, controller: str, subject: bytes, purpose: str) -> None:
        """Drop one cached decision, so the next require asks the node."""
        self._cache.forget((controller, bytes(subject), purpose))

    def clear(self) -> None:
        """Drop every cached decision (the trusted checkpoints stay)."""
        self._cache.clear()

    def guard(self, *, purpose: str, controller: str
              ) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
        """Decorate an async function taking `subject=`: it runs only after require()."""

        def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
            @functools.wraps(fn)
            async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
                subject = kwargs.get("subject")
                if not isinstance(subject, bytes):
                    raise TypeError(f"{fn.__qualname__} is guarded by consent: call it "
                                    "with subject=<commitment bytes>")
                await self.require(controller, subject, purpose)
                return await fn(*args, **kwargs)

            return guarded

        return decorate

    @contextlib.asynccontextmanager
    async def consent(self, controller: str, subject: bytes,
                      purpose: str) -> AsyncIterator[StatusDecision]:
        """`async with client.consent(...) as decision:` runs the body only if given.

        The check is made on entry; a revocation during the body is not seen by it.
        """
        yield await self.require(controller, subject, purpose)

    # ---------------------------------------------------------------- verification

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def _trust(self, note: bytes, now_ms: int) -> TrustedCheckpoint:
        # Under `quorum none` no age can be judged, and the policy says so by raising
        # CheckpointStale if asked: only the log signature is checked then.
        max_age = self.max_age_s if self.policy.can_judge_freshness else None
        now, last = now_ms // 1000, self._last
        if last is not None and note == last.note and (
                last.quorum_time is None or last.quorum_time >= now - self.max_age_s):
            # The same bytes verify the same way; only their age could have changed.
            trusted = last
        else:
            trusted = self.policy.check_checkpoint(note, now=now, max_age=max_age)
            self._last = trusted
        if not self._known(trusted.checkpoint):
            async with self._advancing:
                if not self._known(trusted.checkpoint):  # another task may have done it
                    await self._advance(trusted)
        return trusted

    def _known(self, cp: Checkpoint) -> bool:
        known = self._trusted.get(cp.origin)
        return known is not None and known.size == cp.size and known.root == cp.root

    async def _advance(self, trusted: TrustedCheckpoint) -> None:
        cp, store = trusted.checkpoint, self.trust_store
        for attempt in range(_ADVANCE_ATTEMPTS):
            span = await asyncio.to_thread(store.needs_proof, cp.origin, cp.size)
            proof: tuple[bytes, ...] = ()
            if span is not None:
                proof = await self._consistency(*span)
            try:
                # The store raises RollbackDetected or ForkDetected, with the evidence.
                await asyncio.to_thread(store.advance, trusted.note, cp, proof,
                                        proof_from=None if span is None else span[0])
            except TrustStoreChanged:
                if attempt == _ADVANCE_ATTEMPTS - 1:
                    raise
                continue
            break
        known = self._trusted.get(cp.origin)
        if known is None or cp.size >= known.size:
            self._trusted[cp.origin] = cp

    async def _consistency(self, first: int, second: int) -> tuple[bytes, ...]:
        reply = await self._get_json("/v1/proofs/consistency", {"from": first, "to": second})
        if type(reply) is not dict or reply.get("from") != first or reply.get("to") != second:
            raise ReplyError("the consistency proof is for other sizes than asked")
        return _hashes(reply.get("proof"))

    # ---------------------------------------------------------------- HTTP


    async def _get_json(self, path: str, params: dict[str, Any]) -> Any:
        """One GET, retried on 503 and lost connections (reads are idempotent)."""
        url = self.base_url + path
        for attempt in range(self._max_retries + 1):
            last = attempt == self._max_retries
            try:
                async with self._http().get(url, params=params) as resp:
                    if resp.status == 200:
                        data = await read_capped(resp, MAX_REPLY)
                        try:
                            return json.loads(data)
                        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                            raise ReplyError(f"GET {path}: the reply is not JSON") from None
                    if resp.status != 503 or last:
                        raise ProblemError.from_json(await _json_or_text(resp), resp.status)
            except (TimeoutError, aiohttp.ClientError) as exc:
                if last:
                    raise NodeUnavailableError(
                        f"GET {url}: {exc or type(exc).__name__}") from None
            await asyncio.sleep(min(0.1 * 2**attempt, 2.0))
        raise AssertionError("unreachable")  # the last attempt returns or raises


def _note_of(answer: Any) -> bytes:
    note = answer.get("checkpoint") if type(answer) is dict else None
    if type(note) is not str:
        raise ReplyError("the status answer lacks its checkpoint")
    return note.encode()
