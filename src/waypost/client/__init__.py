"""waypost's client library: discovery, balancing, resilience, registration.

Layers, each usable alone (see docs/client.md):

    sources (agent HTTP long-poll, DNS, static) -> cache -> Router
    (balancer + breakers + outlier ejection) -> transport (retries, budget,
    timeouts, hedging) -> AsyncServiceClient / httpx
"""

from __future__ import annotations

from .._clock import Clock, FakeClock, MonotonicClock
from ._asgi import RegisteredApp, lifespan, with_registration
from ._balancers import (
    P2C,
    Balancer,
    LeastOutstanding,
    Maglev,
    PeakEwma,
    Random,
    RingHash,
    RoundRobin,
    Weighted,
    make_balancer,
)
from ._breaker import BreakerPolicy, BreakerState, CircuitBreaker
from ._cache import CacheEntry, InstanceCache
from ._checks import HttpCheck, TcpCheck, TtlCheck
from ._discovery import AsyncDiscovery, Discovery
from ._instance import Instance
from ._outlier import OutlierDetector, OutlierPolicy
from ._policy import ClientOptions, HedgePolicy, RetryPolicy
from ._registration import Registration
from ._retry import RetryBudget
from ._router import Router
from ._service_client import AsyncServiceClient, ServiceClient
from ._sources import Answer, Source, source_from_url
from ._transport import AsyncTransport, Transport

__all__ = [
    "P2C",
    "Answer",
    "AsyncDiscovery",
    "AsyncServiceClient",
    "AsyncTransport",
    "Balancer",
    "BreakerPolicy",
    "BreakerState",
    "CacheEntry",
    "CircuitBreaker",
    "ClientOptions",
    "Clock",
    "Discovery",
    "FakeClock",
    "HedgePolicy",
    "HttpCheck",
    "Instance",
    "InstanceCache",
    "LeastOutstanding",
    "Maglev",
    "MonotonicClock",
    "OutlierDetector",
    "OutlierPolicy",
    "PeakEwma",
    "Random",
    "RegisteredApp",
    "Registration",
    "RetryBudget",
    "RetryPolicy",
    "RingHash",
    "RoundRobin",
    "Router",
    "ServiceClient",
    "Source",
    "TcpCheck",
    "Transport",
    "TtlCheck",
    "Weighted",
    "lifespan",
    "make_balancer",
    "source_from_url",
    "with_registration",
]
