"""Catch-up from tiles: the ledger entries a Raft snapshot stands for, fetched and checked.

Members compact their Raft logs (the rows, not the ledger's entries, which stay), and a
leader sends a member that needs forgotten rows its snapshot instead (ledger/raft). The
snapshot's data is the cosigned checkpoint for the ledger's size at its index. The
member reads the entries it lacks through the tlog-tiles API (entry bundles: immutable
files that any member, cache or object store can serve), checks each one as it checks a
leader's batch, and the rebuilt tree's root against that checkpoint, which must carry
the log's signature and a majority of the voters' cosignatures. A leader cannot make a
member take a history that a majority did not verify and cosign.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

import aiohttp

from client.errors import ReplyError
from client.http_session import get_capped
from ledger.checkpoint import Checkpoint, open_checkpoint, parse_checkpoint
from ledger.errors import LedgerError
from ledger.note import Verifier, split_note
from ledger.tiles import (
    MAX_BUNDLE_SIZE,
    TILE_WIDTH,
    entry_tile_for,
    format_tile_path,
    parse_entry_bundle,
)
from node.cluster_config import ClusterConfig

# Bundles fetched at once (each up to 256 entries): enough to keep a link busy, few
# enough that a member catching up holds a few megabytes of them at a time.
BUNDLES_AT_ONCE = 16


class CatchUpError(Exception):
    """A source could not serve, or served what does not check out; the message says which."""


def open_snapshot_checkpoint(data: bytes, *, log_verifier: Verifier,
                             cluster: ClusterConfig, voters: Iterable[str]) -> Checkpoint:
    """The checkpoint a snapshot's data holds, if the log signed it and a majority of
    `voters` (the membership in force at the snapshot) cosigned it."""
    voters = frozenset(voters)
    names = {m.cosigner.name: m.id for m in cluster.members}
    try:
        checkpoint, note = open_checkpoint(data, log_verifier,
                                           cosigners=[m.cosigner for m in cluster.members])
    except LedgerError as exc:
        raise CatchUpError(f"the snapshot's checkpoint does not open: {exc}") from None
    cosigned = {names[s.name] for s in note.signatures if names.get(s.name) in voters}
    quorum = len(voters) // 2 + 1
    if len(cosigned) < quorum:
        raise CatchUpError(f"the snapshot's checkpoint (size {checkpoint.size}) carries "
                           f"{len(cosigned)} voters' cosignatures, not a majority of "
                           f"{len(voters)}")
    return checkpoint


def checkpoint_size(note: bytes) -> int:
    """The size a stored snapshot's checkpoint names (it was checked when taken)."""
    return parse_checkpoint(split_note(note)[0]).size


async def entry_chunks(session: aiohttp.ClientSession, url: str, start: int, size: int
                       ) -> AsyncIterator[list[tuple[int, bytes]]]:
    """Entries start..size-1 as `url` serves them for a tree of `size`, in order, a few
    thousand at a time; CatchUpError if it cannot."""
    first = start // TILE_WIDTH
    last = (size - 1) // TILE_WIDTH if size > start else first - 1
    for window in range(first, last + 1, BUNDLES_AT_ONCE):
        tiles = [entry_tile_for(n * TILE_WIDTH, size)
                 for n in range(window, min(window + BUNDLES_AT_ONCE, last + 1))]
        bundles = await asyncio.gather(*(_get(session, f"{url}/{format_tile_path(t)}")
                                         for t in tiles))
        chunk: list[tuple[int, bytes]] = []
        for tile, data in zip(tiles, bundles, strict=True):
            try:
                raws = parse_entry_bundle(data)
            except LedgerError as exc:
                raise CatchUpError(f"{url}: entry bundle {format_tile_path(tile)} is "
                                   f"malformed: {exc}") from None
            if len(raws) != tile.width:
                raise CatchUpError(f"{url}: entry bundle {format_tile_path(tile)} holds "
                                   f"{len(raws)} entries, not {tile.width}")
            base = tile.index * TILE_WIDTH
            chunk += [(base + i, raw) for i, raw in enumerate(raws) if base + i >= start]
        yield chunk


async def _get(session: aiohttp.ClientSession, url: str) -> bytes:
    try:
        return await get_capped(session, url, MAX_BUNDLE_SIZE, timeout=30)
    except ReplyError as exc:
        raise CatchUpError(str(exc)) from None
