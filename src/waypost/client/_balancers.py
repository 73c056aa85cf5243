"""Load balancers: pure, synchronous, deterministic state machines.

Every balancer holds the current instance list and per-instance state (requests
in flight, latency estimate). The contract is Finagle's:

    instance = balancer.pick()                 # counts one request in flight
    ...send the request...
    balancer.report(instance, ok, latency)     # ends it and feeds the estimate

`pick(avoid=...)` skips instance IDs the caller must not use (open breakers,
ejected outliers, instances already tried for this request). It is cheap when
`avoid` is empty, which is the common case: the fast paths never build a
filtered list.

Randomness comes from a `random.Random` the caller may seed, time from an
injectable clock, so a test replays exactly. No balancer does I/O or awaits.

Peak EWMA follows Finagle and Linkerd (see docs/client.md for the formula):
the cost takes a slower latency at once and decays toward faster ones with
time constant `tau`; reading the load decays it too, so a host that was slow a
while ago is probed again. Load is `cost * (pending + 1)`, chosen by power of
two random choices.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections.abc import Callable, Collection, Sequence
from typing import Any, ClassVar

from .._clock import MONOTONIC, Clock
from .._exceptions import NoHealthyInstances
from ._instance import Instance

Key = str | bytes | None


class _Endpoint:
    """Per-instance balancer state."""

    __slots__ = ("cost", "instance", "pending", "stamp")

    def __init__(self, instance: Instance, cost: float, stamp: float) -> None:
        self.instance = instance
        self.pending = 0
        self.cost = cost
        self.stamp = stamp


class Balancer:
    """Base class: instance list, in-flight counts, `pick()` and `report()`.

    Args:
        instances: The initial instances.
        rng: Random source; pass `random.Random(seed)` for reproducible picks.
        clock: Time source for latency-aware balancers.
        service: Service name, used in error messages.
    """

    name: ClassVar[str] = "base"

    def __init__(
        self,
        instances: Sequence[Instance] = (),
        *,
        rng: random.Random | None = None,
        clock: Clock | None = None,
        service: str = "",
    ) -> None:
        self.rng = rng or random.Random()
        self.clock = clock or MONOTONIC
        self.service = service
        self._endpoints: list[_Endpoint] = []
        self._by_id: dict[str, _Endpoint] = {}
        self.picks = 0
        self.update(instances)

    @property
    def instances(self) -> tuple[Instance, ...]:
        """The instances currently balanced over."""
        return tuple(e.instance for e in self._endpoints)

    def __len__(self) -> int:
        return len(self._endpoints)

    def update(self, instances: Sequence[Instance]) -> None:
        """Replace the instance list, keeping state of instances that remain."""
        now = self.clock.now()
        endpoints: list[_Endpoint] = []
        for inst in instances:
            old = self._by_id.get(inst.id)
            if old is not None:
                old.instance = inst
                endpoints.append(old)
            else:
                endpoints.append(_Endpoint(inst, self._initial_cost(), now))
        self._endpoints = endpoints
        self._by_id = {e.instance.id: e for e in endpoints}
        self._rebuild()

    def pick(self, key: Key = None, avoid: Collection[str] = ()) -> Instance:
        """Choose an instance and count one request in flight on it.

        Args:
            key: Affinity key; only hashing balancers use it.
            avoid: Instance IDs that must not be chosen.

        Raises:
            NoHealthyInstances: No instance exists, or all are in `avoid`.
        """
        if not self._endpoints:
            raise NoHealthyInstances(
                f"service {self.service!r} has no instances", service=self.service
            )
        endpoint = self._choose(key, avoid) if avoid else self._choose_any(key)
        if endpoint is None:
            raise NoHealthyInstances(
                f"all {len(self._endpoints)} instances of service {self.service!r} are "
                "unavailable (breaker open, ejected or already tried)",
                service=self.service,
            )
        endpoint.pending += 1
        self.picks += 1
        return endpoint.instance

    def report(self, instance: Instance, ok: bool, latency: float) -> None:
        """End one request on `instance` and learn from its outcome.

        Args:
            instance: What `pick()` returned.
            ok: Whether the request succeeded.
            latency: Seconds from send to response (or failure).
        """
        endpoint = self._by_id.get(instance.id)
        if endpoint is None:
            return
        endpoint.pending = max(0, endpoint.pending - 1)
        self._observe(endpoint, ok, latency)

    def release(self, instance: Instance) -> None:
        """End one request on `instance` without an outcome (cancelled)."""
        endpoint = self._by_id.get(instance.id)
        if endpoint is not None:
            endpoint.pending = max(0, endpoint.pending - 1)

    def pending(self, instance_id: str) -> int:
        """Requests in flight on one instance."""
        endpoint = self._by_id.get(instance_id)
        return endpoint.pending if endpoint else 0

    def statistics(self) -> dict[str, Any]:
        """A snapshot of the balancer's state for metrics and debugging."""
        return {
            "balancer": self.name,
            "instances": len(self._endpoints),
            "picks": self.picks,
            "pending": {e.instance.id: e.pending for e in self._endpoints},
        }

    # -- hooks for subclasses -------------------------------------------------

    def _initial_cost(self) -> float:
        return 0.0

    def _rebuild(self) -> None:
        """Recompute derived structures after `update()`."""

    def _observe(self, endpoint: _Endpoint, ok: bool, latency: float) -> None:
        """Learn from one finished request."""

    def _choose_any(self, key: Key) -> _Endpoint | None:
        return self._choose(key, ())

    def _choose(self, key: Key, avoid: Collection[str]) -> _Endpoint | None:
        raise NotImplementedError

    def _allowed(self, avoid: Collection[str]) -> list[_Endpoint]:
        return [e for e in self._endpoints if e.instance.id not in avoid]


