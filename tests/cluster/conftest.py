"""Fixtures for cluster scenarios: the shared etcd cluster and real agent processes on it."""

from __future__ import annotations

import uuid
from collections.abc import Generator, Iterator
from typing import Protocol

import pytest

from .. import etcd_cluster
from ..agentproc import AgentProcess

LEASE_TTL = 3  # seconds: short, so a dead agent's node turns critical quickly


class AgentFactory(Protocol):
    def __call__(self, node: str, *extra: str) -> AgentProcess: ...


# The agents each test started, by test: their output goes into a failing test's report.
_STARTED: dict[str, list[tuple[str, AgentProcess]]] = {}
LOG_LINES = 60  # the tail of each agent's output that a failure shows


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A cluster test that fails shows the last lines each of its agents
    wrote (a CI run keeps nothing else of them)."""
    report = yield
    if report.when == "call" and report.failed:
        for node, proc in _STARTED.get(item.nodeid, []):
            tail = "".join(proc.output[-LOG_LINES:])
            report.sections.append((f"agent {node}: last {LOG_LINES} lines", tail))
    return report


@pytest.fixture
def store_url(cluster: etcd_cluster.EtcdCluster) -> str:
    """A store URL with a prefix of this test's own (one catalog per test)."""
    return cluster.url(f"/cluster-{uuid.uuid4().hex[:12]}/", lease_ttl=f"{LEASE_TTL}s")


@pytest.fixture
def start_agent(store_url: str, request: pytest.FixtureRequest) -> Iterator[AgentFactory]:
    """Start `waypost agent --store <etcd> --node NAME [EXTRA...]` processes; all
    stopped after the test (their output kept for its report until then)."""
    started = _STARTED.setdefault(request.node.nodeid, [])

    def start(node: str, *extra: str) -> AgentProcess:
        args = ["--store", store_url, "--node", node, "--http", "127.0.0.1:0"]
        proc = AgentProcess(*args, "--dns", "127.0.0.1:0", *extra).start()
        started.append((node, proc))
        return proc

    yield start
    for _, proc in started:
        proc.stop()
    del _STARTED[request.node.nodeid]
