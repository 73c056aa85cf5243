"""What the transports share: policies, outcome classification, per-service state.

Classification decides two things for every attempt:
- *failure* (fed to the balancer, breaker and outlier detector): a transport
  error, a timeout, or a status in `failure_statuses` (500, 502, 503, 504);
- *retryable*: a connection that never got established (nothing was sent, so
  any method is safe to retry), or, for idempotent methods with a replayable
  body only, any transport error or a status in `retry_statuses` (502, 503, 504).
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field

import httpx

from .._clock import Clock
from ._balancers import Balancer, make_balancer
from ._breaker import BreakerPolicy
from ._cache import CacheEntry
from ._instance import Instance
from ._outlier import OutlierPolicy
from ._retry import FAILURE_STATUS, IDEMPOTENT_METHODS, RETRYABLE_STATUS, RetryBudget
from ._router import DEFAULT_BREAKER, DEFAULT_OUTLIER, Router

NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class RetryPolicy:
    """Which requests are retried and how often.

    Attributes:
        attempts: Total attempts including the first (1 disables retries).
        methods: Methods retried after the request may have been sent.
        retry_statuses: Response statuses worth retrying for those methods.
        failure_statuses: Statuses counted as failures of the instance.
    """

    attempts: int = 3
    methods: frozenset[str] = IDEMPOTENT_METHODS
    retry_statuses: frozenset[int] = RETRYABLE_STATUS
    failure_statuses: frozenset[int] = FAILURE_STATUS


@dataclass(frozen=True)
class HedgePolicy:
    """Send a second copy of a slow idempotent request to another instance.

    Attributes:
        delay: Fixed hedge delay, seconds; None to use `percentile`.
        percentile: Hedge after this percentile of recent successful latencies.
        min_samples: Latencies needed before percentile hedging starts.
        min_delay: Lower bound of the percentile delay, seconds.
    """

    delay: float | None = None
    percentile: float = 0.95
    min_samples: int = 50
    min_delay: float = 0.001


@dataclass(frozen=True)
class ClientOptions:
    """Everything a transport needs to build each service's router.

    Attributes:
        balancer: Balancer name (or a `Balancer`, for a single-service client).
        retry: Which requests are retried, how often.
        budget_ratio: Retries allowed per request (retry budget).
        budget_floor: Retries per second always allowed.
        breaker: Circuit breaker policy, None to disable.
        outlier: Outlier ejection policy, None to disable.
        hedge: Hedging policy, None to disable (async only).
        attempt_timeout: Seconds for one attempt (async only).
        total_timeout: Seconds for the whole request, retries included.
        zone: Preferred zone.
        tag: Only use instances with this tag.
        key_header: Header whose value is the hashing balancers' key.
        seed: Seed of the balancer's random source.
        clock: Time source of breakers, ejection and the budget.
        balancer_options: Extra balancer arguments (`tau`, `table_size`, ...).
    """

    balancer: str | Balancer = "peak_ewma"
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    budget_ratio: float = 0.2
    budget_floor: float = 10.0
    breaker: BreakerPolicy | None = DEFAULT_BREAKER
    outlier: OutlierPolicy | None = DEFAULT_OUTLIER
    hedge: HedgePolicy | None = None
    attempt_timeout: float | None = None
    total_timeout: float | None = None
    zone: str | None = None
    tag: str | None = None
    key_header: str | None = None
    seed: int | None = None
    clock: Clock | None = None
    balancer_options: dict[str, object] = field(default_factory=dict)


class Latencies:
    """Recent successful latencies and a cached percentile of them."""

    def __init__(self, size: int = 512) -> None:
        self._window: deque[float] = deque(maxlen=size)
        self._sorted: list[float] = []
        self._dirty = 0

    def add(self, seconds: float) -> None:
        self._window.append(seconds)
        self._dirty += 1

    def percentile(self, q: float) -> float | None:
        if not self._window:
            return None
        if self._dirty >= 32 or not self._sorted:
            self._sorted = sorted(self._window)
            self._dirty = 0
        rank = min(len(self._sorted) - 1, math.ceil(q * len(self._sorted)) - 1)
        return self._sorted[max(0, rank)]

    def __len__(self) -> int:
        return len(self._window)


class ServiceState:
    """One service's router, retry budget and latency history."""

    def __init__(self, service: str, options: ClientOptions) -> None:
        rng = random.Random(options.seed)
        balancer = options.balancer
        if isinstance(balancer, str):
            balancer = make_balancer(
                balancer, rng=rng, clock=options.clock, service=service, **options.balancer_options
            )
        self.router = Router(
            service,
            balancer,
            breaker=options.breaker,
            outlier=options.outlier,
            zone=options.zone,
            rng=rng,
            clock=options.clock,
        )
        self.budget = RetryBudget(options.budget_ratio, options.budget_floor, clock=options.clock)
        self.latencies = Latencies()
        self.version = -1
        self.options = options

    def refresh(self, entry: CacheEntry) -> None:
        """Give the router the cached instances if they changed."""
        if entry.version != self.version:
            self.router.update(entry.instances)
            self.version = entry.version

    def hedge_delay(self) -> float | None:
        """Seconds to wait before hedging, or None when hedging is off or unknown."""
        hedge = self.options.hedge
        if hedge is None:
            return None
        if hedge.delay is not None:
            return hedge.delay
        if len(self.latencies) < hedge.min_samples:
            return None
        value = self.latencies.percentile(hedge.percentile)
        return None if value is None else max(hedge.min_delay, value)

    def pick(self, request: httpx.Request, tried: Collection[str]) -> Instance:
        """Pick an untried instance when one is usable, else any usable one."""
        key = self.key_for(request)
        if tried and len(tried) < len(self.router.balancer):
            try:
                return self.router.pick(key, avoid=tried)
            except Exception:  # every untried instance unusable: allow repeats
                pass
        return self.router.pick(key)

    def key_for(self, request: httpx.Request) -> str | None:
        """The affinity key of a request (from `key_header`), if any."""
        header = self.options.key_header
        return request.headers.get(header) if header else None


