"""The router: one service's balancer, breakers and outlier detector together.

`Router.pick()` is the single decision point for "which instance next":

1. Instances whose breaker is open (or half-open with every probe permit out)
   are avoided. If that is every instance, `CircuitOpen` is raised: the service
   is failing everywhere and hammering it would not help.
2. Ejected outliers are avoided too, unless fewer than `panic_threshold` of the
   instances would be left: then ejections are ignored (Envoy's panic mode), so a
   detector that marks everything bad cannot take the whole service down.
3. With a `zone`, instances of other zones are avoided while at least
   `zone_min_share` of the local zone's instances are usable.
4. The balancer chooses among the rest; the chosen breaker's probe permit is
   claimed.

The expensive-looking parts are cheap: only instances with a non-closed breaker
are looked at (kept in a small dict updated on transitions), so the common case
(everything healthy) costs one balancer pick.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from typing import Any

from .._clock import MONOTONIC, Clock
from .._exceptions import CircuitOpen
from ._balancers import Balancer, Key, make_balancer
from ._breaker import BreakerPolicy, BreakerState, CircuitBreaker
from ._instance import Instance
from ._outlier import OutlierDetector, OutlierPolicy

DEFAULT_BREAKER = BreakerPolicy()
DEFAULT_OUTLIER = OutlierPolicy()


class Router:
    """Health-aware instance selection for one service; pure and synchronous.

    Args:
        service: Service name (for error messages).
        balancer: A balancer name or instance (default `peak_ewma`).
        instances: Initial instances.
        breaker: Breaker policy, or `None` to disable breakers.
        outlier: Outlier policy, or `None` to disable ejection.
        zone: Prefer instances whose `Instance.zone` equals this.
        zone_min_share: Local share that must be usable to keep traffic local.
        panic_threshold: Below this usable share, ignore outlier ejections.
        rng: Random source (seed it for reproducible picks).
        clock: Time source.
    """

    def __init__(
        self,
        service: str,
        balancer: str | Balancer = "peak_ewma",
        instances: Sequence[Instance] = (),
        *,
        breaker: BreakerPolicy | None = DEFAULT_BREAKER,
        outlier: OutlierPolicy | None = DEFAULT_OUTLIER,
        zone: str | None = None,
        zone_min_share: float = 0.5,
        panic_threshold: float = 0.5,
        rng: random.Random | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.service = service
        self.clock = clock or MONOTONIC
        self.balancer = make_balancer(balancer, rng=rng, clock=self.clock, service=service)
        self.breaker_policy = breaker
        self.outlier = OutlierDetector(outlier, self.clock) if outlier else None
        self.zone = zone
        self.zone_min_share = zone_min_share
        self.panic_threshold = panic_threshold
        self._breakers: dict[str, CircuitBreaker] = {}
        self._tripped: set[str] = set()
        self.panics = 0
        self.update(instances)

    @property
    def instances(self) -> tuple[Instance, ...]:
        """Instances currently routed to."""
        return self.balancer.instances

    def update(self, instances: Sequence[Instance]) -> None:
        """Replace the instance list (state of instances that remain is kept).

        Draining instances get no new requests: they leave the balancer, and
        requests already sent to them finish (their reports are ignored).
        """
        instances = [i for i in instances if not i.draining]
        self.balancer.update(instances)
        ids = [i.id for i in instances]
        if self.breaker_policy is not None:
            policy = self.breaker_policy
            self._breakers = {
                i: self._breakers.get(i) or CircuitBreaker(policy, self.clock) for i in ids
            }
            self._tripped &= set(ids)
        if self.outlier is not None:
            self.outlier.update(ids)
        self._local = frozenset(i.id for i in instances if self.zone and i.zone == self.zone)
        self._remote = frozenset(i.id for i in instances if i.id not in self._local)

    def pick(self, key: Key = None, avoid: Collection[str] = ()) -> Instance:
        """Choose an instance for one request and count it in flight.

        Args:
            key: Affinity key for hashing balancers.
            avoid: Extra instance IDs not to use (e.g. already tried).

        Raises:
            CircuitOpen: Every instance's breaker is open.
            NoHealthyInstances: No instance exists, or none is left to try.
        """
        blocked = self._blocked()
        total = len(self.balancer)
        if total and len(blocked) >= total:
            raise CircuitOpen(
                f"every instance of service {self.service!r} has its circuit breaker open",
                service=self.service,
            )
        skip = self._skip(blocked, avoid, total)
        instance = self.balancer.pick(key, skip)
        breaker = self._breakers.get(instance.id)
        if breaker is not None:
            breaker.acquire()
        return instance

    def report(self, instance: Instance, ok: bool, latency: float) -> None:
        """Record the outcome of a request `pick()` sent to `instance`.

        Args:
            instance: The picked instance.
            ok: Whether it succeeded.
            latency: Seconds it took.
        """
        self.balancer.report(instance, ok, latency)
        breaker = self._breakers.get(instance.id)
        if breaker is not None:
            breaker.record(ok)
            if breaker.state is not BreakerState.CLOSED:
                self._tripped.add(instance.id)
        if self.outlier is not None:
            self.outlier.record(instance.id, ok)

    def release(self, instance: Instance) -> None:
        """End a request without an outcome (cancelled, e.g. a losing hedge)."""
        self.balancer.release(instance)
        breaker = self._breakers.get(instance.id)
        if breaker is not None:
            breaker.release()

    def breaker(self, instance_id: str) -> CircuitBreaker | None:
        """The breaker of one instance, if breakers are enabled."""
        return self._breakers.get(instance_id)

    def statistics(self) -> dict[str, Any]:
        """Balancer, breaker and outlier state for metrics."""
        return {
            "service": self.service,
            "balancer": self.balancer.statistics(),
            "breakers": {i: b.state.value for i, b in self._breakers.items()},
            "outlier": self.outlier.statistics() if self.outlier else None,
            "panics": self.panics,
        }

    def _blocked(self) -> set[str]:
        """IDs whose breaker refuses calls now; forgets breakers that closed."""
        if not self._tripped:
            return set()
        blocked: set[str] = set()
        for instance_id in list(self._tripped):
            breaker = self._breakers[instance_id]
            if breaker.state is BreakerState.CLOSED:
                self._tripped.discard(instance_id)
            elif not breaker.available():
                blocked.add(instance_id)
        return blocked

    def _skip(self, blocked: set[str], avoid: Collection[str], total: int) -> Collection[str]:
        ejected = self.outlier.ejected() if self.outlier else frozenset()
        unusable = blocked | ejected if ejected else blocked
        if ejected and total and (total - len(unusable)) / total < self.panic_threshold:
            self.panics += 1
            unusable = blocked
        if self._local and self._remote:
            usable_local = len(self._local - unusable)
            if usable_local and usable_local / len(self._local) >= self.zone_min_share:
                unusable = unusable | self._remote
        if avoid:
            return unusable | set(avoid) if unusable else avoid
        return unusable
