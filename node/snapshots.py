"""Taking state snapshots while the node runs, so that a restart replays only a tail.

Every `every` committed entries, or a quarter of the log if that is more (`due_after`),
the node has a snapshot of its state built and stored, keeping the newest two. A
process of its own builds it from the log on disk (node/snapshot_builder.py), at the
lowest CPU priority: the node only starts it, and reads its one-line report. Only a
committed size is ever snapshotted: the caller reports a size once it is durable (one
node) or published (a cluster member). One build runs at a time; a size that fell due
while one ran is built when it ends.

A build shares the machine with the node however low its priority (a process at nice
19 beside a node at half load doubled or tripled its p99 here: the two cores share more
than time), so a single node starts a due build in a quiet moment, `quiet_ms` after its
last commit, for up to one more interval: under bursts of writes builds fall between
them, under steady load they come one interval late.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable

from node.snapshot_builder import KEEP
from node.storage import Storage

log = logging.getLogger("consent_ledger.snapshots")


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
    def __init__(self, storage: Storage, *, every: int, offset: int = 0,
                 hold: Callable[[], bool] | None = None, nice: int = 19,
                 quiet_ms: int = 0) -> None:
        self._storage = storage
        self._every = every
        self._nice = nice  # the builder's
        self._offset = offset  # see due_after
        # While hold() is true (a cluster's leader, every write waits on it), a due
        # snapshot waits too, for one more interval at most: followers take theirs.
        self._hold = hold
        self._quiet_s = quiet_ms / 1000
        self._last_commit = -math.inf  # time.monotonic() of the newest commit reported
        self._waiting: asyncio.TimerHandle | None = None  # for a quiet moment
        self._last: int | None = None  # size of the newest stored (or tried) snapshot
        self._committed = 0  # the newest committed size reported
        self._building: asyncio.Task[None] | None = None
        self._process: asyncio.subprocess.Process | None = None

    def _due(self, size: int, *, quiet: bool) -> bool:
        if self._every == 0 or self._last is None:
            return False
        due = due_after(self._last, self._every, self._offset)
        if not quiet or (self._hold is not None and self._hold()):
            due = due_after(due, self._every)
        return size >= due

    async def after_commit(self, size: int) -> None:
        """`size` entries are committed (and on disk): start a build if one is due."""
        if self._every == 0:
            return
        self._committed = max(self._committed, size)
        self._last_commit = time.monotonic()
        if self._last is None:
            sizes = await self._storage.snapshot_sizes()
            self._last = sizes[0] if sizes else 0
        self._consider()

    def _consider(self) -> None:
        """Start the build that is due, now or in the next quiet moment."""
        if self._building is not None and not self._building.done():
            return  # its end considers again
        quiet_for = time.monotonic() - self._last_commit
        quiet = quiet_for >= self._quiet_s
        if self._due(self._committed, quiet=quiet):
            self._start(self._committed)
        elif not quiet and self._waiting is None and self._due(self._committed, quiet=True):
            self._waiting = asyncio.get_running_loop().call_later(
                self._quiet_s - quiet_for, self._on_quiet)

    def _on_quiet(self) -> None:
        self._waiting = None
        self._consider()  # a commit meanwhile: waits again, from that commit

    def _start(self, size: int) -> None:
        # A failed build is not retried at once: the next is due an interval later.
        self._last = size
        self._building = asyncio.create_task(self._build(size), name="snapshot")

    async def _build(self, size: int) -> None:
        started = time.perf_counter()
        log.info("state snapshot build started", extra={"size": size})
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "node.snapshot_builder", str(self._storage.path),
                str(size), "--keep", str(KEEP), "--parent", str(os.getpid()),
                "--nice", str(self._nice),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT)
            out, _ = await self._process.communicate()
            code = self._process.returncode
        except OSError as exc:
            out, code = str(exc).encode(), -1
        except asyncio.CancelledError:  # the node stops: so does the build
            if self._process is not None:
                with contextlib.suppress(ProcessLookupError):
                    self._process.kill()
                await self._process.wait()
            raise
        finally:
            self._process = None
        lines = out.decode("utf-8", "replace").strip().splitlines()
        try:
            report = json.loads(lines[-1]) if lines else {}
        except ValueError:
            report = {"error": lines[-1]}
        if code != 0 or "error" in report:
            log.warning("state snapshot not stored", extra={
                "size": size, "exit_code": code,
                "error": report.get("error", lines[-1] if lines else "no output")})
            return
        log.info("state snapshot stored", extra={
            **report, "seconds": round(time.perf_counter() - started, 3)})
        self._building = None
        self._consider()  # the log grew past the next one meanwhile

    async def finished(self) -> None:
        """Wait for the build in progress, if any, and any it started when it ended."""
        while self._building is not None and not self._building.done():
            await asyncio.gather(self._building, return_exceptions=True)

    async def close(self) -> None:
        """Stop a build in progress: a snapshot is a cache, and a build at the lowest
        priority may take long; what it stored so far is dropped by the next one."""
        if self._waiting is not None:
            self._waiting.cancel()
            self._waiting = None
        if self._building is not None and not self._building.done():
            self._building.cancel()
            await asyncio.gather(self._building, return_exceptions=True)
