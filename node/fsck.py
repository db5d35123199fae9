"""`consent-ledger fsck --data DIR`: the full check that start-up no longer runs.

A node starts from its newest state snapshot and replays only the entries after it.
fsck replays every entry from genesis (decoded strictly, leaf hashes recomputed, chain
links and admission rules checked), and at each stored snapshot's size compares the
replayed state with the snapshot byte for byte; then it compares every tile and the
latest checkpoint, as start-up does. Run it on a stopped node (or a copy of its data
directory): it reads the same database.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from client.keys import load_private_key
from ledger.checkpoint import Checkpoint, open_checkpoint
from ledger.errors import LedgerError
from ledger.heap import tune_collector
from ledger.note import ALG_ED25519, format_verifier_key, new_verifier
from ledger.signed import public_bytes
from ledger.state import LedgerState
from ledger.state_snapshot import load_snapshot, snapshot_bytes
from ledger.tree import MerkleTree
from node.config import ConfigError, NodeConfig, load_config
from node.recovery import check_checkpoint, check_tiles, replay_entries
from node.storage import Storage, StorageError


async def fsck(config: NodeConfig, out: Callable[[str], None]) -> None:
    """Check everything; StorageError names the first thing that is wrong."""
    if not config.db_path.exists():
        raise ConfigError(f"no ledger in {config.data_dir} ({config.db_path.name} is absent)")
    storage = await Storage.open(config.db_path)
    try:
        origin = await storage.get_meta("origin")
        if origin is None:
            raise StorageError("the database names no origin")
        log_key = public_bytes(load_private_key(config.log_key_path))
        verifier = new_verifier(format_verifier_key(origin.decode(), ALG_ED25519, log_key))

        def open_note(note: bytes) -> Checkpoint:
            return open_checkpoint(note, verifier)[0]

        started = time.perf_counter()
        state, tree = LedgerState(), MerkleTree()
        bad: list[str] = []
        sizes = sorted(await storage.snapshot_sizes())
        if not sizes:
            out("snapshots    none stored")
        for size in sizes:
            await replay_entries(storage, state, tree, until=size, every_root=True,
                                 recheck_form=True)
            if _compare(state, await storage.snapshot(size), size, out):
                continue
            bad.append(str(size))
        await replay_entries(storage, state, tree, every_root=True, recheck_form=True)
        out(f"entries      {tree.size}, every one replayed and valid "
            f"({time.perf_counter() - started:.1f} s)")
        out(f"tiles        {await check_tiles(storage, tree)} match the entries")
        # A cluster member's log may end past its checkpoint (stored, not yet committed).
        member = config.cluster_file is not None or await storage.has_table("raft_log")
        note = await check_checkpoint(storage, tree, open_note, uncommitted_tail=member)
        out("checkpoint   none yet" if note is None else
            f"checkpoint   size {open_note(note).size}, signed, matches the entries")
        if bad:
            raise StorageError(f"the state snapshot at size {', '.join(bad)} does not match "
                               "the replayed log (a node refuses it and replays instead; "
                               "delete the row from the snapshots table of "
                               f"{storage.snapshot_path.name})")
    finally:
        await storage.close()


def _compare(state: LedgerState, data: bytes | None, size: int,
             out: Callable[[str], None]) -> bool:
    if data is None:
        return True  # deleted meanwhile
    if snapshot_bytes(state) == data:
        out(f"snapshot     size {size} matches the replayed state")
        return True
    try:
        load_snapshot(data)
        why = "a valid snapshot of another state"
    except LedgerError as exc:
        why = str(exc)
    out(f"snapshot     size {size} DOES NOT match the replayed state: {why}")
    return False


def fsck_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="consent-ledger fsck",
        description="Replay the whole log and compare it with the stored state snapshots, "
                    "tiles and checkpoint.")
    parser.add_argument("--data", type=Path, dest="data_dir", help="data directory")
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    args = parser.parse_args(argv)
    config = load_config(file=args.config, data_dir=args.data_dir)
    tune_collector()
    asyncio.run(fsck(config, print))
    print("ok")
    return 0
