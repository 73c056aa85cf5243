"""Prometheus metrics: request counts and latency, plus every component's statistics()."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .http import Request, Response

if TYPE_CHECKING:
    from ..agent.runtime import Agent

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class _Statistics(Collector):
    """Reads statistics() of the catalog, store and health runner at scrape time."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for component, stats in self.agent.statistics().items():
            for name, value in sorted(stats.items()):
                yield GaugeMetricFamily(
                    f"waypost_{component}_{name}", f"{component} statistic {name}", value=value
                )


class Metrics:
    def __init__(self, agent: Agent) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "waypost_http_requests",
            "HTTP requests answered",
            ["method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "waypost_http_request_seconds",
            "Time to answer an HTTP request (blocking queries included)",
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 300, 600),
        )
        self.registry.register(_Statistics(agent))
        self._children: dict[tuple[str, int], Counter] = {}

    def observe(self, method: str, status: int, seconds: float) -> None:
        child = self._children.get((method, status))
        if child is None:
            child = self._children[(method, status)] = self.requests.labels(method, str(status))
        child.inc()
        self.latency.observe(seconds)

    async def handle(self, req: Request, _: str) -> Response:
        return Response(200, generate_latest(self.registry), [(b"content-type", CONTENT_TYPE)])
