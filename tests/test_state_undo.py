"""Taking back entries: a state rolled back is the state that never applied them."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from state_script import Script, answers, genesis_state, ops

from ledger.state import LedgerState
from ledger.state_snapshot import load_snapshot, snapshot_bytes


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=ops, taken_back=ops, after=ops)
def test_a_rolled_back_state_is_the_state_without_those_entries(
        before: list[tuple[int, int, int, int]], taken_back: list[tuple[int, int, int, int]],
        after: list[tuple[int, int, int, int]]) -> None:
    state, script = genesis_state(), Script()
    for op in before:
        script.run(op, state)
    reference = snapshot_bytes(state)  # the whole state, canonically: every map leaf too
    mark = state.size
    state.keep_undo()
    for op in taken_back:  # grants, revocations, key changes, status roots, refusals
        script.run(op, state)
    seen = [*state.event_index, *(g.id for g in script.grants), bytes(32)]
    state.roll_back(mark)
    assert snapshot_bytes(state) == reference
    never = load_snapshot(reference)
    assert answers(state, seen) == answers(never, seen)
    # And from there both go on alike, rolled back again or not.
    for op in after:
        rolled, fresh = script.run(op, state, never)
        assert rolled == fresh
    assert snapshot_bytes(state) == snapshot_bytes(never)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=ops, second=ops, data=st.data())
def test_rolling_back_to_any_size_the_journal_still_holds(
        first: list[tuple[int, int, int, int]], second: list[tuple[int, int, int, int]],
        data: st.DataObject) -> None:
    state, script = genesis_state(), Script()
    state.keep_undo()
    states: dict[int, bytes] = {state.size: snapshot_bytes(state)}
    for op in [*first, *second]:
        script.run(op, state)
        states[state.size] = snapshot_bytes(state)
    forget = data.draw(st.sampled_from(sorted(states)))
    state.forget_undo(forget)  # committed: out of reach
    target = data.draw(st.sampled_from(sorted(states)))
    if target < forget:
        with pytest.raises(ValueError):
            state.roll_back(target)
        assert snapshot_bytes(state) == states[max(states)]  # nothing undone
    else:
        state.roll_back(target)
        assert snapshot_bytes(state) == states[target]


def test_a_state_that_keeps_no_journal_cannot_go_back() -> None:
    state = genesis_state()
    state.roll_back(state.size)  # where it is: nothing to do
    with pytest.raises(ValueError):
        state.roll_back(1)
    empty = LedgerState()
    empty.keep_undo()
    with pytest.raises(ValueError):
        empty.roll_back(1)  # beyond its size
