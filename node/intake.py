"""Pushback before the costly part: a budget for request bodies being read and decoded.

The write queue's bound (the sequencer's) counts events only once they are decoded and
checked; the decoding itself happens on the event loop (one body per turn of the loop,
node/api.py) or in the decoding process. When hundreds of clients send at once, hundreds
of bodies would wait in memory to be decoded, and their clients far longer than a retry
would take. So a request whose body would take the bytes in intake over the budget is
refused at once with 503 and Retry-After, before its body is read; clients retry.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


class IntakeFull(Exception):
    """The body would exceed the intake budget: answer 503, Retry-After."""


class IntakeBudget:
    def __init__(self, limit: int, report: Callable[[int], None] = lambda in_use: None) -> None:
        self.limit = limit
        self.in_use = 0
        self._report = report  # the gauge /metrics shows

    @contextlib.contextmanager
    def admit(self, size: int) -> Iterator[None]:
        """Hold `size` bytes of the budget while the body is read, decoded and queued.

        One request is always admitted when nothing else is in intake, however large
        (the body limit bounds it), so that big batches cannot starve."""
        if self.in_use and self.in_use + size > self.limit:
            raise IntakeFull(f"{self.in_use} bytes of requests are being decoded")
        self.in_use += size
        self._report(self.in_use)
        try:
            yield
        finally:
            self.in_use -= size
            self._report(self.in_use)
