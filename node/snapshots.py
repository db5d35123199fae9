"""Taking state snapshots while the node runs, so that a restart replays only a tail.

Every `every` committed entries, or a quarter of the log if that is more (`due_after`),
the node captures its state (ledger/state_snapshot.py) and stores it, keeping the newest
two. Only a committed size is ever snapshotted: the caller reports a size once it is
durable (one node) or published (a cluster member), and a capture is kept only if the
state still holds exactly that many entries when it ends, so a cluster member's
uncommitted tail never enters a snapshot.

On Linux a forked child captures and encodes (node/snapshot_fork.py): the fork is the
capture, and the loop only stores the bytes. Elsewhere:

Capturing (shallow copies, the status map's leaves) must see the state hold still: on
one node the sequencer awaits its commit, hence `after_commit`, while the capture runs
in a thread and the event loop keeps serving reads. Encoding the capture and writing
it happen in the background after that, while the state moves on: the encoding on the
loop itself, a slice of rows at a time between its other work (in a thread it shared
the GIL with the loop, which then went at half pace for a second or more).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from ledger.state import LedgerState
from ledger.state_snapshot import Capture, capture, encode_steps
from node.snapshot_fork import FORKS, ForkedSnapshot
from node.storage import Storage

log = logging.getLogger("consent_ledger.snapshots")

KEEP = 2  # the newest, and one to fall back on if the newest is refused


def due_after(last: int, every: int, offset: int = 0) -> int:
    """The size at which the snapshot after one at `last` (0: none yet) is due.

    `offset` delays the first one: members of a cluster each have their own, so that
    they do not all snapshot at the same size at once, while a majority without the
    one snapshotting keeps committing (three at once held each loop 60-190 ms at a time
    for over a second, and requests up to 1.2 s).

    A snapshot holds the whole state, so at a fixed interval the bytes written for
    snapshots grow with the log, per entry: 35 MB every 100,000 entries at 100,000,
    350 MB at a million. Waiting for the log to grow by a quarter keeps them to about
    four times the state's own bytes per entry, and a restart replays at most a fifth of
    the log.
    """
    return last + max(every, last // 4) + (offset if last == 0 else 0)


class Snapshotter:
    def __init__(self, storage: Storage, state: Callable[[], LedgerState], *,
                 every: int, offset: int = 0,
                 hold: Callable[[], bool] | None = None) -> None:
        self._storage = storage
        self._state = state  # a cluster member replaces its state when it reloads
        self._every = every
        self._offset = offset  # see due_after
        # While hold() is true (a cluster's leader, every write waits on it), a due
        # snapshot waits too, for one more interval at most: followers take theirs.
        self._hold = hold
        self._last: int | None = None  # size of the newest stored snapshot
        self._writing: asyncio.Task[None] | None = None

    def _due(self, size: int) -> bool:
        if self._every == 0 or self._last is None:
            return False
        due = due_after(self._last, self._every, self._offset)
        if self._hold is not None and self._hold():
            due = due_after(due, self._every)
        return (size >= due
                and (self._writing is None or self._writing.done()))

    async def after_commit(self, size: int) -> None:
        """`size` entries are committed: capture the state if a snapshot is due.

        Call it before the state moves past `size`; it returns once the capture is done.
        """
        if self._every == 0:
            return
        if self._last is None:
            sizes = await self._storage.snapshot_sizes()
            self._last = sizes[0] if sizes else 0
        state = self._state()
        if not self._due(size) or state.size != size:
            return  # not yet, or the state is past what is committed: a later commit
        started = time.perf_counter()
        if FORKS:
            forked = ForkedSnapshot(state)  # the child holds the state as of now
            self._last = size
            self._writing = asyncio.create_task(self._store(
                size, forked.data, time.perf_counter() - started), name="snapshot")
            return
        try:
            captured = await asyncio.to_thread(capture, state)
        except (ValueError, RuntimeError):  # the state changed under the copy
            captured = None
        if captured is None or state is not self._state() or state.size != size \
                or captured.size != size:
            log.debug("state moved during capture; snapshot deferred", extra={"size": size})
            return
        self._last = size
        self._writing = asyncio.create_task(self._store(
            size, lambda: _encode_on_loop(captured), time.perf_counter() - started),
            name="snapshot")

    async def _store(self, size: int, encode: Callable[[], Awaitable[bytes]],
                     capture_seconds: float) -> None:
        started = time.perf_counter()
        try:
            data = await encode()
            await self._storage.store_snapshot(size, data, keep=KEEP)
        except Exception as exc:  # the log is intact; the next snapshot is due sooner
            self._last = None
            log.warning("state snapshot not stored",
                        extra={"size": size, "error": f"{type(exc).__name__}: {exc}"})
            return
        log.info("state snapshot stored", extra={
            "size": size, "bytes": len(data),
            "capture_ms": round(capture_seconds * 1000, 1),
            "write_ms": round((time.perf_counter() - started) * 1000, 1)})

    async def close(self) -> None:
        """Wait for a snapshot being written (at shutdown, before storage closes)."""
        if self._writing is not None:
            await asyncio.gather(self._writing, return_exceptions=True)


async def _encode_on_loop(captured: Capture) -> bytes:
    steps = encode_steps(captured)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value
        await asyncio.sleep(0)  # the loop's other work between two slices
