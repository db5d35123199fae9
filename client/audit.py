"""The regulator's audit: everything a log ever committed, verified from genesis.

Data comes only through the tlog-tiles read endpoints (/checkpoint, /tile/L/N,
/tile/entries/N), so any node or mirror that serves them can be audited, and nothing
they say is believed unchecked:

- the checkpoint must carry the log's signature (and the policy's witness quorum);
- every entry is decoded strictly and replayed through LedgerState: index, hash-chain
  link, admission rules with the keys in force at that entry, status-root entries
  recomputed, and every signature checked (on every core, see `_SignaturePool`);
- the tree rebuilt from the entries must reproduce every hash tile served and the
  checkpoint's root; a level-0 mismatch names the entry;
- each mirror's checkpoint must be signed by the same log key and lie on the audited
  tree (its root recomputed from the audited entries, or from the mirror's own entries
  beyond them); anything else is a split view, reported with both signed notes.

Resume (`AuditStore`): tiles are kept as fetched, one file each, written atomically, so
an interrupted audit loses nothing and a rerun fetches only what it lacks. A rerun
re-verifies everything from the local tiles (no state snapshot is trusted: replay is
the proof, and at several thousand entries a second it is cheap). The last fully
audited checkpoint is kept too; a log whose new checkpoint does not extend it (a
rollback, or history rewritten under cached or new tiles) is reported as a fork.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import signal
import time
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import aiohttp
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from client.audit_report import FactCollector, Facts
from client.errors import ClientError, ReplyError
from client.http_session import read_capped
from ledger import merkle
from ledger.checkpoint import Checkpoint, open_checkpoint
from ledger.entry import LogEntry
from ledger.errors import LedgerError, RejectedError, SignatureError
from ledger.events import ControllerRegister, ControllerRotate, Genesis
from ledger.merkle import HASH_SIZE
from ledger.note import Verifier
from ledger.signed import SignedEvent, key_id, verify_signature
from ledger.state import LedgerState
from ledger.tiles import (
    TILE_HEIGHT,
    TILE_WIDTH,
    TileId,
    entry_tile_for,
    format_tile_path,
    parse_entry_bundle,
    tiles_for_size,
)
from ledger.tree import MerkleTree

MAX_TILE = TILE_WIDTH * (2 + 65_535)
MAX_CHECKPOINT = 64 * 1024
_LOOKAHEAD = 32  # entry bundles fetched ahead of verification
_CONNECTIONS = 16
PROCESSES_FROM = 4_096  # entries: below this, starting processes costs more than it saves

CheckOpener = Callable[[bytes], Checkpoint]
"""Verifies a signed checkpoint note (log key, maybe a witness quorum) or raises."""


class AuditFailure(Exception):
    """The log does not verify. `index` names the entry when one is to blame; `code`
    is stable for scripts; `evidence` holds what a third party needs to check it."""

    def __init__(self, code: str, reason: str, *, index: int | None = None,
                 evidence: dict[str, str] | None = None, tile: str | None = None) -> None:
        self.code = code
        self.tile = tile  # the tile whose content is to blame, if one is
        self.reason = reason
        self.index = index
        self.evidence = evidence or {}
        super().__init__(f"entry {index}: {reason}" if index is not None else reason)


class FetchError(Exception):
    """A source could not be read (down, refused, or an oversized answer)."""


# ---------------------------------------------------------------- local state


def default_state_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "consent-ledger" / "audit"


def _origin_dir(origin: str) -> str:
    # Readable, and unique even if two origins quote to the same prefix.
    digest = hashlib.sha256(origin.encode()).hexdigest()[:12]
    return urllib.parse.quote(origin, safe="")[:100] + "-" + digest


class AuditStore:
    """One log's tiles as fetched, and the last checkpoint audited in full.

    A full tile never changes (tlog-tiles), so a stored one is not fetched again; a
    partial tile's path holds its width, so a grown tile is a new file. Every write
    goes to a temporary file renamed into place: a Ctrl-C leaves whole files only.
    """

    def __init__(self, root: Path, origin: str) -> None:
        self.dir = root / _origin_dir(origin)
        self.origin = origin

    def _path(self, tile_path: str) -> Path:
        return self.dir / tile_path

    def get(self, tile_path: str) -> bytes | None:
        try:
            return self._path(tile_path).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, tile_path: str, data: bytes) -> None:
        self._write(self._path(tile_path), data)

    def _write(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def discard(self, tile_path: str) -> None:
        """Forget a tile that failed verification, so that a rerun fetches it again."""
        self._path(tile_path).unlink(missing_ok=True)

    def audited_note(self) -> bytes | None:
        """The signed checkpoint of the last audit that verified in full."""
        try:
            state = json.loads((self.dir / "audited.json").read_text())
            return str(state["checkpoint"]).encode()
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def save_audited(self, note: bytes) -> None:
        self._write(self.dir / "audited.json", json.dumps(
            {"origin": self.origin, "checkpoint": note.decode()}).encode())


# ---------------------------------------------------------------- fetching


class TileSource:
    """Reads one base URL's tlog-tiles endpoints, through the store when given.

    What it returns is suspect until checked against a signed tree; it only bounds
    sizes and counts what it did, so tests and the report can see the access pattern.
    """

    def __init__(self, url: str, session: aiohttp.ClientSession,
                 slots: asyncio.Semaphore, store: AuditStore | None) -> None:
        self.url = url.rstrip("/")
        self._session = session
        self._slots = slots
        self.store = store
        self.requests = 0
        self.bytes_fetched = 0
        self.reused = 0

    async def checkpoint(self) -> bytes:
        return await self._get("checkpoint", MAX_CHECKPOINT)

    async def tile(self, tile: TileId, *, fresh: bool = False) -> bytes:
        path = format_tile_path(tile)
        if self.store is not None and not fresh:
            data = self.store.get(path)
            if data is not None:
                self.reused += 1
                return data
        data = await self._get(path, MAX_TILE)
        if self.store is not None:
            self.store.put(path, data)
        return data

    async def _get(self, path: str, limit: int) -> bytes:
        url = f"{self.url}/{path}"
        for attempt in range(4):
            try:
                async with self._slots, self._session.get(url) as resp:
                    self.requests += 1
                    if resp.status == 200:
                        try:
                            data = await read_capped(resp, limit)
                        except ReplyError as exc:
                            raise FetchError(f"GET {url}: {exc}") from None
                        self.bytes_fetched += len(data)
                        return data
                    if resp.status != 503 or attempt == 3:
                        raise FetchError(f"GET {url} answered {resp.status}")
            except (TimeoutError, aiohttp.ClientError) as exc:
                if attempt == 3:
                    raise FetchError(f"GET {url}: {exc or type(exc).__name__}") from None
            await asyncio.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")


async def _in_order(source: TileSource, tiles: Sequence[TileId]
                    ) -> AsyncIterator[tuple[TileId, bytes]]:
    """The tiles' bytes in order, with up to _LOOKAHEAD fetches running ahead."""
    pending: deque[tuple[TileId, asyncio.Task[bytes]]] = deque()
    it = iter(tiles)
    try:
        while True:
            while len(pending) < _LOOKAHEAD:
                tile = next(it, None)
                if tile is None:
                    break
                pending.append((tile, asyncio.ensure_future(source.tile(tile))))
            if not pending:
                return
            tile, task = pending.popleft()
            yield tile, await task
    finally:
        for _, task in pending:
            task.cancel()
        await asyncio.gather(*(t for _, t in pending), return_exceptions=True)