class RoundRobin(Balancer):
    """Each instance in turn, skipping avoided ones."""

    name = "round_robin"

    def _rebuild(self) -> None:
        self._next = self.rng.randrange(len(self._endpoints)) if self._endpoints else 0

    def _choose(self, key: Key, avoid: Collection[str]) -> _Endpoint | None:
        n = len(self._endpoints)
        for _ in range(n):
            endpoint = self._endpoints[self._next % n]
            self._next = (self._next + 1) % n
            if endpoint.instance.id not in avoid:
                return endpoint
        return None


class Random(Balancer):
    """A uniformly random instance."""

    name = "random"

    def _choose_any(self, key: Key) -> _Endpoint | None:
        return self._endpoints[self.rng.randrange(len(self._endpoints))]

    def _choose(self, key: Key, avoid: Collection[str]) -> _Endpoint | None:
        allowed = self._allowed(avoid)
        return allowed[self.rng.randrange(len(allowed))] if allowed else None


class LeastOutstanding(Balancer):
    """The instance with the fewest requests in flight; ties broken at random."""

    name = "least_outstanding"

    def _choose(self, key: Key, avoid: Collection[str]) -> _Endpoint | None:
        allowed = self._allowed(avoid) if avoid else self._endpoints
        if not allowed:
            return None
        pending = [e.pending for e in allowed]
        least = min(pending)
        if pending.count(least) == 1:
            return allowed[pending.index(least)]
        ties = [i for i, p in enumerate(pending) if p == least]
        return allowed[ties[self.rng.randrange(len(ties))]]


class Weighted(Balancer):
    """Random in proportion to each instance's `weight` (SRV weight / Weights)."""

    name = "weighted"

    def _rebuild(self) -> None:
        total = 0
        self._cumulative: list[int] = []
        for e in self._endpoints:
            total += max(1, e.instance.weight)
            self._cumulative.append(total)
        self._total = total

    def _choose_any(self, key: Key) -> _Endpoint | None:
        point = self.rng.randrange(self._total)
        return self._endpoints[bisect.bisect_right(self._cumulative, point)]

    def _choose(self, key: Key, avoid: Collection[str]) -> _Endpoint | None:
        allowed = self._allowed(avoid)
        if not allowed:
            return None
        point = self.rng.randrange(sum(max(1, e.instance.weight) for e in allowed))
        for e in allowed:
            point -= max(1, e.instance.weight)
            if point < 0:
                return e
        return allowed[-1]  # pragma: no cover - unreachable


