"""waypost's client library: discovery, balancing, resilience, registration.

Layers, each usable alone (see docs/client.md):

    sources (agent HTTP long-poll, DNS, static) -> cache -> Router
    (balancer + breakers + outlier ejection) -> transport (retries, budget,
    timeouts, hedging) -> AsyncServiceClient / httpx
"""

from __future__ import annotations

from ._balancers import (
    Balancer,
    LeastOutstanding,
    Maglev,
    P2C,
    PeakEwma,
    Random,
    RingHash,
    RoundRobin,
    Weighted,
    make_balancer,
)
from ._breaker import BreakerPolicy, BreakerState, CircuitBreaker
from ._instance import Clock, FakeClock, Instance, MonotonicClock
from ._outlier import OutlierDetector, OutlierPolicy
from ._retry import RetryBudget
from ._router import Router

__all__ = [
    "P2C",
    "Balancer",
    "BreakerPolicy",
    "BreakerState",
    "CircuitBreaker",
    "Clock",
    "FakeClock",
    "Instance",
    "LeastOutstanding",
    "Maglev",
    "MonotonicClock",
    "OutlierDetector",
    "OutlierPolicy",
    "PeakEwma",
    "Random",
    "RetryBudget",
    "RingHash",
    "RoundRobin",
    "Router",
    "Weighted",
    "make_balancer",
]
