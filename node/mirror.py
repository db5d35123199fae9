"""A mirror that witnesses: a verified copy of one log, cosigned only when consistent.

The puller follows the log's /checkpoint. A new checkpoint is opened with the pinned log
key; the new entry bundles are fetched, every entry decoded strictly and replayed
through the consent state machine with its signature checked, the tree rebuilt and its
root compared with the checkpoint, and the log's own hash tiles compared with the
rebuilt ones. Only then are entries, tiles and the checkpoint (with the mirror's
cosignature) stored, in one transaction. Because the copy is the whole tree, every
earlier checkpoint's root is checked directly: no proof from the log is needed.

The mirror is also a tlog-witness for that log (add_checkpoint). It cosigns only the
largest checkpoint consistent with everything it has seen: its copy and whatever it
cosigned before. What it last cosigned lives in the database's meta table; on restart
it is the larger of that and the copy's checkpoint (the copy was checked against it).

A rollback, a split view or a rewritten entry is refused: the good copy keeps being
served, one line is logged, and the evidence (both signed notes, the differing entry
bytes, the request) is kept under DATA/evidence/ with a JSON summary.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.errors import ReplyError
from client.http_session import get_capped
from ledger.checkpoint import Checkpoint, open_checkpoint
from ledger.cosignature import (
    CosignatureSigner,
    add_cosignatures,
    cosigner_verifier_key,
)
from ledger.entry import LogEntry
from ledger.errors import LedgerError
from ledger.merkle import HASH_SIZE, leaf_hash
from ledger.note import MAX_NOTE_SIZE, Ed25519Verifier, new_verifier, raw_public_key
from ledger.state import LedgerState
from ledger.tiles import (
    MAX_BUNDLE_SIZE,
    TILE_WIDTH,
    TileId,
    entry_tile_for,
    format_tile_path,
    parse_entry_bundle,
    tiles_touched,
)
from ledger.tree import MerkleTree
from ledger.witness import Cosigned, Verdict, cosignature_lines, decide
from node.local_commit import touched_tiles
from node.recovery import recover
from node.storage import Storage, StorageError

log = logging.getLogger("consent_ledger.mirror")

_META_LOG_KEY = "mirror_log_vkey"
_META_WITNESSED = "mirror_witnessed_note"


class PullError(Exception):
    """The log could not be read this round (network, status, size); not misbehaviour."""


class Refusal(Exception):
    """Misbehaviour by the log (or whatever serves it): what, where, and the evidence.

    `kind` is one of rollback, split-view, rewritten-entry, bad-entry, bad-tile, bad-proof.
    """

    def __init__(self, kind: str, reason: str, files: Mapping[str, bytes],
                 index: int | None = None) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind, self.reason, self.files, self.index = kind, reason, dict(files), index

    def __str__(self) -> str:
        return f"{self.kind}: {self.reason}"


def cosigner_name(key: Ed25519PrivateKey) -> str:
    """A default name for a mirror's cosigner key, stable for the key."""
    return "consent-ledger-mirror/" + hashlib.sha256(raw_public_key(key.public_key())
                                                     ).hexdigest()[:16]