class P2C(Balancer):
    """Power of two choices: the less loaded of two random instances.

    Load is the number of requests in flight; subclasses redefine `_load`.
    """

    name = "p2c"

    def _load(self, endpoint: _Endpoint) -> float:
        return float(endpoint.pending)

    def _choose_any(self, key: Key) -> _Endpoint | None:
        return self._better_of_two(self._endpoints)

    def _choose(self, key: Key, avoid: Collection[str]) -> _Endpoint | None:
        allowed = self._allowed(avoid)
        return self._better_of_two(allowed) if allowed else None

    def _better_of_two(self, endpoints: Sequence[_Endpoint]) -> _Endpoint:
        n = len(endpoints)
        if n == 1:
            return endpoints[0]
        i = self.rng.randrange(n)
        j = self.rng.randrange(n - 1)
        if j >= i:
            j += 1
        a, b = endpoints[i], endpoints[j]
        return a if self._load(a) <= self._load(b) else b


class PeakEwma(P2C):
    """P2C over `cost * (pending + 1)` with a peak-sensitive latency EWMA.

    Args:
        default_rtt: Cost of an instance with no history, seconds (Linkerd: 30 ms).
        tau: Decay time constant of the EWMA, seconds (Finagle/Linkerd: 10 s).
        **kwargs: Passed to `Balancer`.
    """

    name = "peak_ewma"

    def __init__(
        self,
        instances: Sequence[Instance] = (),
        *,
        default_rtt: float = 0.030,
        tau: float = 10.0,
        **kwargs: Any,
    ) -> None:
        self.default_rtt = default_rtt
        self.tau = tau
        super().__init__(instances, **kwargs)

    def _initial_cost(self) -> float:
        return self.default_rtt

    def _decay(self, endpoint: _Endpoint, rtt: float) -> None:
        now = self.clock.now()
        elapsed = max(0.0, now - endpoint.stamp)
        endpoint.stamp = now
        if rtt > endpoint.cost:
            endpoint.cost = rtt
            return
        w = math.exp(-elapsed / self.tau)
        endpoint.cost = endpoint.cost * w + rtt * (1.0 - w)

    def _load(self, endpoint: _Endpoint) -> float:
        self._decay(endpoint, 0.0)
        return endpoint.cost * (endpoint.pending + 1)

    def _observe(self, endpoint: _Endpoint, ok: bool, latency: float) -> None:
        self._decay(endpoint, max(0.0, latency))

    def cost(self, instance_id: str) -> float:
        """The current (decayed) latency estimate of one instance, seconds."""
        endpoint = self._by_id[instance_id]
        self._decay(endpoint, 0.0)
        return endpoint.cost

    def statistics(self) -> dict[str, Any]:
        stats = super().statistics()
        stats["cost"] = {e.instance.id: e.cost for e in self._endpoints}
        return stats


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _key_bytes(key: Key, rng: random.Random) -> bytes:
    if key is None:
        return rng.getrandbits(64).to_bytes(8, "big")
    return key.encode() if isinstance(key, str) else key


