"""The rule that keeps a member from cosigning two inconsistent checkpoints.

A member cosigns a checkpoint (size, root) only if it holds those entries itself, the
root is its own root at that size, and the size does not go back: it never cosigns a
smaller tree after a larger one, nor a different root at the same size. Together with
the first rule this means every tree head a member ever cosigns is a prefix of its own
log, so two of them can never fork.
"""

from __future__ import annotations

from collections.abc import Callable

from ledger.errors import LedgerError


class CosignRefused(LedgerError):
    """A checkpoint this member must not cosign; `reason` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class CosignGuard:
    """Persisted state: the last cosigned (size, root). The I/O layer persists
    last_size/last_root after check() succeeds and before it releases the cosignature."""

    def __init__(self, last_size: int = 0, last_root: bytes | None = None) -> None:
        if last_size < 0 or (last_size > 0 and last_root is None):
            raise ValueError("a cosigned size above 0 needs its root")
        self._last_size = last_size
        self._last_root = last_root

    @property
    def last_size(self) -> int:
        return self._last_size

    @property
    def last_root(self) -> bytes | None:
        return self._last_root

    def agrees_with(self, local_size: int, local_root_at: Callable[[int], bytes]) -> bool:
        """Whether a log of local_size entries holds the last cosigned tree head (or does
        not reach it yet): else every later check of this log refuses."""
        size = self._last_size
        return size == 0 or size > local_size or local_root_at(size) == self._last_root

    def check(self, size: int, root: bytes, *, local_size: int,
              local_root_at: Callable[[int], bytes]) -> None:
        if size < self._last_size:
            raise CosignRefused(f"size {size} is below the last cosigned size "
                                f"{self._last_size}")
        if size == self._last_size and self._last_root is not None and root != self._last_root:
            raise CosignRefused(f"size {size} was already cosigned with another root")
        if size > local_size:
            raise CosignRefused(f"size {size} is beyond the {local_size} entries held here")
        if root != local_root_at(size):
            raise CosignRefused(f"root at size {size} differs from this member's log")
        self._last_size = size
        self._last_root = root
