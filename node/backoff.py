"""Pauses between tries of something that keeps failing: a disk, a child process.

They double from `first` up to `longest`, and start again from `first` once the thing
has run `settled_s` seconds since it last came back: a failure soon after a recovery
continues the back-off, so something that comes back only to fail again (a disk with
room for a probe but not for a batch, a child that dies on start) is not retried at the
fastest pace forever.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Backoff:
    def __init__(self, first: float, longest: float, *, settled_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._first, self._longest, self._settled_s = first, longest, settled_s
        self._clock = clock
        self._next = first
        self._working_since: float | None = None

    def failed(self) -> float:
        """It failed (or a try did): the pause before the next try."""
        if self._working_since is not None \
                and self._clock() - self._working_since >= self._settled_s:
            self._next = self._first
        self._working_since = None
        pause = self._next
        self._next = min(pause * 2, self._longest)
        return pause

    def working(self) -> None:
        """It works again, from now."""
        self._working_since = self._clock()
