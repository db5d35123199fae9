"""The Raft core's compact view of the log: the term of every index, and the CONFIG
entries with their data. Batch payloads stay with the I/O layer's storage.

Terms are kept run-length encoded (a run per term), so millions of entries cost a few
integers per term. The kind of an entry is not stored: CONFIG entries are kept, and the
first entry of every term is its leader's NOOP (a leader appends it before anything
else), so `append` refuses any log that breaks that rule rather than guess.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable

from ledger.raft.messages import Entry, EntryKind, Snapshot


class RaftLog:
    __slots__ = ("_config_indices", "_configs", "_last", "_snapshot", "_starts", "_terms")

    def __init__(self, snapshot: Snapshot | None = None) -> None:
        # Runs of equal terms over the entries after the snapshot; a run that began at or
        # before the snapshot is cut to start at its index.
        self._starts: list[int] = []  # first index of each run (ascending)
        self._terms: list[int] = []  # the term of each run (strictly ascending)
        self._last = 0
        self._configs: dict[int, Entry] = {}
        self._config_indices: list[int] = []  # ascending
        self._snapshot = snapshot
        if snapshot is not None:
            if snapshot.index < 1 or snapshot.term < 1:
                raise ValueError(f"a snapshot at index {snapshot.index}, term {snapshot.term}")
            self._starts.append(snapshot.index)
            self._terms.append(snapshot.term)
            self._last = snapshot.index

    @classmethod
    def restore(cls, terms: Iterable[tuple[int, int]], configs: Iterable[Entry],
                snapshot: Snapshot | None = None) -> RaftLog:
        """Rebuild from what is persisted: the snapshot the log starts with, if any; then
        (index, term) for every entry after it, in order; and the CONFIG entries among
        them (with data). Raises ValueError on an inconsistent log."""
        log = cls(snapshot)
        for index, term in terms:
            if index != log._last + 1:
                raise ValueError(f"restore: index {index} follows {log._last}")
            log._push_term(index, term)
        for entry in configs:
            if entry.kind is not EntryKind.CONFIG or entry.data is None:
                raise ValueError(f"restore: entry {entry.index} is not a CONFIG with data")
            if log.term_at(entry.index) != entry.term or entry.index <= log.first_index - 1:
                raise ValueError(f"restore: CONFIG {entry.index} is not in the log")
            if log._config_indices and entry.index <= log._config_indices[-1]:
                raise ValueError("restore: CONFIG entries out of order")
            log._configs[entry.index] = entry
            log._config_indices.append(entry.index)
        return log

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    @property
    def first_index(self) -> int:
        """The first index the log holds an entry for (later ones were compacted away)."""
        return self._snapshot.index + 1 if self._snapshot is not None else 1

    @property
    def last_index(self) -> int:
        return self._last

    @property
    def last_term(self) -> int:
        return self._terms[-1] if self._terms else 0

    def term_at(self, index: int) -> int | None:
        """The term of the entry at index; 0 at index 0; None outside the log (after it,
        or compacted away: the snapshot's own index still has its term)."""
        if index == 0 and self._snapshot is None:
            return 0
        if index < self.first_index - 1 or index > self._last:
            return None
        return self._terms[bisect_right(self._starts, index) - 1]

    def term_start(self, index: int) -> int:
        """The first index holding the same term as index (which must be in the log)."""
        return self._starts[bisect_right(self._starts, index) - 1]

    def last_index_of_term_at_most(self, term: int) -> int:
        """The last index whose term is <= term (0 if none)."""
        k = bisect_right(self._terms, term)
        if k == 0:
            return 0
        return self._starts[k] - 1 if k < len(self._starts) else self._last

    def latest_config(self) -> Entry | None:
        """The last CONFIG entry, or the snapshot's membership as one at its index."""
        if self._config_indices:
            return self._configs[self._config_indices[-1]]
        return self._snapshot_config()

    def config_at(self, index: int) -> Entry | None:
        """The CONFIG in force at index (the last at or before it), as latest_config."""
        k = bisect_right(self._config_indices, index)
        if k:
            return self._configs[self._config_indices[k - 1]]
        return self._snapshot_config()

    def _snapshot_config(self) -> Entry | None:
        s = self._snapshot
        return None if s is None else Entry(s.index, s.term, EntryKind.CONFIG, s.config)

    def config_after(self, index: int) -> bool:
        """Whether some CONFIG entry lies beyond index."""
        return bool(self._config_indices) and self._config_indices[-1] > index

    def entries(self, lo: int, hi: int) -> tuple[Entry, ...]:
        """Entries lo..hi inclusive as the core knows them: BATCH data is None."""
        if lo > hi:
            return ()
        if lo < self.first_index or hi > self._last:
            raise IndexError(f"entries {lo}..{hi} outside {self.first_index}..{self._last}")
        out: list[Entry] = []
        starts, terms, configs = self._starts, self._terms, self._configs
        k = bisect_right(starts, lo) - 1
        index = lo
        while index <= hi:
            run_end = starts[k + 1] - 1 if k + 1 < len(starts) else self._last
            term, start = terms[k], starts[k]
            for i in range(index, min(hi, run_end) + 1):
                config = configs.get(i)
                if config is not None:
                    out.append(config)
                elif i == start:
                    out.append(Entry(i, term, EntryKind.NOOP, b""))
                else:
                    out.append(Entry(i, term, EntryKind.BATCH, None))
            index = run_end + 1
            k += 1
        return tuple(out)

    def check_append(self, entries: Iterable[Entry], after: int | None = None) -> str | None:
        """Why these entries cannot follow the entry at `after` (default: the last one),
        or None if they can."""
        last = self._last if after is None else after
        last_term = self.term_at(last)
        if last_term is None:
            return f"index {last} is not in the log"
        for e in entries:
            if e.index != last + 1:
                return f"entry {e.index} does not follow {last}"
            if e.term < last_term:
                return f"entry {e.index} has term {e.term} below {last_term}"
            starts_term = e.term != last_term
            if e.kind is EntryKind.NOOP and not starts_term:
                return f"NOOP {e.index} does not start its term"
            if e.kind is EntryKind.BATCH and starts_term:
                return f"BATCH {e.index} starts term {e.term} (its NOOP must come first)"
            if e.data is None:
                return f"entry {e.index} has no data"
            last, last_term = e.index, e.term
        return None

    def append(self, entries: Iterable[Entry]) -> None:
        entries = tuple(entries)
        problem = self.check_append(entries)
        if problem is not None:
            raise ValueError(problem)
        for e in entries:
            self._push_term(e.index, e.term)
            if e.kind is EntryKind.CONFIG:
                self._configs[e.index] = e
                self._config_indices.append(e.index)

    def truncate_after(self, index: int) -> None:
        """Drop every entry with an index above index (never below the snapshot)."""
        if index >= self._last:
            return
        if index < self.first_index - 1:
            raise ValueError(f"truncate after {index}: the log is compacted to "
                             f"{self.first_index - 1}")
        index = max(index, 0)
        k = bisect_right(self._starts, index)  # runs starting after index go
        del self._starts[k:]
        del self._terms[k:]
        self._last = index
        while self._config_indices and self._config_indices[-1] > index:
            del self._configs[self._config_indices.pop()]

    def compact(self, snapshot: Snapshot) -> None:
        """Drop the entries up to snapshot.index, which must be in the log with its term
        and hold the snapshot's membership (the caller checks they are committed)."""
        index = snapshot.index
        if index < self.first_index or self.term_at(index) != snapshot.term:
            raise ValueError(f"compact to {index}: not an entry of term {snapshot.term} "
                             f"after {self.first_index - 1}")
        k = bisect_right(self._starts, index) - 1
        del self._starts[:k]
        del self._terms[:k]
        self._starts[0] = index
        while self._config_indices and self._config_indices[0] <= index:
            del self._configs[self._config_indices.pop(0)]
        self._snapshot = snapshot

    def reset_to(self, snapshot: Snapshot) -> None:
        """Replace the whole log by a snapshot (a follower given its leader's)."""
        fresh = RaftLog(snapshot)
        self._starts, self._terms, self._last = fresh._starts, fresh._terms, fresh._last
        self._configs, self._config_indices = {}, []
        self._snapshot = snapshot

    def _push_term(self, index: int, term: int) -> None:
        if not self._terms or term != self._terms[-1]:
            if self._terms and term < self._terms[-1]:
                raise ValueError(f"entry {index}: term {term} below {self._terms[-1]}")
            self._starts.append(index)
            self._terms.append(term)
        self._last = index

    def __repr__(self) -> str:
        runs = list(zip(self._starts, self._terms, strict=True))
        base = f"snapshot={self._snapshot.index}, " if self._snapshot is not None else ""
        return f"RaftLog({base}last={self._last}, runs={runs})"