# ---------------------------------------------------------------- signatures

_Check = tuple[bytes, bytes, bytes]  # (public key, signed message, signature)


def _verify_chunk(checks: Sequence[_Check]) -> list[bool]:
    out = []
    for public, message, sig in checks:
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(sig, message)
            out.append(True)
        except InvalidSignature:
            out.append(False)
    return out


def _ignore_ctrl_c() -> None:
    # Ctrl-C reaches the whole process group; the audit itself handles it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _SignaturePool:
    """Checks signatures ahead of the replay, one chunk per core.

    With `processes`, in worker processes: the replay keeps the main thread busy in
    Python, and a verifying thread must win the GIL back after every signature, so
    threads end up taking turns with the replay (measured here: threads no faster than
    one thread, processes up to 1.7x). Processes cost ~0.5 s to start and need the
    caller's `__main__` to be import-safe, so small logs and library callers that do
    not ask for them get threads.

    The key a signature is checked against is looked up by its key id among every key
    the log has registered so far; the replay then confirms that this is the key the
    state allows at that entry (registered, not retired, the right controller) and
    checks synchronously in the rare case it is not. Envelopes of one batch share one
    signature, which is checked once.
    """

    def __init__(self, workers: int, *, processes: bool) -> None:
        self.workers = workers
        self._pool: Executor = ProcessPoolExecutor(
            workers, mp_context=get_context("spawn"), initializer=_ignore_ctrl_c
        ) if processes else ThreadPoolExecutor(workers, thread_name_prefix="audit-verify")
        self.keys: dict[bytes, bytes] = {}  # key id -> public key, as the log registered
        self._recent: dict[_Check, _Slot] = {}  # insertion-ordered: oldest first
        self.checked = 0

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def learn_keys(self, signed: SignedEvent) -> None:
        body = signed.body
        if isinstance(body, Genesis):
            self.keys[key_id(body.operator_key)] = body.operator_key
        elif isinstance(body, ControllerRegister | ControllerRotate):
            self.keys.setdefault(key_id(body.key), body.key)

    def submit(self, envelopes: Sequence[SignedEvent]) -> list[_Check | None]:
        """Start checking; returns each envelope's check (None: none possible ahead)."""
        if len(self._recent) > 16_384:
            # The replay lags a few bundles behind; older checks were consumed already.
            self._recent = dict(list(self._recent.items())[-4_096:])
        checks: list[_Check | None] = []
        new: dict[_Check, None] = {}
        for signed in envelopes:
            self.learn_keys(signed)
            public = self.keys.get(signed.signer) if signed.signer is not None else None
            if public is None or signed.sig is None:
                checks.append(None)
                continue
            try:
                check = (public, signed.signed_message(), signed.sig)
            except LedgerError:
                checks.append(None)  # the replay's own check will say what is wrong
                continue
            checks.append(check)
            if check not in self._recent:
                new[check] = None
        todo = list(new)
        self.checked += len(todo)
        step = max(32, -(-len(todo) // self.workers))
        for i in range(0, len(todo), step):
            chunk = todo[i:i + step]
            job = self._pool.submit(_verify_chunk, chunk)
            for j, check in enumerate(chunk):
                self._recent[check] = _Slot(job, j)
        return checks

    def result(self, check: _Check) -> bool | None:
        """The check's outcome (waiting for it), or None if it was never submitted."""
        slot = self._recent.get(check)
        return None if slot is None else slot.job.result()[slot.at]


@dataclasses.dataclass(frozen=True, slots=True)
class _Slot:
    job: Future[list[bool]]
    at: int


# ---------------------------------------------------------------- the audit


@dataclasses.dataclass(frozen=True)
class SourceReport:
    url: str
    role: str  # "log" or "mirror"
    size: int | None
    root: str | None
    note: str | None
    verdict: str  # "consistent", "audited", or why not
    requests: int


@dataclasses.dataclass
class AuditResult:
    origin: str
    checkpoint_note: str | None
    size: int
    root: str | None
    failure: AuditFailure | None
    entries_verified: int
    signatures_checked: int
    hash_tiles_checked: int
    requests: int
    bytes_fetched: int
    tiles_reused: int
    seconds: float
    verify_seconds: float
    previous_audit_size: int | None
    sources: list[SourceReport]
    facts: Facts

    @property
    def ok(self) -> bool:
        return self.failure is None


ProgressFn = Callable[[int, int, str], None]
"""(entries verified, entries to verify, phase)."""


class Auditor:
    def __init__(self, log_url: str, *, open_log_checkpoint: CheckOpener,
                 log_verifier: Verifier, mirrors: Sequence[str] = (),
                 store: AuditStore | None = None, workers: int | None = None,
                 processes: bool = False, progress: ProgressFn | None = None) -> None:
        self.log_url = log_url.rstrip("/")
        self.mirrors = [m.rstrip("/") for m in mirrors]
        self._open_log = open_log_checkpoint
        self._verifier = log_verifier
        self.store = store
        self.workers = workers or os.cpu_count() or 1
        self._processes = processes
        self._progress = progress or (lambda done, total, phase: None)
        self.state = LedgerState()
        self.tree = MerkleTree()
        self.facts = FactCollector()
        self._sources: list[SourceReport] = []
        self._hash_tiles_checked = 0
        self._sigs: _SignaturePool | None = None
        self._size = 0
        self._verified = 0  # entries that passed every check (the state may hold one more)

    @property
    def origin(self) -> str:
        return self._verifier.name

    async def run(self) -> AuditResult:
        start = time.monotonic()
        verify_seconds = 0.0
        slots = asyncio.Semaphore(_CONNECTIONS)
        timeout = aiohttp.ClientTimeout(total=120)
        failure: AuditFailure | None = None
        cp: Checkpoint | None = None
        note: bytes | None = None
        previous = self.store.audited_note() if self.store is not None else None
        previous_size: int | None = None
        async with aiohttp.ClientSession(timeout=timeout) as session:
            log = TileSource(self.log_url, session, slots, self.store)
            sources = [log]
            try:
                note = await log.checkpoint()
                cp = self._open(note, self._open_log, f"the log's checkpoint ({self.log_url})")
                self._sources.append(SourceReport(
                    self.log_url, "log", cp.size, cp.root.hex(), note.decode(), "failed", 0))
                previous_cp = self._previous(previous, note, cp)
                previous_size = previous_cp.size if previous_cp is not None else None
                hash_tiles = asyncio.ensure_future(self._fetch_hash_tiles(log, cp.size))
                try:
                    t0 = time.monotonic()
                    await self._replay_all(log, cp.size)
                    verify_seconds = time.monotonic() - t0
                    tiles = await hash_tiles
                finally:
                    if not hash_tiles.done():
                        hash_tiles.cancel()
                        await asyncio.gather(hash_tiles, return_exceptions=True)
                self._check_tree(cp, note, tiles, previous_cp, previous)
                self._sources[0] = dataclasses.replace(self._sources[0], verdict="audited")
                for url in self.mirrors:
                    mirror = TileSource(url, session, slots, None)
                    sources.append(mirror)
                    await self._check_mirror(mirror, cp, note)
                if self.store is not None:
                    self.store.save_audited(note)
            except AuditFailure as exc:
                failure = exc
                if self.store is not None and exc.tile is not None:
                    self.store.discard(exc.tile)
            except FetchError as exc:
                failure = AuditFailure("unreachable", str(exc))
            finally:
                if self._sigs is not None:
                    self._sigs.close()
        requests = sum(s.requests for s in sources)
        for i, report in enumerate(self._sources):
            src = next((s for s in sources if s.url == report.url), None)
            if src is not None:
                self._sources[i] = dataclasses.replace(report, requests=src.requests)
        return AuditResult(
            origin=self.origin, checkpoint_note=note.decode() if note and cp else None,
            size=cp.size if cp else 0, root=cp.root.hex() if cp else None,
            failure=failure, entries_verified=self._verified,
            signatures_checked=self._sigs.checked if self._sigs else 0,
            hash_tiles_checked=self._hash_tiles_checked, requests=requests,
            bytes_fetched=sum(s.bytes_fetched for s in sources),
            tiles_reused=sum(s.reused for s in sources),
            seconds=time.monotonic() - start, verify_seconds=verify_seconds,
            previous_audit_size=previous_size, sources=self._sources,
            facts=self.facts.facts(self.state))

    # ------------------------------------------------------------ checkpoints

    def _open(self, note: bytes, opener: CheckOpener, what: str) -> Checkpoint:
        try:
            return opener(note)
        except (LedgerError, ClientError) as exc:  # a policy's errors are ClientErrors
            raise AuditFailure("bad-checkpoint", f"{what} does not verify: {exc}",
                               evidence={"checkpoint": note.decode("utf-8", "replace")}
                               ) from None

    def _open_mirror(self, note: bytes) -> Checkpoint:
        cp, _ = open_checkpoint(note, self._verifier)
        return cp

    def _previous(self, previous: bytes | None, note: bytes, cp: Checkpoint
                  ) -> Checkpoint | None:
        """The last audited checkpoint; the log must not have shrunk since."""
        if previous is None:
            return None
        try:
            old = self._open_mirror(previous)
        except LedgerError:
            return None  # a stored note that no longer verifies is no evidence of anything
        if cp.size < old.size or (cp.size == old.size and cp.root != old.root):
            raise AuditFailure(
                "fork", f"the log's checkpoint (size {cp.size}) does not extend the one "
                f"audited before (size {old.size}): the log was rolled back or forked",
                evidence={"audited_checkpoint": previous.decode(),
                          "checkpoint": note.decode()})
        return old

    # ------------------------------------------------------------ entries

    async def _replay_all(self, log: TileSource, size: int) -> None:
        self._sigs = sigs = _SignaturePool(
            self.workers, processes=self._processes and size >= PROCESSES_FROM)
        self._size = size
        bundles = [entry_tile_for(i, size) for i in range(0, size, TILE_WIDTH)]
        waiting: deque[tuple[list[LogEntry], list[_Check | None]]] = deque()
        self._progress(0, size, "verifying")
        last_report = 0.0
        async for tile, data in _in_order(log, bundles):
            entries = self._decode_bundle(tile, data)
            waiting.append((entries, sigs.submit([e.signed for e in entries])))
            # Replay lags two bundles behind, so the pool always has work queued.
            while len(waiting) > 2:
                self._replay(*waiting.popleft())
            now = time.monotonic()
            if now - last_report > 0.2:
                last_report = now
                self._progress(self._verified, size, "verifying")
            # Let the fetches the lookahead started make progress.
            await asyncio.sleep(0)
        while waiting:
            self._replay(*waiting.popleft())
        self._progress(self._verified, size, "verified")

    def _decode_bundle(self, tile: TileId, data: bytes) -> list[LogEntry]:
        first = tile.index * TILE_WIDTH
        path = format_tile_path(tile)
        try:
            raws = parse_entry_bundle(data)
        except LedgerError as exc:
            raise AuditFailure("bad-bundle", f"entry bundle {path} is malformed: {exc}",
                               index=first, tile=path) from None
        if len(raws) != tile.width:
            raise AuditFailure("bad-bundle", f"entry bundle {path} holds {len(raws)} "
                               f"entries, not {tile.width}", index=first, tile=path)
        entries = []
        for i, raw in enumerate(raws):
            try:
                entry = LogEntry.decode(raw)
            except LedgerError as exc:
                raise AuditFailure("bad-entry", f"does not decode: {exc}",
                                   index=first + i, tile=path) from None
            # decode() proved raw canonical: raw is the entry's encoding.
            entry.__dict__["leaf_hash"] = merkle.leaf_hash(raw)
            entries.append(entry)
        return entries

    def _replay(self, entries: list[LogEntry], checks: list[_Check | None]) -> None:
        state, sigs, tree = self.state, self._sigs, self.tree
        assert sigs is not None
        for entry, check in zip(entries, checks, strict=True):
            signed = entry.signed
            index = state.size
            try:
                key = state.signer_key(signed) if signed.sig is not None else None
            except RejectedError:
                key = None  # replay names the reason (unknown key, not the operator...)
            try:
                state.replay(entry, verify_signatures=False)
                if key is not None:
                    verdict = sigs.result(check) if check is not None and check[0] == key \
                        else None
                    if verdict is None:
                        verify_signature(signed, key)
                    elif not verdict:
                        raise SignatureError(f"the signature by key {key_id(key).hex()} "
                                             "does not verify")
            except LedgerError as exc:
                code = exc.code if isinstance(exc, RejectedError) else "bad-signature" \
                    if isinstance(exc, SignatureError) else "bad-entry"
                raise AuditFailure(code, str(exc), index=index, tile=format_tile_path(
                    entry_tile_for(index, self._size))) from None
            tree.append(entry.leaf_hash)
            self.facts.observe(entry, state)
            self._verified = state.size

    # ------------------------------------------------------------ the tree

    async def _fetch_hash_tiles(self, log: TileSource, size: int) -> dict[TileId, bytes]:
        tiles = tiles_for_size(size)
        datas = await asyncio.gather(*(log.tile(t) for t in tiles))
        return dict(zip(tiles, datas, strict=True))

    def _check_tree(self, cp: Checkpoint, note: bytes, tiles: dict[TileId, bytes],
                    previous: Checkpoint | None, previous_note: bytes | None) -> None:
        tree = self.tree
        if previous is not None and tree.root(previous.size) != previous.root:
            raise AuditFailure(
                "fork", f"the entries now served make root {tree.root(previous.size).hex()} "
                f"at size {previous.size}, the checkpoint audited before says "
                f"{previous.root.hex()}: the log rewrote history it had published",
                evidence={"audited_checkpoint": (previous_note or b"").decode(),
                          "checkpoint": note.decode()})
        for tile in sorted(tiles, key=lambda t: (int(t.level), t.index)):
            data = tiles[tile]
            if len(data) != tile.width * HASH_SIZE:
                path = format_tile_path(tile)
                raise AuditFailure("bad-hash-tile", f"hash tile {path} is {len(data)} bytes, "
                                   f"not {tile.width * HASH_SIZE}", tile=path)
            ours = tree.tile_hashes(int(tile.level), tile.index, tile.width)
            if data != ours:
                self._hash_tile_mismatch(tile, data, ours, previous, previous_note, note)
            self._hash_tiles_checked += 1
        if tree.root() != cp.root:
            raise AuditFailure(
                "root-mismatch", f"the entries make root {tree.root().hex()}, the checkpoint "
                f"for size {cp.size} says {cp.root.hex()}",
                evidence={"checkpoint": note.decode()})

    def _hash_tile_mismatch(self, tile: TileId, data: bytes, ours: bytes,
                            previous: Checkpoint | None, previous_note: bytes | None,
                            note: bytes) -> None:
        at = next(i for i in range(tile.width)
                  if data[32 * i:32 * i + 32] != ours[32 * i:32 * i + 32])
        span = 1 << (TILE_HEIGHT * int(tile.level))
        first = (tile.index * TILE_WIDTH + at) * span
        path = format_tile_path(tile)
        served, made = data[32 * at:32 * at + 32].hex(), ours[32 * at:32 * at + 32].hex()
        if previous is not None and first + span <= previous.size:
            raise AuditFailure(
                "fork", f"hash tile {path} now says {served} for entries {first}.."
                f"{first + span - 1}, which were audited as {made}: the log rewrote history "
                "it had published", index=first if span == 1 else None, tile=path,
                evidence={"audited_checkpoint": (previous_note or b"").decode(),
                          "checkpoint": note.decode()})
        if span == 1:
            raise AuditFailure("bad-hash-tile", f"hash tile {path} gives its leaf hash as "
                               f"{served}, the entry served hashes to {made}", index=first,
                               tile=path)
        raise AuditFailure("bad-hash-tile", f"hash tile {path}, hash {at} (entries {first}.."
                           f"{first + span - 1}) is {served}, the entries make {made}",
                           tile=path)

    # ------------------------------------------------------------ mirrors

    async def _check_mirror(self, mirror: TileSource, cp: Checkpoint, note: bytes) -> None:
        what = f"the checkpoint of mirror {mirror.url}"
        mnote = await mirror.checkpoint()
        mcp = self._open(mnote, self._open_mirror, what)

        def split(reason: str, proof: Sequence[bytes] = ()) -> AuditFailure:
            evidence = {"checkpoint": note.decode(), "mirror_checkpoint": mnote.decode()}
            if proof:
                evidence["consistency_proof"] = "\n".join(h.hex() for h in proof)
            self._sources.append(SourceReport(mirror.url, "mirror", mcp.size,
                                              mcp.root.hex(), mnote.decode(), reason,
                                              mirror.requests))
            return AuditFailure("split-view", f"split view: mirror {mirror.url} {reason}",
                                evidence=evidence)

        tree = self.tree
        if mcp.size <= cp.size:
            proof = tree.consistency_proof(mcp.size, cp.size) if mcp.size else []
            if mcp.size and tree.root(mcp.size) != mcp.root:
                raise split(f"signs root {mcp.root.hex()} at size {mcp.size}; the audited "
                            f"entries make {tree.root(mcp.size).hex()} (the log's checkpoint "
                            f"at size {cp.size} is not consistent with it)", proof)
        else:
            # The mirror is ahead: its own entries beyond the audit must extend the tree.
            leaves = await self._mirror_leaves(mirror, cp.size, mcp.size)
            ahead = MerkleTree.from_leaf_hashes(
                tree.hash_at(0, i) for i in range(cp.size))
            ahead.extend(leaves)
            if ahead.root() != mcp.root:
                raise split(f"signs root {mcp.root.hex()} at size {mcp.size}, which does not "
                            f"extend the audited tree of size {cp.size} (its entries "
                            f"{cp.size}..{mcp.size - 1} with the audited ones make "
                            f"{ahead.root().hex()})")
        self._sources.append(SourceReport(mirror.url, "mirror", mcp.size, mcp.root.hex(),
                                          mnote.decode(), "consistent", mirror.requests))

    async def _mirror_leaves(self, mirror: TileSource, begin: int, end: int) -> list[bytes]:
        tiles = [entry_tile_for(i, end)
                 for i in range(begin - begin % TILE_WIDTH, end, TILE_WIDTH)]
        leaves: list[bytes] = []
        for tile, data in zip(tiles, await asyncio.gather(*(mirror.tile(t) for t in tiles)),
                              strict=True):
            try:
                raws = parse_entry_bundle(data)
            except LedgerError as exc:
                raise AuditFailure("bad-bundle", f"mirror {mirror.url}: entry bundle "
                                   f"{format_tile_path(tile)} is malformed: {exc}") from None
            first = tile.index * TILE_WIDTH
            leaves += [merkle.leaf_hash(r) for i, r in enumerate(raws) if first + i >= begin]
        return leaves
