"""Circuit breaker state machine, with a fake clock."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from waypost.client import BreakerPolicy, BreakerState, CircuitBreaker, FakeClock

POLICY = BreakerPolicy(consecutive_failures=3, open_base=1.0, open_max=8.0, half_open_probes=2)


def tripped(clock: FakeClock, policy: BreakerPolicy = POLICY) -> CircuitBreaker:
    breaker = CircuitBreaker(policy, clock)
    for _ in range(policy.consecutive_failures):
        assert breaker.acquire()
        breaker.record(False)
    return breaker


def test_trips_after_consecutive_failures() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(POLICY, clock)
    for _ in range(2):
        breaker.record(False)
    breaker.record(True)
    breaker.record(False)
    assert breaker.state is BreakerState.CLOSED
    breaker.record(False)
    breaker.record(False)
    assert breaker.state is BreakerState.OPEN
    assert not breaker.acquire()


def test_trips_on_failure_rate() -> None:
    policy = BreakerPolicy(consecutive_failures=100, failure_rate=0.5, window=10, min_calls=10)
    breaker = CircuitBreaker(policy, FakeClock())
    for k in range(9):
        breaker.record(k % 2 == 0)  # 4 failures of 9: below min_calls anyway
    assert breaker.state is BreakerState.CLOSED
    breaker.record(False)  # 5 of 10 failed
    assert breaker.state is BreakerState.OPEN


def test_half_open_limits_probes_and_closes_after_successes() -> None:
    clock = FakeClock()
    breaker = tripped(clock)
    clock.advance(0.99)
    assert breaker.state is BreakerState.OPEN
    clock.advance(0.02)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.acquire() and breaker.acquire()
    assert not breaker.acquire()  # bounded probes
    breaker.record(True)
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.record(True)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.acquire()


def test_half_open_failure_reopens_with_growing_time() -> None:
    clock = FakeClock()
    breaker = tripped(clock)
    opens = []
    for _ in range(5):
        start = clock.now()
        clock.advance(breaker.reopen_at - start)
        assert breaker.state is BreakerState.HALF_OPEN
        opens.append(breaker.reopen_at)  # previous deadline
        assert breaker.acquire()
        breaker.record(False)
        assert breaker.state is BreakerState.OPEN
        opens[-1] = breaker.reopen_at - clock.now()
    assert opens == [2.0, 4.0, 8.0, 8.0, 8.0]


def test_close_resets_open_time() -> None:
    clock = FakeClock()
    breaker = tripped(clock)
    clock.advance(1.0)
    breaker.acquire()
    breaker.record(False)  # open for 2 s
    clock.advance(2.0)
    for _ in range(2):
        breaker.acquire()
        breaker.record(True)
    assert breaker.state is BreakerState.CLOSED
    for _ in range(3):
        breaker.record(False)
    assert breaker.reopen_at - clock.now() == 1.0


def test_release_returns_probe_permit() -> None:
    clock = FakeClock()
    breaker = tripped(clock)
    clock.advance(1.0)
    assert breaker.acquire() and breaker.acquire()
    breaker.release()
    assert breaker.acquire()


def test_outcomes_while_open_are_ignored() -> None:
    clock = FakeClock()
    breaker = tripped(clock)
    breaker.record(True)
    assert breaker.state is BreakerState.OPEN


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["ok", "fail", "tick", "acquire"]), st.floats(0, 5))))
def test_state_machine_invariants(script: list[tuple[str, float]]) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(POLICY, clock)
    for op, value in script:
        if op == "tick":
            clock.advance(value)
        elif op == "acquire":
            breaker.acquire()
        else:
            breaker.record(op == "ok")
        state = breaker.state
        if state is BreakerState.OPEN:
            assert clock.now() < breaker.reopen_at
            assert breaker.reopen_at - clock.now() <= POLICY.open_max
            assert not breaker.available()
        stats = breaker.statistics()
        assert stats["state"] == state.value


def test_late_outcome_in_half_open_is_not_a_probe() -> None:
    clock = FakeClock()
    breaker = tripped(clock)
    clock.advance(1.0)
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.record(True)  # a call from before the trip finishing now
    breaker.record(True)
    assert breaker.state is BreakerState.HALF_OPEN  # still waiting for real probes
