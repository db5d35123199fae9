"""The collector settings of a process that holds a ledger, and many-row inserts."""

from __future__ import annotations

import gc
import sqlite3

import pytest

from ledger.heap import (
    SERVING_YOUNG_GENERATION,
    YOUNG_GENERATION,
    GrowingState,
    settle_loaded_state,
    tune_collector,
)
from node.storage import ROWS_PER_STATEMENT, insert_rows


def test_a_growing_ledger_leaves_the_collectors_scans_every_few_thousand_entries() -> None:
    growing = GrowingState(1_000)
    frozen = gc.get_freeze_count()
    assert not growing.grew_to(1_000 + GrowingState.FREEZE_EVERY - 1)
    assert gc.get_freeze_count() == frozen
    assert growing.grew_to(1_000 + GrowingState.FREEZE_EVERY)
    assert gc.get_freeze_count() > frozen
    assert not growing.grew_to(1_000 + GrowingState.FREEZE_EVERY + 1)
    gc.unfreeze()  # leave the test process as it was


def test_a_loaded_ledger_is_frozen_and_the_node_then_sweeps_in_short_pauses() -> None:
    before = gc.get_threshold()
    try:
        tune_collector()
        assert gc.get_threshold()[0] == YOUNG_GENERATION  # loading: rare, large sweeps
        kept = [[i] for i in range(1_000)]  # state loaded, still referenced
        frozen = gc.get_freeze_count()
        settle_loaded_state()
        assert gc.get_freeze_count() >= frozen + len(kept)
        assert gc.get_threshold()[0] == SERVING_YOUNG_GENERATION
        assert SERVING_YOUNG_GENERATION < YOUNG_GENERATION
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


@pytest.mark.parametrize("count", [0, 1, ROWS_PER_STATEMENT, 2 * ROWS_PER_STATEMENT + 3])
def test_many_rows_a_statement_store_what_one_a_statement_would(count: int) -> None:
    rows = [(i, bytes([i % 256]) * 3, f"row {i}", None if i % 2 else i * 1.5)
            for i in range(count)]
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b BLOB, c TEXT, d REAL)")
    insert_rows(db, "INSERT INTO t(a, b, c, d)", rows)
    assert db.execute("SELECT a, b, c, d FROM t ORDER BY a").fetchall() == rows
    if rows:
        with pytest.raises(sqlite3.IntegrityError):  # a plain INSERT still refuses a duplicate
            insert_rows(db, "INSERT INTO t(a, b, c, d)", rows[-1:])
