"""Fixtures for cluster scenarios: the shared etcd cluster and real agent processes on it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Protocol

import pytest

from .. import etcd_cluster
from ..agentproc import AgentProcess

LEASE_TTL = 3  # seconds: short, so a dead agent's node turns critical quickly


class AgentFactory(Protocol):
    def __call__(self, node: str, *extra: str) -> AgentProcess: ...


@pytest.fixture
def store_url(cluster: etcd_cluster.EtcdCluster) -> str:
    """A store URL with a prefix of this test's own (one catalog per test)."""
    return cluster.url(f"/cluster-{uuid.uuid4().hex[:12]}/", lease_ttl=f"{LEASE_TTL}s")


@pytest.fixture
def start_agent(store_url: str) -> Iterator[AgentFactory]:
    """Start `waypost agent --store <etcd> --node NAME [EXTRA...]` processes; all
    stopped after the test."""
    started: list[AgentProcess] = []

    def start(node: str, *extra: str) -> AgentProcess:
        args = ["--store", store_url, "--node", node, "--http", "127.0.0.1:0"]
        proc = AgentProcess(*args, "--dns", "127.0.0.1:0", *extra).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
