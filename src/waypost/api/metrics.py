"""Prometheus metrics: request counts and latency, plus every component's statistics()."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .http import Request, Response

Statistics = Callable[[], Mapping[str, Mapping[str, float]]]
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class _Statistics(Collector):
    """Reads statistics() of the catalog, store and health runner at scrape time."""

    def __init__(self, statistics: Statistics) -> None:
        self.statistics = statistics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for component, stats in self.statistics().items():
            for name, value in sorted(stats.items()):
                yield GaugeMetricFamily(
                    f"waypost_{component}_{name}", f"{component} statistic {name}", value=value
                )


class _RequestCounts(Collector):
    """Requests answered, by method and code: plain ints on the hot path (a
    prometheus_client Counter takes a lock per increment), read at scrape time."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int], int] = {}

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "waypost_http_requests", "HTTP requests answered", labels=["method", "code"]
        )
        for (method, code), count in sorted(self.counts.items()):
            family.add_metric([method, str(code)], count)
        yield family


class _Latency(Collector):
    """The request latency histogram, counted in plain ints on the loop (a
    prometheus_client Histogram takes a lock per bucket and sum update: a
    fortieth of a registration's instructions), exposed as one at scrape time."""

    def __init__(self, name: str, documentation: str, bounds: tuple[float, ...]) -> None:
        self.name, self.documentation, self.bounds = name, documentation, bounds
        self.buckets = [0] * (len(bounds) + 1)  # per bucket (the last: above every bound)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def collect(self) -> Iterator[HistogramMetricFamily]:
        cumulative, rows = 0, []
        labels = (*map(floatToGoString, self.bounds), "+Inf")  # "1.0", as Histogram writes it
        for bound, count in zip(labels, self.buckets, strict=True):
            cumulative += count
            rows.append((bound, cumulative))
        yield HistogramMetricFamily(
            self.name, self.documentation, buckets=rows, sum_value=self.total
        )


class Metrics:
    """Request counts and latency, plus `statistics()`: {component: {name: value}},
    read at every scrape (the runtime passes its components' statistics)."""

    def __init__(self, statistics: Statistics) -> None:
        self.statistics = statistics
        self.registry = CollectorRegistry()
        self.latency = _Latency(
            "waypost_http_request_seconds",
            "Time to answer an HTTP request (blocking queries included)",
            (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 300, 600),
        )
        self.registry.register(self.latency)
        self._requests = _RequestCounts()
        self.registry.register(self._requests)
        self.registry.register(_Statistics(statistics))

    def observe(self, method: str, status: int, seconds: float) -> None:
        counts = self._requests.counts
        key = (method, status)
        counts[key] = counts.get(key, 0) + 1
        latency = self.latency  # _Latency.observe, inlined: once per request
        latency.buckets[bisect.bisect_left(latency.bounds, seconds)] += 1
        latency.total += seconds

    async def handle(self, req: Request, _: str) -> Response:
        return Response(200, generate_latest(self.registry), [(b"content-type", CONTENT_TYPE)])
