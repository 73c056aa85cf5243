"""Balancers: deterministic behaviour with seeded randomness and a fake clock."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waypost import NoHealthyInstances
from waypost.client import FakeClock, Instance, make_balancer
from waypost.client._balancers import BALANCERS, PeakEwma

NAMES = sorted(BALANCERS)


def instances(n: int, weights: list[int] | None = None) -> list[Instance]:
    weights = weights or [1] * n
    return [Instance(f"i{k}", f"10.0.0.{k}", 80, weight=weights[k]) for k in range(n)]


def build(name: str, n: int = 5, seed: int = 7, **kwargs: object):
    extra = {"table_size": 251} if name == "maglev" else {}
    return make_balancer(name, rng=random.Random(seed), clock=FakeClock(), **extra, **kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_empty_balancer_raises_with_service_name(name: str) -> None:
    balancer = build(name, service="payment")
    with pytest.raises(NoHealthyInstances, match="payment"):
        balancer.pick()


@pytest.mark.parametrize("name", NAMES)
def test_all_avoided_raises(name: str) -> None:
    balancer = build(name)
    balancer.update(instances(3))
    with pytest.raises(NoHealthyInstances, match="unavailable"):
        balancer.pick(avoid={"i0", "i1", "i2"})


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_sequence(name: str) -> None:
    runs = []
    for _ in range(2):
        balancer = build(name, seed=3)
        balancer.update(instances(6))
        seq = []
        for k in range(50):
            inst = balancer.pick(key=f"user{k % 4}")
            balancer.report(inst, True, 0.01 * (k % 3))
            seq.append(inst.id)
        runs.append(seq)
    assert runs[0] == runs[1]


def test_round_robin_visits_each_in_turn() -> None:
    balancer = build("round_robin")
    balancer.update(instances(4))
    picks = [balancer.pick().id for _ in range(8)]
    assert Counter(picks) == {f"i{k}": 2 for k in range(4)}
    assert picks[:4] == picks[4:]


def test_round_robin_skips_avoided() -> None:
    balancer = build("round_robin")
    balancer.update(instances(3))
    assert {balancer.pick(avoid={"i1"}).id for _ in range(6)} == {"i0", "i2"}


def test_least_outstanding_prefers_idle() -> None:
    balancer = build("least_outstanding")
    balancer.update(instances(3))
    first = balancer.pick()
    second = balancer.pick()
    third = balancer.pick()
    assert len({first.id, second.id, third.id}) == 3
    balancer.report(second, True, 0.01)
    assert balancer.pick().id == second.id


def test_weighted_follows_weights() -> None:
    balancer = build("weighted")
    balancer.update(instances(3, [1, 3, 6]))
    counts = Counter(balancer.pick().id for _ in range(10_000))
    assert counts["i2"] > counts["i1"] > counts["i0"]
    assert 0.55 < counts["i2"] / 10_000 < 0.65


def test_p2c_never_picks_the_most_loaded_of_two() -> None:
    balancer = build("p2c")
    balancer.update(instances(2))
    busy = balancer.pick()
    for _ in range(10):
        other = balancer.pick()
        assert other.id != busy.id
        balancer.report(other, True, 0.01)


def test_peak_ewma_takes_peak_then_decays() -> None:
    clock = FakeClock()
    balancer = PeakEwma(instances(2), clock=clock, tau=10.0, rng=random.Random(1))
    inst = balancer.instances[0]
    balancer.pick(avoid={"i1"})
    balancer.report(inst, True, 2.0)
    assert balancer.cost("i0") == pytest.approx(2.0)
    clock.advance(10.0)  # one time constant: reading decays by e^-1
    assert balancer.cost("i0") == pytest.approx(2.0 * 0.36788, rel=1e-3)
    balancer.pick(avoid={"i1"})
    clock.advance(10.0)
    balancer.report(inst, True, 0.1)  # lower than cost: moves toward it
    expected = 2.0 * 0.36788 * 0.36788 + 0.1 * (1 - 0.36788)
    assert balancer.cost("i0") == pytest.approx(expected, rel=1e-3)


def test_peak_ewma_avoids_slow_instance() -> None:
    clock = FakeClock()
    balancer = PeakEwma(instances(5), clock=clock, rng=random.Random(2))
    counts: Counter[str] = Counter()
    for _ in range(2000):
        inst = balancer.pick()
        counts[inst.id] += 1
        balancer.report(inst, True, 1.0 if inst.id == "i0" else 0.01)
        clock.advance(0.001)
    assert counts["i0"] < 20


def test_new_instance_starts_at_default_rtt() -> None:
    balancer = PeakEwma(instances(1), clock=FakeClock(), default_rtt=0.03)
    assert balancer.cost("i0") == pytest.approx(0.03)


@pytest.mark.parametrize("name", ["ring_hash", "maglev"])
def test_hashing_is_sticky_and_moves_few_keys(name: str) -> None:
    balancer = build(name)
    balancer.update(instances(10))
    before = {k: balancer.pick(key=f"key{k}").id for k in range(1000)}
    assert all(balancer.pick(key=f"key{k}").id == v for k, v in before.items())
    balancer.update(instances(10)[:9])  # i9 leaves
    after = {k: balancer.pick(key=f"key{k}").id for k in range(1000)}
    moved = [k for k in before if before[k] != after[k]]
    lost = [k for k in before if before[k] == "i9"]
    assert set(lost) <= set(moved)
    assert len(moved) < 3 * max(1, len(lost)) + 30


@pytest.mark.parametrize("name", ["ring_hash", "maglev"])
def test_hashing_avoid_falls_over_consistently(name: str) -> None:
    balancer = build(name)
    balancer.update(instances(4))
    owner = balancer.pick(key="k").id
    alt = balancer.pick(key="k", avoid={owner}).id
    assert alt != owner
    assert balancer.pick(key="k", avoid={owner}).id == alt


def test_unknown_balancer_lists_choices() -> None:
    with pytest.raises(ValueError, match="peak_ewma"):
        make_balancer("fastest")


def test_update_keeps_state_of_remaining_instances() -> None:
    balancer = build("least_outstanding")
    balancer.update(instances(3))
    inst = balancer.pick(avoid={"i1", "i2"})
    balancer.update(instances(3)[::-1])
    assert balancer.pending(inst.id) == 1


ops = st.lists(
    st.tuples(st.sampled_from(["pick", "report", "update"]), st.integers(0, 50)), max_size=80
)


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(NAMES), script=ops, avoid=st.sets(st.integers(0, 6)))
def test_invariants(name: str, script: list[tuple[str, int]], avoid: set[int]) -> None:
    """Picks come from the current list and avoid set; pending never goes negative."""
    balancer = build(name)
    current = instances(7)
    balancer.update(current)
    outstanding: list[Instance] = []
    avoid_ids = {f"i{k}" for k in avoid}
    for op, arg in script:
        if op == "pick":
            allowed = [i for i in current if i.id not in avoid_ids]
            if not allowed:
                with pytest.raises(NoHealthyInstances):
                    balancer.pick(key=str(arg), avoid=avoid_ids)
                continue
            inst = balancer.pick(key=str(arg), avoid=avoid_ids)
            assert inst in allowed
            outstanding.append(inst)
        elif op == "report" and outstanding:
            balancer.report(outstanding.pop(arg % len(outstanding)), arg % 2 == 0, arg / 100)
        elif op == "update":
            current = instances(7)[: 1 + arg % 7]
            balancer.update(current)
        for inst in balancer.instances:
            assert balancer.pending(inst.id) >= 0