class RingHash(Balancer):
    """Consistent hashing on a ring of virtual nodes (sticky by `key`).

    Args:
        replicas: Virtual nodes per unit of weight.
        **kwargs: Passed to `Balancer`.
    """

    name = "ring_hash"

    def __init__(
        self, instances: Sequence[Instance] = (), *, replicas: int = 160, **kwargs: Any
    ) -> None:
        self.replicas = replicas
        super().__init__(instances, **kwargs)

    def _rebuild(self) -> None:
        ring: list[tuple[int, int]] = []
        for index, e in enumerate(self._endpoints):
            vnodes = self.replicas * max(1, e.instance.weight)
            base = e.instance.id.encode()
            ring.extend((_hash64(base + b"#%d" % v), index) for v in range(vnodes))
        ring.sort()
        self._points = [point for point, _ in ring]
        self._owners = [owner for _, owner in ring]

    def _choose(self, key: Key, avoid: Collection[str]) -> _Endpoint | None:
        start = bisect.bisect_left(self._points, _hash64(_key_bytes(key, self.rng)))
        size = len(self._points)
        seen: set[int] = set()
        for step in range(size):
            owner = self._owners[(start + step) % size]
            if owner in seen:
                continue
            endpoint = self._endpoints[owner]
            if endpoint.instance.id not in avoid:
                return endpoint
            seen.add(owner)
            if len(seen) == len(self._endpoints):
                break
        return None


class Maglev(Balancer):
    """Maglev consistent hashing: a prime-sized lookup table (sticky by `key`).

    Args:
        table_size: A prime; Envoy uses 65537. Larger moves fewer keys on change.
        **kwargs: Passed to `Balancer`.
    """

    name = "maglev"

    def __init__(
        self, instances: Sequence[Instance] = (), *, table_size: int = 65537, **kwargs: Any
    ) -> None:
        self.table_size = table_size
        super().__init__(instances, **kwargs)

    def _rebuild(self) -> None:
        m = self.table_size
        n = len(self._endpoints)
        self._table: list[int] = []
        if n == 0:
            return
        offsets, skips = [], []
        for e in self._endpoints:
            name = e.instance.id.encode()
            offsets.append(_hash64(b"o" + name) % m)
            skips.append(_hash64(b"s" + name) % (m - 1) + 1)
        self._table = _maglev_fill(m, offsets, skips)

    def _choose(self, key: Key, avoid: Collection[str]) -> _Endpoint | None:
        slot = _hash64(_key_bytes(key, self.rng)) % self.table_size
        for step in range(len(self._endpoints) * 4):
            endpoint = self._endpoints[self._table[(slot + step * 7919) % self.table_size]]
            if endpoint.instance.id not in avoid:
                return endpoint
        allowed = self._allowed(avoid)
        return allowed[slot % len(allowed)] if allowed else None


def _maglev_fill(m: int, offsets: list[int], skips: list[int]) -> list[int]:
    """Fill the Maglev table: each backend claims slots along its permutation."""
    n = len(offsets)
    table = [-1] * m
    nexts = [0] * n
    filled = 0
    while True:
        for i in range(n):
            c = (offsets[i] + nexts[i] * skips[i]) % m
            while table[c] >= 0:
                nexts[i] += 1
                c = (offsets[i] + nexts[i] * skips[i]) % m
            table[c] = i
            nexts[i] += 1
            filled += 1
            if filled == m:
                return table


BALANCERS: dict[str, Callable[..., Balancer]] = {
    cls.name: cls
    for cls in (RoundRobin, Random, LeastOutstanding, Weighted, P2C, PeakEwma, RingHash, Maglev)
}


def make_balancer(name: str | Balancer, **kwargs: Any) -> Balancer:
    """Build a balancer by name (`round_robin`, `random`, `least_outstanding`,
    `weighted`, `p2c`, `peak_ewma`, `ring_hash`, `maglev`), or pass one through.

    Args:
        name: A balancer name or an existing balancer.
        **kwargs: Constructor arguments (`rng`, `clock`, `service`, ...).

    Raises:
        ValueError: The name is unknown.
    """
    if isinstance(name, Balancer):
        return name
    try:
        factory = BALANCERS[name.replace("-", "_")]
    except KeyError:
        known = ", ".join(sorted(BALANCERS))
        raise ValueError(f"unknown balancer {name!r}; choose one of: {known}") from None
    return factory(**kwargs)
