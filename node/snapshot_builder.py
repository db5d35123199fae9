"""State snapshots built by a process of their own, from the log on disk.

    python -m node.snapshot_builder DB SIZE [--keep K]

A snapshot is the ledger's state after its first SIZE entries. The node neither copies
nor encodes its own state for one: it starts this process, which opens the node's
database read-only, loads the newest stored snapshot at or below SIZE, replays the
entries after it up to SIZE (every admission rule and chain link checked, and the last
status root; signatures aside, as they were checked before the entries were written and
a restart checks the log again; each entry's form and fields too, which the node checked
before it wrote the entry: ledger/trusted_decode.py says why the chain is enough here),
encodes the state and stores it in the snapshot database
(`DB` with the suffix .snapshots.sqlite), whose only writer it is. It runs at the lowest
CPU priority unless told otherwise (--nice, the node's `snapshot_nice`), so it takes
what the node leaves idle, and prints one JSON line.

Why a process and not a fork of the node: a forked child shares the node's pages copy
on write, and the node's event loop then pays a page fault for each page it touches
first. On this machine's VM that held a cluster member's loop 191 ms at 25,000 entries,
whatever the child's priority, and a node's replies 100-200 ms at 100,000. This process
shares nothing with the node but the files, and does not need the node's state to hold
still, so a cluster member, whose state moves on while it applies the leader's batches,
snapshots on every platform. It costs more CPU than the fork did (it replays what came
after the previous snapshot, the fork had it in memory), on the core the node leaves.

Only a size the node reports committed (one node) or published (a cluster member) is
built, so the entries below it never change.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import sys
import time
from pathlib import Path

from ledger.errors import LedgerError
from ledger.state import LedgerState
from ledger.state_snapshot import capture, encode_capture, load_snapshot
from ledger.trusted_decode import decode_trusted_entry
from node.storage import Storage

KEEP = 2  # the newest, and one to fall back on if the newest is refused
_CHUNK = 5_000  # entries read at a time


class BuildError(Exception):
    """The snapshot cannot be built; the message says why."""


async def build(db: Path, size: int, *, keep: int = KEEP) -> dict[str, object]:
    """Build and store the snapshot at `size`; what was done, for the node's log.

    It starts from the newest stored snapshot at or below `size` that loads, and replays
    on from it, which checks it against the log: if a chain link or a status root does
    not match, it starts again from the next older one, and last from the genesis.
    """
    if size <= 0:
        raise BuildError(f"a snapshot of {size} entries")
    storage = await Storage.open_reader(db)
    try:
        refused: list[str] = []
        for stored in [s for s in await storage.snapshot_sizes() if s <= size] + [0]:
            try:
                state = await _load(storage, stored)
                if stored == size:
                    return {"size": size, "from": stored, "replayed": 0, "bytes": 0,
                            "refused": refused}
                await _replay(storage, state, size)
                break
            except (BuildError, LedgerError) as exc:
                if stored == 0:
                    raise BuildError(str(exc)) from None
                refused.append(f"{stored}: {exc}")
        try:
            data = encode_capture(capture(state))
        except ValueError as exc:  # the status map has changes pending: not a batch's end
            raise BuildError(f"size {size} is not the end of a batch: {exc}") from None
        _check_parent()
        await storage.store_snapshot(size, data, keep=keep)
        return {"size": size, "from": stored, "replayed": size - stored, "bytes": len(data),
                "refused": refused}
    finally:
        await storage.close()


async def _load(storage: Storage, stored: int) -> LedgerState:
    if stored == 0:
        return LedgerState()
    data = await storage.snapshot(stored)
    if data is None:
        raise BuildError("it disappeared")
    state = load_snapshot(data)
    if state.size != stored:
        raise BuildError(f"it holds {state.size} entries")
    return state


async def _replay(storage: Storage, state: LedgerState, size: int) -> None:
    state.defer_status_roots()  # the node checked each as it wrote it: here, the last
    while state.size < size:
        _check_parent()
        rows = await storage.iter_entries(state.size, chunk=min(_CHUNK, size - state.size))
        if not rows:
            raise BuildError(f"entry {state.size} is not on disk (building size {size})")
        for row in rows:
            if row.index != state.size:
                raise BuildError(f"entry {state.size} is missing (found {row.index} next)")
            try:
                state.replay(decode_trusted_entry(row.data), verify_signatures=False)
            except LedgerError as exc:
                raise BuildError(f"entry {row.index} does not replay: {exc}") from None
    try:
        state.settle_status_roots()
    except LedgerError as exc:
        raise BuildError(f"the entries do not replay: {exc}") from None


_parent: int | None = None  # the node's pid (--parent), when it started this process


def _check_parent() -> None:
    """A node that died (SIGKILL) would be restarted with builds of its own: this one
    stops rather than race them to the snapshot database."""
    if _parent is not None and os.getppid() != _parent:
        raise BuildError(f"the node that started this build (pid {_parent}) is gone")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("db", type=Path, help="the node's ledger database")
    parser.add_argument("size", type=int, help="a committed size to snapshot")
    parser.add_argument("--keep", type=int, default=KEEP, help="snapshots kept, newest first")
    parser.add_argument("--nice", type=int, default=19, choices=range(20), metavar="0..19",
                        help="CPU niceness (default 19: only what the node leaves idle)")
    parser.add_argument("--parent", type=int, help="stop if this process is no longer "
                        "the parent (the node that started the build)")
    args = parser.parse_args(argv)
    global _parent
    _parent = args.parent
    with contextlib.suppress(AttributeError, OSError):
        os.nice(args.nice)
    gc.disable()  # millions of new, acyclic objects, in a process that ends soon
    started = time.perf_counter()
    try:
        result = asyncio.run(build(args.db, args.size, keep=args.keep))
    except Exception as exc:  # one line, which the node logs; it carries on without
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    result["seconds"] = round(time.perf_counter() - started, 3)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