def is_failure(options: ClientOptions, response: httpx.Response) -> bool:
    """Whether a response counts against the instance."""
    return response.status_code in options.retry.failure_statuses


def replayable(request: httpx.Request) -> bool:
    """Whether the body can be sent again (bytes, not a one-shot generator)."""
    return isinstance(request.stream, httpx.ByteStream)


def may_retry_error(options: ClientOptions, request: httpx.Request, exc: Exception) -> bool:
    """Whether a failed attempt may be retried."""
    if not replayable(request):
        return False
    if isinstance(exc, NOT_SENT):
        return True
    return request.method in options.retry.methods and isinstance(exc, httpx.TransportError)


def may_retry_response(options: ClientOptions, request: httpx.Request, status: int) -> bool:
    """Whether a response with this status may be retried."""
    return (
        status in options.retry.retry_statuses
        and request.method in options.retry.methods
        and replayable(request)
    )


def may_hedge(options: ClientOptions, request: httpx.Request) -> bool:
    """Whether this request may be sent twice concurrently."""
    return (
        options.hedge is not None
        and request.method in options.retry.methods
        and replayable(request)
    )


def to_instance(request: httpx.Request, instance: Instance) -> httpx.Request:
    """A copy of `request` aimed at one instance (the Host header is kept)."""
    url = request.url.copy_with(host=instance.address, port=instance.port)
    return httpx.Request(
        request.method,
        url,
        headers=request.headers,
        stream=request.stream,
        extensions=request.extensions,
    )


def is_service_host(url: httpx.URL, services: Collection[str] | None) -> bool:
    """Whether a URL's host names a service rather than a real host.

    With `services`, exactly those names. Otherwise a single-label name other
    than `localhost`, without an explicit port: `http://payment/` is the service,
    `http://payment:3000/` (e.g. a docker compose host) is a real address.
    """
    host = url.host
    if services is not None:
        return host in services
    if not host or host == "localhost" or "." in host or ":" in host or url.port is not None:
        return False
    return not host.replace("-", "").isdigit()
