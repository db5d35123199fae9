"""`cluster up` keeps its members running as the systemd units in deploy/ do.

A member that dies (a crash, SIGKILL, out of memory) is started again after
RESTART_PAUSE_S, like `Restart=on-failure` with `RestartSec=2`: the cluster goes on
without it meanwhile, and the restarted member catches up from the others. One that
exits with EXIT_RESTART (its disk failed, then recovered) asked for it and is started
again at once. One that exits with 0 was stopped on purpose and stays stopped. One that
dies RESTART_BURST times within RESTART_WINDOW_S cannot live (a broken disk, a port in
use) and is given up on, as systemd's start limit would: its log says why.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from node.storage_failures import EXIT_RESTART

RESTART_PAUSE_S = 2.0
RESTART_BURST = 5
RESTART_WINDOW_S = 60.0

Start = Callable[[str], Awaitable[asyncio.subprocess.Process]]


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


class MemberSupervisor:
    """Starts each member and keeps it running; `run` returns when all have stopped."""

    def __init__(self, start: Start, log_of: Callable[[str], Path], *,
                 pause_s: float = RESTART_PAUSE_S) -> None:
        self._start = start
        self._log_of = log_of
        self._pause_s = pause_s
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self._starts: dict[str, list[float]] = {}

    async def start(self, member_id: str) -> None:
        self.procs[member_id] = await self._start(member_id)
        now = time.monotonic()
        self._starts[member_id] = [t for t in self._starts.get(member_id, ())
                                   if now - t < RESTART_WINDOW_S] + [now]

    async def run(self) -> None:
        """Watch every started member until none is left running."""
        await asyncio.gather(*(self._watch(m) for m in list(self.procs)))

    async def _watch(self, member_id: str) -> None:
        while True:
            code = await self.procs[member_id].wait()
            log = self._log_of(member_id)
            if code == 0:
                _say(f"member {member_id} stopped (status 0); not restarted")
                return
            if code == EXIT_RESTART:
                _say(f"member {member_id} asked to be restarted; restarting it")
            else:
                now = time.monotonic()  # the starts kept are those of the last window
                recent = [t for t in self._starts[member_id] if now - t < RESTART_WINDOW_S]
                if len(recent) >= RESTART_BURST:
                    _say(f"member {member_id} exited with {describe_exit(code)}, its "
                         f"{len(recent)}th start within {RESTART_WINDOW_S:.0f} s; not "
                         f"restarting it again: see {log}")
                    return
                _say(f"member {member_id} exited with {describe_exit(code)}; restarting "
                     f"it in {self._pause_s:g} s (see {log})")
                await asyncio.sleep(self._pause_s)  # the restart pause, as RestartSec
            await self.start(member_id)

    async def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to every live member (each finishes its batch in flight), SIGKILL after
        `timeout` seconds."""
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                await asyncio.wait_for(proc.wait(), timeout=timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def _say(message: str) -> None:
    print(f"consent-ledger: {message}", file=sys.stderr, flush=True)
