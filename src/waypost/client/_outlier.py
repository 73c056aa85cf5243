"""Passive outlier detection (Envoy's model, Envoy's defaults).

Two ways to be ejected:
- consecutive failures: `consecutive_failures` in a row (5);
- success rate: every `interval`, among instances with at least
  `request_volume` calls in the interval, and only if at least
  `min_hosts` such instances exist, eject those whose success rate is below
  `mean - stdev_factor * stdev`.
An ejection lasts `base_ejection * times_ejected`, capped at `max_ejection`.
At most `max_ejected_share` of the instances may be ejected at once (at least
one always may). The panic threshold (use every instance when too few look
healthy) is applied by the router, which sees breakers and ejections together.

Pure and synchronous; expired ejections are dropped lazily when read.
"""

from __future__ import annotations

import math
import statistics as stats
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .._clock import MONOTONIC, Clock


@dataclass(frozen=True)
class OutlierPolicy:
    """Thresholds of the outlier detector (defaults are Envoy's)."""

    consecutive_failures: int = 5
    base_ejection: float = 30.0
    max_ejection: float = 300.0
    max_ejected_share: float = 0.10
    interval: float = 10.0
    min_hosts: int = 5
    request_volume: int = 100
    stdev_factor: float = 1.9


_NONE: frozenset[str] = frozenset()


class _Host:
    __slots__ = ("ejected_until", "failures_in_row", "ok", "times_ejected", "total")

    def __init__(self) -> None:
        self.failures_in_row = 0
        self.times_ejected = 0
        self.ejected_until = 0.0
        self.ok = 0
        self.total = 0


class OutlierDetector:
    """Tracks outcomes per instance ID and ejects outliers.

    Args:
        policy: Thresholds.
        clock: Time source.
    """

    def __init__(self, policy: OutlierPolicy | None = None, clock: Clock | None = None) -> None:
        self.policy = policy or OutlierPolicy()
        self.clock = clock or MONOTONIC
        self._hosts: dict[str, _Host] = {}
        self._ejected: dict[str, float] = {}
        self._interval_start = self.clock.now()
        self.ejections = 0

    def update(self, ids: Iterable[str]) -> None:
        """Track exactly these instance IDs (state of remaining ones is kept)."""
        keep = set(ids)
        self._hosts = {i: self._hosts.get(i) or _Host() for i in keep}
        self._ejected = {i: t for i, t in self._ejected.items() if i in keep}

    def ejected(self) -> frozenset[str]:
        """IDs currently ejected."""
        if not self._ejected:
            return _NONE
        now = self.clock.now()
        for host_id in [i for i, until in self._ejected.items() if until <= now]:
            del self._ejected[host_id]
        return frozenset(self._ejected)

    def record(self, host_id: str, ok: bool) -> None:
        """Record one call's outcome on an instance."""
        host = self._hosts.get(host_id)
        if host is None:
            return
        host.total += 1
        if ok:
            host.ok += 1
            host.failures_in_row = 0
        else:
            host.failures_in_row += 1
            if host.failures_in_row >= self.policy.consecutive_failures:
                self._eject(host_id, host)
        self._maybe_sweep()

    def statistics(self) -> dict[str, Any]:
        """Ejected IDs and the ejection count."""
        return {"ejected": sorted(self.ejected()), "ejections": self.ejections}

    def _capacity(self) -> int:
        return max(1, math.floor(len(self._hosts) * self.policy.max_ejected_share))

    def _eject(self, host_id: str, host: _Host) -> None:
        if host_id in self.ejected() or len(self._ejected) >= self._capacity():
            return
        p = self.policy
        host.times_ejected += 1
        host.failures_in_row = 0
        duration = min(p.max_ejection, p.base_ejection * host.times_ejected)
        self._ejected[host_id] = self.clock.now() + duration
        self.ejections += 1

    def _maybe_sweep(self) -> None:
        now = self.clock.now()
        if now - self._interval_start < self.policy.interval:
            return
        self._interval_start = now
        self._success_rate_sweep()
        for host in self._hosts.values():
            host.ok = host.total = 0

    def _success_rate_sweep(self) -> None:
        p = self.policy
        rates = {i: h.ok / h.total for i, h in self._hosts.items() if h.total >= p.request_volume}
        if len(rates) < p.min_hosts:
            return
        values = list(rates.values())
        floor = stats.fmean(values) - p.stdev_factor * stats.pstdev(values)
        for host_id, rate in sorted(rates.items(), key=lambda item: item[1]):
            if rate < floor:
                self._eject(host_id, self._hosts[host_id])
