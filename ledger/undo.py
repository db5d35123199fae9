"""Taking back entries a ledger applied but its log did not keep.

A cluster member applies entries before a majority has stored them: the leader as it
sequences a batch, a follower as it checks one. When such a batch never becomes part of
the log (the leader lost its leadership before proposing it, or a new leader overwrote
it), the member's ledger must go back to what its log holds. Replaying the log from disk
does that in seconds, minutes on a long log; this journal does it in about the time the
entries took to apply.

For each entry applied since the journal began, and not yet forgotten, it keeps the
state's scalars before the entry and every slot the entry wrote (a dict key, an object's
attribute), with the value it replaced. Undoing pops entries from the end and restores
their slots in reverse. Entries that can no longer be taken back (committed) are
forgotten from the front, so the journal holds only the uncommitted tail.
"""

from __future__ import annotations

import collections
from typing import Any

MISSING: Any = object()  # the slot held nothing: undoing removes the key

Write = tuple[Any, Any, Any]  # (dict or object, key or attribute name, replaced value)


def restore(writes: list[Write]) -> None:
    """Put back what `writes` replaced, the last write first."""
    for target, slot, old in reversed(writes):
        if type(slot) is str and not isinstance(target, dict):
            setattr(target, slot, old)
        elif old is MISSING:
            del target[slot]
        else:
            target[slot] = old


class UndoLog:
    """The journal of one ledger state, entry by entry."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        # (size before the entry, the state's scalars then, the entry's writes)
        self._entries: collections.deque[tuple[int, tuple[Any, ...], list[Write]]] = \
            collections.deque()

    def begin(self, size: int, scalars: tuple[Any, ...]) -> list[Write]:
        """Start the entry at index `size`; the caller appends its writes to the list."""
        writes: list[Write] = []
        self._entries.append((size, scalars, writes))
        return writes

    def forget_before(self, size: int) -> None:
        """Entries below `size` will never be undone."""
        entries = self._entries
        while entries and entries[0][0] < size:
            entries.popleft()

    def undo_to(self, size: int) -> tuple[tuple[Any, ...], list[Write]]:
        """Undo every entry from index `size` on; the scalars before entry `size`, and
        every write undone (the caller repairs what it derives from them).

        ValueError, with nothing undone, if the journal does not reach back to `size`."""
        entries = self._entries
        if not entries or entries[0][0] > size or entries[-1][0] < size:
            first = entries[0][0] if entries else None
            last = entries[-1][0] if entries else None
            raise ValueError(f"cannot go back to size {size}: the journal holds entries "
                             f"{first}..{last}")
        undone: list[Write] = []
        while True:
            at, scalars, writes = entries.pop()
            restore(writes)
            undone += writes
            if at == size:
                return scalars, undone
