"""Prometheus metrics: request counts and latency, plus every component's statistics()."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

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


class Metrics:
    """Request counts and latency, plus `statistics()`: {component: {name: value}},
    read at every scrape (the runtime passes its components' statistics)."""

    def __init__(self, statistics: Statistics) -> None:
        self.statistics = statistics
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "waypost_http_request_seconds",
            "Time to answer an HTTP request (blocking queries included)",
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 300, 600),
        )
        self._requests = _RequestCounts()
        self.registry.register(self._requests)
        self.registry.register(_Statistics(statistics))

    def observe(self, method: str, status: int, seconds: float) -> None:
        counts = self._requests.counts
        key = (method, status)
        counts[key] = counts.get(key, 0) + 1
        self.latency.observe(seconds)

    async def handle(self, req: Request, _: str) -> Response:
        return Response(200, generate_latest(self.registry), [(b"content-type", CONTENT_TYPE)])
