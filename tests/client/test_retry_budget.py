"""Retry budget: 20 % of requests plus a floor, over a sliding window."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from waypost.client import FakeClock, RetryBudget
from waypost.client._retry import is_idempotent


def test_floor_allows_retries_without_traffic() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=1, window=10, clock=FakeClock())
    assert sum(budget.try_retry() for _ in range(15)) == 10


def test_ratio_adds_to_floor() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=0, window=10, clock=FakeClock())
    for _ in range(100):
        budget.record_request()
    assert sum(budget.try_retry() for _ in range(50)) == 20
    assert budget.statistics()["denied"] == 30


def test_window_slides() -> None:
    clock = FakeClock(0.0)
    budget = RetryBudget(ratio=0.0, min_per_second=1, window=10, clock=clock)
    assert sum(budget.try_retry() for _ in range(20)) == 10
    clock.advance(5)
    assert not budget.try_retry()
    clock.advance(5)
    assert budget.try_retry()  # retries of second 0 left the window


def test_idempotent_methods() -> None:
    assert is_idempotent("get") and is_idempotent("PUT") and is_idempotent("DELETE")
    assert not is_idempotent("POST") and not is_idempotent("PATCH")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.floats(0, 3)), max_size=300))
def test_retries_never_exceed_budget(events: list[tuple[bool, float]]) -> None:
    clock = FakeClock(0.0)
    budget = RetryBudget(ratio=0.2, min_per_second=2, window=10, clock=clock)
    for is_request, dt in events:
        clock.advance(dt)
        if is_request:
            budget.record_request()
        else:
            budget.try_retry()
        stats = budget.statistics()
        assert stats["retries"] <= stats["allowed"]