class EvidenceStore:
    """DATA/evidence/<n>-<kind>/: the files, and summary.json saying what they show."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._seen: set[str] = set()
        # A crash while writing leaves a hidden .tmp directory, which is not counted.
        self.count = sum(1 for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                         ) if root.exists() else 0

    def keep(self, refusal: Refusal, *, origin: str, log_url: str) -> Path | None:
        """Write the evidence once per distinct refusal; None if already kept."""
        digest = hashlib.sha256(refusal.kind.encode() + b"".join(
            hashlib.sha256(v).digest() for _, v in sorted(refusal.files.items()))).hexdigest()
        if digest in self._seen:
            return None
        self._seen.add(digest)
        self.root.mkdir(parents=True, exist_ok=True)
        self.count += 1
        final = self.root / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-" \
                            f"{self.count:04d}-{refusal.kind}"
        tmp = self.root / f".{final.name}.tmp"
        tmp.mkdir()
        summary = {"kind": refusal.kind, "reason": refusal.reason, "index": refusal.index,
                   "origin": origin, "log": log_url, "time": int(time.time()),
                   "files": sorted(refusal.files)}
        for name, data in [*refusal.files.items(),
                           ("summary.json", json.dumps(summary, indent=2).encode() + b"\n")]:
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, final)
        return final


class Mirror:
    """The copy, the witness state and the puller of one log. Use `open`, then `close`."""

    def __init__(self, *, log_url: str, log_vkey: str, storage: Storage, data_dir: Path,
                 cosigner: CosignatureSigner, cosigner_vkey: str) -> None:
        self.log_url = log_url.rstrip("/")
        self.log_vkey = log_vkey
        self.log_verifier: Ed25519Verifier = new_verifier(log_vkey)
        self.origin = self.log_verifier.name
        self.storage = storage
        self.cosigner = cosigner
        self.cosigner_vkey = cosigner_vkey
        self.evidence = EvidenceStore(data_dir / "evidence")
        self.state = LedgerState()
        self.tree = MerkleTree()
        self.size = 0
        self.note: bytes | None = None  # the stored checkpoint: the log's note + our cosig
        self.witnessed: Cosigned | None = None
        self.witnessed_note: bytes | None = None
        self.last_refusal: str | None = None
        self.last_error: str | None = None
        self.pulls = 0
        self._lock = asyncio.Lock()  # one decision and its write at a time

    # ------------------------------------------------------------ opening

    @classmethod
    async def open(cls, *, log_url: str, data_dir: Path, log_vkey: str | None,
                   cosigner_key: Ed25519PrivateKey, name: str | None = None) -> Mirror:
        data_dir.mkdir(parents=True, exist_ok=True)
        storage = await Storage.open(data_dir / "mirror.db")
        try:
            pinned = await storage.get_meta(_META_LOG_KEY)
            if log_vkey is None:
                if pinned is None:
                    raise StorageError("a new mirror needs the log's key: give --log-key or "
                                       "--policy")
                log_vkey = pinned.decode()
            elif pinned is not None and pinned.decode() != log_vkey:
                raise StorageError(f"{data_dir} mirrors the log with key {pinned.decode()}, "
                                   f"not {log_vkey}")
            new_verifier(log_vkey)  # a bad key fails here, before anything is written
            if pinned is None:
                await storage.set_meta(_META_LOG_KEY, log_vkey.encode())
            cosigner = CosignatureSigner.from_private_key(name or cosigner_name(cosigner_key),
                                                          cosigner_key)
            mirror = cls(log_url=log_url, log_vkey=log_vkey, storage=storage,
                         data_dir=data_dir, cosigner=cosigner,
                         cosigner_vkey=cosigner_verifier_key(cosigner.name,
                                                             cosigner_key.public_key()))
            await mirror._reload()
            await mirror._load_witnessed()
            return mirror
        except BaseException:
            await storage.close()
            raise

    async def close(self) -> None:
        await self.storage.close()

    def _open(self, note: bytes) -> Checkpoint:
        return open_checkpoint(note, self.log_verifier)[0]

    async def _reload(self) -> None:
        """State and tree from the stored copy, every entry checked (node/recovery.py)."""
        state, tree, note = await recover(self.storage, self._open)
        self.state, self.tree, self.note = state, tree, note
        self.size = tree.size

    async def _load_witnessed(self) -> None:
        if self.note is not None:
            held = self._open(self.note)
            self.witnessed, self.witnessed_note = Cosigned(held.size, held.root), self.note
        stored = await self.storage.get_meta(_META_WITNESSED)
        if stored is None:
            return
        cp = self._open(stored)
        if self.witnessed is None or cp.size > self.witnessed.size:
            self.witnessed, self.witnessed_note = Cosigned(cp.size, cp.root), stored

    # ------------------------------------------------------------ serving (node/read_api.py)

    @property
    def served_size(self) -> int:
        return self.size

    @property
    def served_checkpoint(self) -> bytes | None:
        return self.note

    def tile_hashes(self, level: int, index: int, width: int) -> bytes:
        return self.tree.tile_hashes(level, index, width)

    async def entry_data(self, start: int, end: int) -> list[bytes]:
        return await self.storage.entry_data(start, end)

    # ------------------------------------------------------------ the puller

    async def run(self, session: aiohttp.ClientSession, interval: float) -> None:
        """Pull forever; one line per refusal, one per change of network trouble."""
        while True:
            try:
                await self.pull_once(session)
                if self.last_error is not None:
                    log.warning("mirror: the log answers again", extra={"log": self.log_url})
                self.last_error = None
            except PullError as exc:
                if str(exc) != self.last_error:
                    log.warning("mirror: cannot read the log: %s", exc)
                self.last_error = str(exc)
            except (StorageError, OSError) as exc:
                # The copy on disk is what it was; try again next round.
                log.exception("mirror: cannot store the copy")
                self.last_error = f"storage: {exc}"
            await asyncio.sleep(interval)

    async def pull_once(self, session: aiohttp.ClientSession) -> None:
        note = await self._get(session, "checkpoint", MAX_NOTE_SIZE)
        try:
            cp = self._open(note)
        except LedgerError as exc:
            raise PullError(f"the log's checkpoint does not verify: {exc}") from None
        self.pulls += 1
        try:
            if cp.size <= self.size:
                async with self._lock:
                    await self._same_or_older(cp, note)
                return
            bundles = await self._fetch_bundles(session, cp.size)
            hash_tiles = await self._fetch_hash_tiles(session, cp.size)
            async with self._lock:
                await self._extend(cp, note, bundles, hash_tiles)
        except Refusal as refusal:
            self._refuse(refusal)

    async def _same_or_older(self, cp: Checkpoint, note: bytes) -> None:
        held = self.note or b""
        if cp.size < self.size:
            consistent = cp.root == self.tree.root(cp.size)
            raise Refusal("rollback", f"the log now serves size {cp.size}"
                          f"{'' if consistent else ' with a root the mirror never saw'}, "
                          f"the mirror holds size {self.size}",
                          {"held.note": held, "offered.note": note})
        if cp.root != self.tree.root():
            raise Refusal("split-view", f"the log signed size {cp.size} with root "
                          f"{cp.root.hex()}, the mirror holds root {self.tree.root().hex()}",
                          {"held.note": held, "offered.note": note})
        await self._commit(cp, note, [])  # the same tree: a fresh cosignature only

    async def _fetch_bundles(self, session: aiohttp.ClientSession, size: int
                             ) -> list[tuple[TileId, bytes]]:
        first = self.size - self.size % TILE_WIDTH
        tiles = [entry_tile_for(i, size) for i in range(first, size, TILE_WIDTH)]
        datas = await asyncio.gather(*(self._get(session, format_tile_path(t), MAX_BUNDLE_SIZE)
                                       for t in tiles))
        return list(zip(tiles, datas, strict=True))

    async def _fetch_hash_tiles(self, session: aiohttp.ClientSession, size: int
                                ) -> dict[TileId, bytes]:
        tiles = tiles_touched(self.size, size)
        datas = await asyncio.gather(*(self._get(session, format_tile_path(t),
                                                 TILE_WIDTH * HASH_SIZE) for t in tiles))
        return dict(zip(tiles, datas, strict=True))

    async def _extend(self, cp: Checkpoint, note: bytes, bundles: list[tuple[TileId, bytes]],
                      hash_tiles: dict[TileId, bytes]) -> None:
        old = self.size
        files = {"held.note": self.note or b"", "offered.note": note}
        served = self._split_bundles(bundles, files)
        held_prefix = await self.storage.entry_data(served[0][0], old) if served else []
        for (index, raw), held in zip(served, held_prefix, strict=False):
            if raw != held:
                self._differing_held_entry(cp, index, raw, held, served, files)
        rows: list[tuple[int, bytes, bytes, bytes]] = []
        try:
            for index, raw in served[old - served[0][0]:]:
                try:
                    entry = LogEntry.decode(raw)
                    if entry.index != index:
                        raise LedgerError(f"the entry says it is entry {entry.index}")
                    self.state.replay(entry, verify_signatures=True)
                except LedgerError as exc:
                    raise Refusal("bad-entry", f"entry {index} does not verify: {exc}",
                                  {**files, f"entry-{index}.served": raw}, index) from None
                leaf = leaf_hash(raw)
                self.tree.append(leaf)
                rows.append((index, entry.signed.id, leaf, raw))
            if self.tree.root() != cp.root:
                raise self._root_mismatch(cp, served, hash_tiles, files)
            for tile, data in sorted(hash_tiles.items(), key=lambda t: (t[0].level, t[0].index)):
                ours = self.tree.tile_hashes(int(tile.level), tile.index, tile.width)
                if data != ours:
                    raise Refusal("bad-tile", f"the log serves hash tile "
                                  f"{format_tile_path(tile)} unlike the tree its entries make",
                                  {**files, "tile.served": data, "tile.expected": ours})
            w = self.witnessed
            if w is not None and old < w.size <= cp.size and self.tree.root(w.size) != w.root:
                raise Refusal("split-view", f"the entries make root "
                              f"{self.tree.root(w.size).hex()} at size {w.size}, where the "
                              f"mirror cosigned root {w.root.hex()}",
                              {**files, "cosigned.note": self.witnessed_note or b""})
            await self._commit(cp, note, rows)
        except BaseException:
            # The replay ran ahead of what is stored: go back to the good copy.
            await self._reload()
            raise

    def _split_bundles(self, bundles: list[tuple[TileId, bytes]], files: Mapping[str, bytes]
                       ) -> list[tuple[int, bytes]]:
        served: list[tuple[int, bytes]] = []
        for tile, data in bundles:
            path = format_tile_path(tile)
            try:
                raws = parse_entry_bundle(data)
            except LedgerError as exc:
                raise Refusal("bad-entry", f"entry bundle {path} is malformed: {exc}",
                              {**files, "bundle.served": data}, tile.index * TILE_WIDTH
                              ) from None
            if len(raws) != tile.width:
                raise Refusal("bad-entry", f"entry bundle {path} holds {len(raws)} entries, "
                              f"not {tile.width}", {**files, "bundle.served": data},
                              tile.index * TILE_WIDTH)
            served += [(tile.index * TILE_WIDTH + i, raw) for i, raw in enumerate(raws)]
        return served

    def _differing_held_entry(self, cp: Checkpoint, index: int, raw: bytes, held: bytes,
                              served: list[tuple[int, bytes]], files: Mapping[str, bytes]
                              ) -> None:
        """A verified entry served with other bytes: a fork if the log signed that
        history (its entries make the offered root), else a rewritten entry."""
        other = MerkleTree.from_leaf_hashes(
            [self.tree.hash_at(0, i) for i in range(served[0][0])]
            + [leaf_hash(r) for _, r in served])
        evidence = {**files, f"entry-{index}.held": held, f"entry-{index}.served": raw}
        if other.size == cp.size and other.root() == cp.root:
            raise Refusal("split-view", f"the log signed size {cp.size} over a history whose "
                          f"entry {index} differs from the one the mirror verified",
                          evidence, index)
        raise Refusal("rewritten-entry", f"entry {index} is served with other bytes than "
                      "the ones the mirror verified", evidence, index)

    def _root_mismatch(self, cp: Checkpoint, served: list[tuple[int, bytes]],
                       hash_tiles: dict[TileId, bytes], files: Mapping[str, bytes]) -> Refusal:
        """Name the first entry whose hash is not the leaf the log's level-0 tiles hold."""
        for tile, data in sorted(hash_tiles.items(), key=lambda t: (t[0].level, t[0].index)):
            if tile.level != 0:
                continue
            for i in range(len(data) // HASH_SIZE):
                index = tile.index * TILE_WIDTH + i
                if index < self.size or index - served[0][0] >= len(served):
                    continue
                raw = served[index - served[0][0]][1]
                if leaf_hash(raw) != data[i * HASH_SIZE:(i + 1) * HASH_SIZE]:
                    return Refusal("rewritten-entry", f"entry {index} does not hash to the "
                                   "leaf in the log's tiles",
                                   {**files, f"entry-{index}.served": raw}, index)
        return Refusal("rewritten-entry", f"the entries make root {self.tree.root().hex()}, "
                       f"the checkpoint for size {cp.size} says {cp.root.hex()}", dict(files))

    async def _commit(self, cp: Checkpoint, note: bytes,
                      rows: list[tuple[int, bytes, bytes, bytes]]) -> None:
        """Store the copy and, if it is the largest consistent tree seen, cosign it."""
        old = self.size
        w = self.witnessed
        cosign = w is None or cp.size >= w.size
        stored = add_cosignatures(note, cosignature_lines(note, self.cosigner, int(time.time()))
                                  ) if cosign else note
        await self.storage.commit_batch(rows, touched_tiles(self.tree, old, cp.size),
                                        cp.size, stored)
        self.note, self.size = stored, cp.size
        if cosign:
            self.witnessed, self.witnessed_note = Cosigned(cp.size, cp.root), note
        elif old != cp.size:
            log.warning("mirror: stored size %d but did not cosign it: size %d was cosigned "
                        "before", cp.size, w.size if w else 0)

    def _refuse(self, refusal: Refusal) -> None:
        where = self.evidence.keep(refusal, origin=self.origin, log_url=self.log_url)
        self.last_refusal = str(refusal)
        if where is not None:
            log.error("mirror refused the log's checkpoint: %s; evidence in %s", refusal, where)

    async def _get(self, session: aiohttp.ClientSession, path: str, limit: int) -> bytes:
        try:
            return await get_capped(session, f"{self.log_url}/{path}", limit)
        except ReplyError as exc:
            raise PullError(str(exc)) from None

    # ------------------------------------------------------------ the witness

    async def add_checkpoint(self, body: bytes) -> tuple[Verdict, bytes]:
        """tlog-witness add-checkpoint: the verdict and, on 200, the cosignature lines,
        sent only once the new state is on disk (check and persist under one lock)."""
        async with self._lock:
            cosigned = {self.origin: self.witnessed} if self.witnessed else {}
            verdict = decide(body, logs={self.origin: [self.log_verifier]}, cosigned=cosigned)
            request = verdict.request
            if verdict.accepted and request is not None:
                cp = request.checkpoint
                if cp.size <= self.size and cp.root != self.tree.root(cp.size):
                    verdict = Verdict(409, f"size {cp.size} has root "
                                      f"{self.tree.root(cp.size).hex()} in the mirrored copy, "
                                      f"this checkpoint says {cp.root.hex()}", request,
                                      verdict.note)
            if verdict.evidence and request is not None:
                self._refuse(Refusal("split-view" if verdict.status == 409 else "bad-proof",
                                     f"add-checkpoint refused ({verdict.status}): "
                                     f"{verdict.reason}",
                                     {"request.body": body,
                                      "cosigned.note": self.witnessed_note or b""}))
            if not verdict.accepted or request is None:
                return verdict, b""
            cp = request.checkpoint
            if self.witnessed is None or cp.size > self.witnessed.size:
                await self.storage.set_meta(_META_WITNESSED, request.note)
                self.witnessed, self.witnessed_note = Cosigned(cp.size, cp.root), request.note
            return verdict, cosignature_lines(request.note, self.cosigner, int(time.time()))
