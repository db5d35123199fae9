"""Replaying a checked log with status roots taken at their word, and the last one checked."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from state_script import Script, answers, genesis_state, ops

from ledger.entry import LogEntry
from ledger.errors import RejectedError
from ledger.events import StatusRoot
from ledger.signed import log_authored
from ledger.state import LedgerState
from ledger.state_snapshot import capture, snapshot_bytes


def _written_log(drawn: list[tuple[int, int, int, int]]) -> tuple[LedgerState, list[LogEntry]]:
    """A state that admitted what the script drew, closed by a status root, and the
    entries it wrote after genesis_state()'s own."""
    state, script = genesis_state(), Script()
    written = [r for op in drawn for r in script.run(op, state) if isinstance(r, bytes)]
    root = log_authored(StatusRoot(size=state.size, map_root=state.map_root()))
    written.append(state.admit(root, script.clock, signature_verified=False).encoded)
    return state, [LogEntry.decode(data) for data in written]


def _replay(entries: list[LogEntry], max_pending: int | None = None) -> LedgerState:
    state = genesis_state()
    if max_pending is None:
        state.defer_status_roots()
    else:
        state.defer_status_roots(max_pending)
    for entry in entries:
        state.replay(entry, verify_signatures=False)
    state.settle_status_roots()
    return state


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(drawn=ops, max_pending=st.sampled_from([None, 1, 2, 5]))
def test_a_deferred_replay_makes_the_state_that_wrote_the_log(
        drawn: list[tuple[int, int, int, int]], max_pending: int | None) -> None:
    written, entries = _written_log(drawn)
    replayed = _replay(entries, max_pending)
    assert snapshot_bytes(replayed) == snapshot_bytes(written)  # every map leaf too
    seen = [*written.event_index, bytes(32)]
    assert answers(replayed, seen) == answers(written, seen)
    # Settled, it checks every root again: the next batch goes on as in the writer.
    script = Script(clock=max(e.time for e in entries))
    for op in drawn[:5]:
        mine, theirs = script.run(op, replayed, written)
        assert mine == theirs


def _with_root(entries: list[LogEntry], at: int, wrong: bytes) -> list[LogEntry]:
    """The log with the status root at position `at` claiming `wrong`, every later entry
    relinked so that only that claim is false."""
    out = entries[:at]
    for entry in entries[at:]:
        if len(out) == at:
            body = entry.signed.body
            assert isinstance(body, StatusRoot)
            entry = dataclasses.replace(
                entry, signed=log_authored(dataclasses.replace(body, map_root=wrong)))
        elif out:
            entry = dataclasses.replace(entry, prev=out[-1].leaf_hash)
        out.append(entry)
    return out


def _batches() -> list[LogEntry]:
    """Grants in three batches, each closed by a status root."""
    state, script = genesis_state(), Script()
    written = []
    for batch in range(3):
        for op in [(6, batch, 0, 0), (6, batch, 1, 1)]:  # two grants of KEYS[0]
            written += [r for r in script.run(op, state) if isinstance(r, bytes)]
        root = log_authored(StatusRoot(size=state.size, map_root=state.map_root()))
        written.append(state.admit(root, script.clock, signature_verified=False).encoded)
    entries = [LogEntry.decode(data) for data in written]
    assert [type(e.signed.body) is StatusRoot for e in entries].count(True) == 3
    return entries


def test_a_false_last_root_is_refused_when_the_replay_settles() -> None:
    entries = _batches()
    last = len(entries) - 1
    forged = _with_root(entries, last, bytes(32))
    state = genesis_state()
    state.defer_status_roots()
    for entry in forged:
        state.replay(entry, verify_signatures=False)  # taken at its word, for now
    with pytest.raises(RejectedError, match=f"status root at entry {forged[last].index} "):
        state.settle_status_roots()


def test_a_false_earlier_root_is_refused_when_held_back_changes_reach_the_bound() -> None:
    entries = _batches()
    first_root = next(i for i, e in enumerate(entries) if isinstance(e.signed.body, StatusRoot))
    forged = _with_root(entries, first_root, bytes(32))
    # Without deferring (an auditor, fsck) it is refused where it stands.
    state = genesis_state()
    for entry in forged[:first_root]:
        state.replay(entry, verify_signatures=False)
    with pytest.raises(RejectedError, match=f"status root at entry {forged[first_root].index} "):
        state.replay(forged[first_root], verify_signatures=False)
    # Deferring with room for one change only: checked at once, refused as well.
    state = genesis_state()
    state.defer_status_roots(max_pending=1)
    for entry in forged[:first_root]:
        state.replay(entry, verify_signatures=False)
    with pytest.raises(RejectedError, match=f"status root at entry {forged[first_root].index} "):
        state.replay(forged[first_root], verify_signatures=False)


def test_a_root_with_nothing_held_back_is_checked_where_it_stands() -> None:
    state = genesis_state()  # no status yet: a root here is the empty map's
    state.defer_status_roots()
    false_root = LogEntry(index=state.size, time=state.last_time, prev=state.prev,
                          signed=log_authored(StatusRoot(size=state.size, map_root=bytes(32))))
    with pytest.raises(RejectedError, match="not the root"):
        state.replay(false_root, verify_signatures=False)


def test_deferring_and_the_undo_journal_exclude_each_other() -> None:
    entries = _batches()
    journalled = genesis_state()
    journalled.keep_undo()
    with pytest.raises(ValueError, match="undo journal"):
        journalled.defer_status_roots()
    deferring = genesis_state()
    deferring.defer_status_roots()
    for entry in entries:
        deferring.replay(entry, verify_signatures=False)
    with pytest.raises(ValueError, match="settle_status_roots"):
        deferring.keep_undo()
    # A claim not yet checked is a change pending: no snapshot captures it.
    assert deferring.map_pending
    with pytest.raises(ValueError, match="pending"):
        capture(deferring)
    deferring.settle_status_roots()
    assert not deferring.map_pending
    deferring.keep_undo()
