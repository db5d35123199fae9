"""Verify a whole log from genesis, trusting nothing the node says.

Entries come from the tlog-tiles entry bundles; each is decoded strictly and replayed
through the consent state machine with every signature checked; the hash chain is
checked link by link; the tree rebuilt from the entries must have the root that the
log's signed checkpoint states.
"""

from __future__ import annotations

import dataclasses

import aiohttp

from ledger import merkle
from ledger.checkpoint import Checkpoint, parse_checkpoint
from ledger.entry import LogEntry
from ledger.errors import LedgerError
from ledger.note import new_verifier, open_note
from ledger.state import LedgerState
from ledger.tiles import TILE_WIDTH, entry_tile_for, format_tile_path, parse_entry_bundle
from ledger.tree import MerkleTree


class LogVerificationFailed(Exception):
    """The log does not verify; the message names the entry and the reason."""


@dataclasses.dataclass(frozen=True)
class VerifiedLog:
    checkpoint: Checkpoint
    state: LedgerState
    tree: MerkleTree


async def fetch_checkpoint(session: aiohttp.ClientSession, url: str, log_vkey: str) -> Checkpoint:
    async with session.get(f"{url}/checkpoint") as resp:
        if resp.status != 200:
            raise LogVerificationFailed(f"GET /checkpoint answered {resp.status}")
        note = await resp.read()
    try:
        return parse_checkpoint(open_note(note, [new_verifier(log_vkey)]).text)
    except LedgerError as exc:
        raise LogVerificationFailed(f"the checkpoint does not verify: {exc}") from None


async def verify_log(session: aiohttp.ClientSession, url: str, log_vkey: str) -> VerifiedLog:
    checkpoint = await fetch_checkpoint(session, url, log_vkey)
    state, tree = LedgerState(), MerkleTree()
    for n in range(-(-checkpoint.size // TILE_WIDTH)):
        tile = entry_tile_for(n * TILE_WIDTH, checkpoint.size)
        width = tile.width
        path = format_tile_path(tile)
        async with session.get(f"{url}/{path}") as resp:
            if resp.status != 200:
                raise LogVerificationFailed(f"GET /{path} answered {resp.status}")
            data = await resp.read()
        try:
            bundle = parse_entry_bundle(data)
        except LedgerError as exc:
            raise LogVerificationFailed(f"entry tile {n}: {exc}") from None
        if len(bundle) != width:
            raise LogVerificationFailed(f"entry tile {n} holds {len(bundle)} entries, not {width}")
        for raw in bundle:
            index = tree.size
            try:
                entry = LogEntry.decode(raw)
                state.replay(entry, verify_signatures=True)
            except LedgerError as exc:
                raise LogVerificationFailed(f"entry {index}: {exc}") from None
            tree.append(merkle.leaf_hash(raw))
    if tree.root() != checkpoint.root:
        raise LogVerificationFailed(
            f"the entries make root {tree.root().hex()}, the checkpoint for size "
            f"{checkpoint.size} says {checkpoint.root.hex()}")
    return VerifiedLog(checkpoint, state, tree)
