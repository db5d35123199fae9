"""Back-off between tries: doubling to a ceiling, from the start again once it settled."""

from __future__ import annotations

from node.backoff import Backoff


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_pauses_double_up_to_the_longest() -> None:
    b = Backoff(1.0, 5.0, settled_s=60.0, clock=Clock())
    assert [b.failed() for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_a_failure_soon_after_working_again_goes_on_backing_off() -> None:
    clock = Clock()
    b = Backoff(1.0, 30.0, settled_s=60.0, clock=clock)
    assert [b.failed(), b.failed()] == [1.0, 2.0]
    b.working()
    clock.now += 59.9
    assert b.failed() == 4.0  # came back, failed again within the minute


def test_once_it_settled_the_pauses_start_again() -> None:
    clock = Clock()
    b = Backoff(1.0, 30.0, settled_s=60.0, clock=clock)
    assert [b.failed(), b.failed(), b.failed()] == [1.0, 2.0, 4.0]
    b.working()
    clock.now += 60.0
    assert [b.failed(), b.failed()] == [1.0, 2.0]
