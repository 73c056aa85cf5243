"""Outlier ejection, panic threshold, zone preference and breakers in the router."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waypost import CircuitOpen, NoHealthyInstances
from waypost.client import (
    BreakerPolicy,
    FakeClock,
    Instance,
    OutlierDetector,
    OutlierPolicy,
    Router,
)


def instances(n: int, zones: list[str] | None = None) -> list[Instance]:
    return [
        Instance(f"i{k}", f"10.0.0.{k}", 80, meta={"zone": zones[k]} if zones else {})
        for k in range(n)
    ]


def test_consecutive_failures_eject_for_growing_time() -> None:
    clock = FakeClock()
    detector = OutlierDetector(OutlierPolicy(consecutive_failures=3), clock)
    detector.update(["a", "b"])
    for _ in range(3):
        detector.record("a", False)
    assert detector.ejected() == {"a"}
    clock.advance(30)
    assert detector.ejected() == frozenset()
    for _ in range(3):
        detector.record("a", False)
    clock.advance(59)
    assert detector.ejected() == {"a"}  # second ejection lasts 60 s
    clock.advance(1)
    assert detector.ejected() == frozenset()


def test_max_ejected_share_caps_ejections() -> None:
    detector = OutlierDetector(OutlierPolicy(consecutive_failures=1), FakeClock())
    detector.update([f"h{k}" for k in range(20)])
    for k in range(10):
        detector.record(f"h{k}", False)
    assert len(detector.ejected()) == 2  # 10 % of 20


def test_at_least_one_may_be_ejected() -> None:
    detector = OutlierDetector(OutlierPolicy(consecutive_failures=1), FakeClock())
    detector.update(["a", "b", "c"])
    detector.record("a", False)
    detector.record("b", False)
    assert detector.ejected() == {"a"}


def test_success_rate_ejection() -> None:
    clock = FakeClock()
    policy = OutlierPolicy(consecutive_failures=1000, request_volume=10, max_ejected_share=0.5)
    detector = OutlierDetector(policy, clock)
    hosts = [f"h{k}" for k in range(6)]
    detector.update(hosts)
    for k, host in enumerate(hosts):
        for n in range(20):
            detector.record(host, ok=(k != 0 or n % 2 == 0))  # h0 fails half
    clock.advance(10)
    detector.record("h1", True)  # triggers the sweep
    assert detector.ejected() == {"h0"}


def router(n: int = 4, **kwargs: object) -> tuple[Router, FakeClock]:
    clock = FakeClock()
    kwargs.setdefault("breaker", BreakerPolicy(consecutive_failures=2, open_base=1.0))
    r = Router("payment", "round_robin", instances(n), rng=random.Random(1), clock=clock, **kwargs)
    return r, clock


def fail(r: Router, instance_id: str, times: int) -> None:
    inst = next(i for i in r.instances if i.id == instance_id)
    for _ in range(times):
        r.report(inst, False, 0.01)


def test_router_avoids_open_breaker_then_probes() -> None:
    r, clock = router(3, outlier=None)
    fail(r, "i0", 2)
    assert "i0" not in {r.pick().id for _ in range(30)}
    clock.advance(1.0)
    picks = [r.pick().id for _ in range(30)]
    assert picks.count("i0") == 1  # one probe permit while half-open


def test_all_breakers_open_raises_circuit_open() -> None:
    r, _ = router(2, outlier=None)
    fail(r, "i0", 2)
    fail(r, "i1", 2)
    with pytest.raises(CircuitOpen, match="payment"):
        r.pick()


def test_panic_threshold_ignores_ejections() -> None:
    r, _ = router(
        4,
        breaker=None,
        outlier=OutlierPolicy(consecutive_failures=1, max_ejected_share=1.0),
    )
    fail(r, "i0", 1)
    assert "i0" not in {r.pick().id for _ in range(20)}
    fail(r, "i1", 1)
    fail(r, "i2", 1)  # 1 of 4 healthy < 50 %: panic, use all
    assert {r.pick().id for _ in range(20)} == {"i0", "i1", "i2", "i3"}
    assert r.panics > 0


def test_zone_preference_and_spill_over() -> None:
    r, _ = router(4, zone="a", breaker=BreakerPolicy(consecutive_failures=1), outlier=None)
    r.update(instances(4, ["a", "a", "b", "b"]))
    assert {r.pick().id for _ in range(20)} == {"i0", "i1"}
    fail(r, "i0", 1)
    fail(r, "i1", 1)  # local zone down: spill to b
    assert {r.pick().id for _ in range(20)} == {"i2", "i3"}


def test_avoid_and_no_instances() -> None:
    r, _ = router(2)
    with pytest.raises(NoHealthyInstances):
        r.pick(avoid={"i0", "i1"})
    empty, _ = router(0)
    with pytest.raises(NoHealthyInstances, match="no instances"):
        empty.pick()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.booleans(), st.floats(0, 2)), max_size=200))
def test_router_invariants(events: list[tuple[int, bool, float]]) -> None:
    """Never picks an open breaker; ejected hosts only in panic; in-flight balanced."""
    r, clock = router(6, outlier=OutlierPolicy(consecutive_failures=2, max_ejected_share=0.5))
    counts: Counter[str] = Counter()
    for _, ok, dt in events:
        clock.advance(dt)
        try:
            inst = r.pick()
        except CircuitOpen:
            continue
        breaker = r.breaker(inst.id)
        assert breaker is not None
        counts[inst.id] += 1
        r.report(inst, ok, 0.01)
    assert all(r.balancer.pending(i.id) == 0 for i in r.instances)
