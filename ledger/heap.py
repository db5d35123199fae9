"""How a process that holds a whole ledger in memory should run CPython's collector.

The state of a ledger (grant states, statuses, status-map branches, the tree's levels)
is millions of container objects that live as long as the process and never form a
cycle that needs collecting. With the default thresholds the cyclic collector keeps
re-scanning them as they accumulate: `python -m bench.bench_replay` (40,000 grants
decoded, admitted, replayed) measured 12–18 µs of collection per event, about a fifth of
the work, and 3–8 µs with a young generation of 50,000 objects.
Reference counting still frees everything acyclic at once; cycles (asyncio's
exceptions and futures) are collected as before, only in larger, rarer sweeps. What a
running node adds to its ledger leaves the scans too, every few thousand entries
(`GrowingState`).

Once the ledger is loaded and the node serves, the young generation shrinks to
SERVING_YOUNG_GENERATION: under load nearly all it holds is new ledger state, each
sweep finds almost no garbage, and a sweep of 50,000 objects held the event loop
21–31 ms, against at most 10 ms for 10,000 (one node, 100,000 entries written: 17
sweeps and 308 ms in all, against 126 and 433 ms). A request waits for a sweep; the
extra 1.3 µs an event does not wait on anyone.
"""

from __future__ import annotations

import gc

YOUNG_GENERATION = 50_000  # CPython's default is 700
SERVING_YOUNG_GENERATION = 10_000


def tune_collector() -> None:
    """Collect rarely: call once at process start, before the ledger is loaded."""
    gc.set_threshold(YOUNG_GENERATION, 20, 10)


def settle_loaded_state() -> None:
    """After loading a ledger: collect once, keep what survives out of later scans, and
    sweep the young generation in shorter pauses from now on."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(SERVING_YOUNG_GENERATION, *gc.get_threshold()[1:])


class GrowingState:
    """Keeps a growing ledger out of the collector's scans, as settle_loaded_state does
    for a loaded one.

    Without it, everything the ledger gained since start-up sits in the collector's
    generations: under load a collection of the middle one scanned about a million
    objects and held the event loop for 370 ms (100,000 entries), and a full one costs
    more as the log grows. gc.freeze() moves every object alive now out of their sight
    at no cost of its own. What it cannot do is collect a reference cycle that becomes
    garbage later through a frozen object: collections here find under a hundred such
    objects per million allocations, so freezing once per FREEZE_EVERY entries keeps
    that to a few bytes an entry, against the kilobyte an entry the state itself holds.
    """

    FREEZE_EVERY = 10_000  # entries

    def __init__(self, size: int) -> None:
        self._frozen_at = size

    def grew_to(self, size: int) -> bool:
        """Freeze if the ledger grew FREEZE_EVERY entries since the last time; whether it did."""
        if size - self._frozen_at < self.FREEZE_EVERY:
            return False
        gc.freeze()
        self._frozen_at = size
        return True
