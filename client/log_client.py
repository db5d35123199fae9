"""An async client of a node's write path that believes nothing the node says unproven.

Every checkpoint must carry the log key's signature and be consistent with every other
checkpoint this client has seen; every accepted index is proven twice over: its entry
(fetched from the tlog-tiles entry bundles) must hold the submitted event and hash to
the returned leaf hash, and that leaf must be included in the returned checkpoint. A
node that lies produces a LogVerificationError holding the signed evidence.

Writes are idempotent (the node deduplicates by event hash), so a 503 or a dropped
connection is retried, a bounded number of times, honouring Retry-After.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import aiohttp

from client.errors import (
    ClientError,
    LogVerificationError,
    NodeUnavailableError,
    ProblemError,
    ReplyError,
)
from client.http_session import SessionOwner, read_capped
from client.wire import encode_batch
from ledger import merkle
from ledger.checkpoint import Checkpoint, open_checkpoint
from ledger.entry import LogEntry
from ledger.errors import LedgerError, ProofError
from ledger.note import new_verifier
from ledger.signed import SignedEvent
from ledger.tiles import TILE_WIDTH, TileId, entry_tile_for, format_tile_path, parse_entry_bundle

T = TypeVar("T")

MAX_REPLY = 8 * 1024 * 1024
MAX_TILE = 256 * (2 + 65_535)  # a full entry bundle of maximal entries
HASH_SIZE = 32


@dataclasses.dataclass(frozen=True)
class VerifiedCheckpoint:
    """A checkpoint whose log signature verified; `note` is the signed text as served."""

    checkpoint: Checkpoint
    note: bytes

    @property
    def size(self) -> int:
        return self.checkpoint.size

    @property
    def root(self) -> bytes:
        return self.checkpoint.root


@dataclasses.dataclass(frozen=True)
class Accepted:
    """An event in the log, with its receipt: the inclusion proof and signed checkpoint."""

    index: int
    event_id: bytes
    leaf_hash: bytes
    duplicate: bool  # it was already in the log; index is where it was first sequenced
    proof: tuple[bytes, ...]
    checkpoint: VerifiedCheckpoint
    entry: bytes | None = None  # the entry's bytes, checked: client/receipts.py needs them


@dataclasses.dataclass(frozen=True)
class Rejected:
    problem: ProblemError


SubmitResult = Accepted | Rejected


class LogClient(SessionOwner):
    def __init__(self, base_url: str, *, log_key: str,
                 session: aiohttp.ClientSession | None = None,
                 max_retries: int = 5, max_retry_after: float = 30.0,
                 max_parallel_requests: int = 32) -> None:
        try:
            self._verifier = new_verifier(log_key)
        except LedgerError as exc:
            raise ClientError(f"the log key {log_key!r} is not a note verifier key: {exc}"
                              ) from None
        self.base_url = base_url.rstrip("/")
        super().__init__(session)
        self._max_retries = max_retries
        self._max_retry_after = max_retry_after
        self._slots = asyncio.Semaphore(max_parallel_requests)
        self.latest: VerifiedCheckpoint | None = None
        """The largest checkpoint seen; every other one seen was proven consistent with it."""

    @property
    def origin(self) -> str:
        return self._verifier.name

    # ---------------------------------------------------------------- public API

    async def checkpoint(self) -> VerifiedCheckpoint:
        """The node's current checkpoint, verified and checked consistent with earlier ones."""
        note = await self._request("GET", "/checkpoint", self._read_bytes)
        cp = self._open(note)
        await self._observe(cp)
        return cp

    async def submit(self, events: Sequence[SignedEvent]) -> list[SubmitResult]:
        """Submit 1 to 1,000 envelopes; return one result each, every acceptance proven."""
        if not events:
            return []
        reply = await self._request("POST", "/v1/events", self._read_json,
                                    data=encode_batch(events),
                                    headers={"Content-Type": "application/msgpack"})
        if type(reply) is not dict or type(reply.get("results")) is not list \
                or type(reply.get("checkpoint")) is not str:
            raise ReplyError("the reply to POST /v1/events lacks results or a checkpoint")
        if len(reply["results"]) != len(events):
            raise ReplyError(f"{len(reply['results'])} results for {len(events)} events")
        cp = self._open(reply["checkpoint"].encode("utf-8"))
        await self._observe(cp)
        claims = [self._claim(r, s, cp) for r, s in zip(reply["results"], events, strict=True)]
        accepted = [(i, c) for i, c in enumerate(claims) if not isinstance(c, Rejected)]
        # Entries and proofs are fetched all at once; _request bounds the parallelism.
        entries, proofs = await asyncio.gather(
            self._entries({c[0] for _, c in accepted}, cp),
            asyncio.gather(*(self._inclusion(c[0], c[1], cp) for _, c in accepted)))
        results: list[SubmitResult] = []
        proof_of = {i: p for (i, _), p in zip(accepted, proofs, strict=True)}
        for i, claim in enumerate(claims):
            if isinstance(claim, Rejected):
                results.append(claim)
                continue
            index, leaf, duplicate = claim
            self._check_entry(entries[index], index, leaf, events[i], cp)
            results.append(Accepted(index, events[i].id, leaf, duplicate, proof_of[i], cp,
                                    entries[index]))
        return results

    async def entry(self, index: int, checkpoint: VerifiedCheckpoint) -> LogEntry:
        """Entry `index`, decoded strictly and proven included in `checkpoint`."""
        if not 0 <= index < checkpoint.size:
            raise ValueError(f"index {index} is not below the checkpoint's size "
                             f"{checkpoint.size}")
        reply = await self._get_json(f"/v1/entries/{index}")
        if type(reply) is not dict or reply.get("index") != index:
            raise ReplyError(f"the reply for entry {index} names another index")
        raw = _unb64(reply.get("entry"), "entry", None)
        leaf = merkle.leaf_hash(raw)
        if _unb64(reply.get("leaf_hash"), "leaf_hash", HASH_SIZE) != leaf:
            raise LogVerificationError(f"entry {index} does not hash to the leaf hash served "
                                       "with it", index=index, entry=raw)
        await self._inclusion(index, leaf, checkpoint)
        try:
            entry = LogEntry.decode(raw)
        except LedgerError as exc:
            raise LogVerificationError(f"entry {index}, included in the log, does not decode: "
                                       f"{exc}", checkpoint=checkpoint.note, index=index,
                                       size=checkpoint.size, leaf_hash=leaf, entry=raw) from None
        if entry.index != index:
            raise LogVerificationError(f"entry at index {index} says it is entry {entry.index}",
                                       checkpoint=checkpoint.note, index=index,
                                       size=checkpoint.size, leaf_hash=leaf, entry=raw)
        return entry

    async def consistency(self, old: VerifiedCheckpoint, new: VerifiedCheckpoint) -> None:
        """Prove that `new` extends `old`, or raise LogVerificationError with both notes.

        Every tree extends the empty one, so from size 0 nothing is fetched.
        """
        if old.size > new.size:
            raise ValueError(f"the old checkpoint ({old.size}) is larger than the new "
                             f"({new.size})")
        if old.size == new.size:
            if old.root != new.root:
                raise LogVerificationError(f"two checkpoints of size {new.size} with different "
                                           "roots: the log forked", size=new.size,
                                           checkpoint=new.note, other_checkpoint=old.note)
            return
        if old.size == 0:
            return
        reply = await self._get_json(f"/v1/proofs/consistency?from={old.size}&to={new.size}")
        if type(reply) is not dict or reply.get("from") != old.size \
                or reply.get("to") != new.size:
            raise ReplyError("the consistency proof is for other sizes than asked")
        proof = _hashes(reply.get("proof"))
        try:
            merkle.verify_consistency(old.size, new.size, proof, old.root, new.root)
        except ProofError as exc:
            raise LogVerificationError(
                f"checkpoint {new.size} is not consistent with checkpoint {old.size}: {exc}",
                proof=proof, size=new.size, index=old.size, checkpoint=new.note,
                other_checkpoint=old.note) from None

    @staticmethod
    async def fetch_log_key(base_url: str, session: aiohttp.ClientSession) -> str:
        """The log key the node announces: trust on first use, so say so to the user."""
        url = f"{base_url.rstrip('/')}/v1/keys"
        try:
            async with session.get(url) as resp:
                if resp.status != 200:
                    raise ProblemError.from_json(await _json_or_text(resp), resp.status)
                reply = await _json_or_text(resp)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise NodeUnavailableError(f"GET {url}: {exc or type(exc).__name__}") from None
        vkey = reply.get("log") if isinstance(reply, dict) else None
        if type(vkey) is not str:
            raise ReplyError("GET /v1/keys gave no log key")
        try:
            new_verifier(vkey)
        except LedgerError as exc:
            raise ReplyError(f"GET /v1/keys gave an invalid log key: {exc}") from None
        return vkey

    # ---------------------------------------------------------------- verification

    def _open(self, note: bytes) -> VerifiedCheckpoint:
        try:
            cp, _ = open_checkpoint(note, self._verifier)
        except LedgerError as exc:
            raise LogVerificationError(f"the checkpoint does not verify against the log key: "
                                       f"{exc}", checkpoint=note) from None
        return VerifiedCheckpoint(cp, note)

    async def _observe(self, cp: VerifiedCheckpoint) -> None:
        """Prove `cp` consistent with the latest checkpoint, which it may then become.

        Lock-free, so concurrent submissions fetch their proofs in parallel: if another
        checkpoint became the latest while this one was being checked, this one is
        checked again against that one. Every checkpoint seen thus lies on one chain of
        proven prefixes (consistency is transitive), and a fork cannot slip between two
        concurrent checks.
        """
        while True:
            latest = self.latest
            if latest is None:
                self.latest = cp
                return
            if cp.size <= latest.size:
                # A proven prefix of the latest stays one of any later latest.
                await self.consistency(cp, latest)
                return
            await self.consistency(latest, cp)
            if self.latest is latest:
                self.latest = cp
                return

    def _claim(self, result: Any, signed: SignedEvent, cp: VerifiedCheckpoint
               ) -> tuple[int, bytes, bool] | Rejected:
        if type(result) is not dict:
            raise ReplyError("a result is not an object")
        if "problem" in result:
            problem = result["problem"]
            status = problem.get("status") if isinstance(problem, dict) else None
            return Rejected(ProblemError.from_json(problem, status if type(status) is int else 0))
        index = result.get("index")
        duplicate = result.get("duplicate")
        if type(index) is not int or index < 0 or type(duplicate) is not bool:
            raise ReplyError("a result lacks an index or a duplicate flag")
        if _unb64(result.get("event_id"), "event_id", HASH_SIZE) != signed.id:
            raise LogVerificationError(f"the node answered for another event at index {index}",
                                       checkpoint=cp.note, index=index, size=cp.size)
        if index >= cp.size:
            raise LogVerificationError(f"index {index} is not covered by the returned checkpoint "
                                       f"of size {cp.size}", checkpoint=cp.note, index=index,
                                       size=cp.size)
        return index, _unb64(result.get("leaf_hash"), "leaf_hash", HASH_SIZE), duplicate

    def _check_entry(self, raw: bytes, index: int, leaf: bytes, signed: SignedEvent,
                     cp: VerifiedCheckpoint) -> None:
        evidence: dict[str, Any] = dict(checkpoint=cp.note, index=index, size=cp.size,
                                        leaf_hash=leaf, entry=raw)
        if merkle.leaf_hash(raw) != leaf:
            raise LogVerificationError(f"entry {index} does not hash to the leaf hash returned "
                                       "for it", **evidence)
        try:
            entry = LogEntry.decode(raw)
        except LedgerError as exc:
            raise LogVerificationError(f"entry {index} does not decode: {exc}",
                                       **evidence) from None
        if entry.index != index or entry.signed.id != signed.id:
            raise LogVerificationError(f"entry {index} does not hold the submitted event",
                                       **evidence)

    async def inclusion_proof(self, index: int, leaf: bytes, checkpoint: VerifiedCheckpoint
                              ) -> tuple[bytes, ...]:
        """The audit path of leaf `index` in `checkpoint`, verified against its root."""
        return await self._inclusion(index, leaf, checkpoint)

    async def _inclusion(self, index: int, leaf: bytes, cp: VerifiedCheckpoint
                         ) -> tuple[bytes, ...]:
        reply = await self._get_json(f"/v1/proofs/inclusion?index={index}&size={cp.size}")
        if type(reply) is not dict or reply.get("index") != index \
                or reply.get("size") != cp.size:
            raise ReplyError("the inclusion proof is for another index or size than asked")
        proof = _hashes(reply.get("proof"))
        try:
            merkle.verify_inclusion(leaf, index, cp.size, proof, cp.root)
        except ProofError as exc:
            raise LogVerificationError(f"entry {index} is not included in checkpoint {cp.size}: "
                                       f"{exc}", checkpoint=cp.note, proof=proof, index=index,
                                       size=cp.size, leaf_hash=leaf) from None
        return proof

    async def _entries(self, indices: set[int], cp: VerifiedCheckpoint) -> dict[int, bytes]:
        """The raw entries at `indices`, read from the entry bundles `cp` implies."""

        async def bundle(tile: TileId) -> tuple[TileId, list[bytes]]:
            path = "/" + format_tile_path(tile)
            data = await self._request("GET", path, self._read_tile)
            try:
                entries = parse_entry_bundle(data)
            except LedgerError as exc:
                raise ReplyError(f"{path}: not an entry bundle: {exc}") from None
            if len(entries) != tile.width:
                raise ReplyError(f"{path} holds {len(entries)} entries, not {tile.width}")
            return tile, entries

        tiles = {entry_tile_for(i, cp.size) for i in indices}
        out: dict[int, bytes] = {}
        for tile, entries in await asyncio.gather(*(bundle(t) for t in tiles)):
            first = tile.index * TILE_WIDTH
            for i in indices:
                if first <= i < first + tile.width:
                    out[i] = entries[i - first]
        return out

    # ---------------------------------------------------------------- HTTP

    async def _get_json(self, path: str) -> Any:
        return await self._request("GET", path, self._read_json)

    async def _read_json(self, resp: aiohttp.ClientResponse) -> Any:
        data = await read_capped(resp, MAX_REPLY)
        try:
            return json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise ReplyError(f"{resp.method} {resp.url.path}: the reply is not JSON") from None

    async def _read_bytes(self, resp: aiohttp.ClientResponse) -> bytes:
        return await read_capped(resp, MAX_REPLY)

    async def _read_tile(self, resp: aiohttp.ClientResponse) -> bytes:
        return await read_capped(resp, MAX_TILE)

    async def _request(self, method: str, path: str,
                       read: Callable[[aiohttp.ClientResponse], Awaitable[T]],
                       **kwargs: Any) -> T:
        """One request, retried on 503 and on lost connections (every call is idempotent)."""
        url = self.base_url + path
        for attempt in range(self._max_retries + 1):
            last = attempt == self._max_retries
            try:
                async with self._slots, self._http().request(method, url, **kwargs) as resp:
                    if resp.status == 200:
                        return await read(resp)
                    if resp.status != 503 or last:
                        raise ProblemError.from_json(await _json_or_text(resp), resp.status)
                    delay = self._retry_after(resp.headers.get("Retry-After"), attempt)
            except (TimeoutError, aiohttp.ClientError) as exc:
                if last:
                    raise NodeUnavailableError(
                        f"{method} {url}: {exc or type(exc).__name__}") from None
                delay = min(0.1 * 2**attempt, self._max_retry_after)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # the last attempt returns or raises

    def _retry_after(self, header: str | None, attempt: int) -> float:
        if header is not None and header.isdigit():
            return min(float(header), self._max_retry_after)
        # An HTTP-date, or nothing: back off exponentially instead.
        return min(0.5 * 2**attempt, self._max_retry_after)


# ---------------------------------------------------------------- helpers


async def _json_or_text(resp: aiohttp.ClientResponse) -> Any:
    data = await read_capped(resp, 64 * 1024)
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return {"title": resp.reason or "", "detail": data[:200].decode("utf-8", "replace")}


def _unb64(value: Any, what: str, size: int | None) -> bytes:
    if type(value) is not str:
        raise ReplyError(f"{what} is not a base64 string")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ReplyError(f"{what} is not valid base64") from None
    if size is not None and len(raw) != size:
        raise ReplyError(f"{what} is {len(raw)} bytes, not {size}")
    return raw


def _hashes(value: Any) -> tuple[bytes, ...]:
    if type(value) is not list or len(value) > 64:
        raise ReplyError("a proof is not a list of at most 64 hashes")
    return tuple(_unb64(h, "proof hash", HASH_SIZE) for h in value)
