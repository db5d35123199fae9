"""A state snapshot encoded by a forked child: the fork is the capture.

fork() gives the child the ledger exactly as it is at that instant, copy-on-write, so
the node neither copies its state while writes wait (about 0.2 s at 100,000 entries)
nor encodes it on its own event loop (1-2.5 s of slices at 100,000 entries, and more as
the log grows). The child captures and encodes in pure Python, writes the bytes to a
pipe and leaves through os._exit. It touches nothing the parent's other threads may
hold at the fork: no logging, no imports, no SQLite, no thread pools. Its collector is
off, since a collection would write to every object it scans and so copy every page.

Memory: the pages the parent changes while the child runs are copied, so a snapshot
can take up to the state's size again, for a second or two. Linux only (fork without
exec is not safe on macOS, and absent on Windows): elsewhere the node encodes on its
loop in slices (node/snapshots.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import sys
import warnings

from ledger.state import LedgerState
from ledger.state_snapshot import capture, encode_capture

FORKS = sys.platform == "linux" and hasattr(os, "fork")
CHILD_SECONDS = 600.0  # a child still encoding after this is killed: no snapshot, no harm


class ForkedSnapshot:
    """The child encoding one snapshot; `data()` waits for its bytes."""

    def __init__(self, state: LedgerState) -> None:
        read_fd, write_fd = os.pipe()
        with warnings.catch_warnings():
            # Python 3.12+ warns of fork() in a process with threads: the child here
            # runs only code that takes none of the locks those threads use (above).
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _encode_and_exit(state, write_fd)
        os.close(write_fd)
        self.pid = pid
        self._read_fd = read_fd

    async def data(self, timeout: float = CHILD_SECONDS) -> bytes:
        """The snapshot's bytes; RuntimeError if the child failed or ran out of time."""
        reading = asyncio.ensure_future(asyncio.to_thread(_read_all, self._read_fd))
        try:
            data = await asyncio.wait_for(asyncio.shield(reading), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            await reading  # the pipe ends with the child
            raise RuntimeError(f"the snapshot's process ran over {timeout:.0f} s") from None
        finally:
            _, status = await asyncio.to_thread(os.waitpid, self.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise RuntimeError(f"the snapshot's process failed (exit status {code})")
        return data


def _read_all(fd: int) -> bytes:
    parts = []
    with open(fd, "rb", closefd=True) as pipe:
        while chunk := pipe.read(1 << 20):
            parts.append(chunk)
    return b"".join(parts)


def _encode_and_exit(state: LedgerState, write_fd: int) -> None:
    code = 1
    try:
        # The parent's signal handlers write to its event loop's pipe, which the child
        # shares: a signal meant for the child must not reach the parent's loop.
        signal.set_wakeup_fd(-1)
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_DFL)
        gc.disable()
        data = encode_capture(capture(state))
        with open(write_fd, "wb", closefd=True) as pipe:
            pipe.write(data)
        code = 0
    finally:
        os._exit(code)  # no cleanup of the parent's objects, no atexit, no finalizers
