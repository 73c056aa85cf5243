"""Shared fixtures: a real agent process and a real etcd cluster for the session,
and unique service names."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from . import etcd_cluster
from .agentproc import AgentProcess

_names = itertools.count()


@pytest.fixture(scope="session")
def agent() -> Iterator[AgentProcess]:
    """One `waypost agent --dev` for the session, HTTP and DNS on free loopback ports.

    Tests that share it must use service names of their own.
    """
    proc = AgentProcess(
        "--dev", "--http", "127.0.0.1:0", "--dns", "127.0.0.1:0", "--node", "test-node"
    ).start()
    yield proc
    assert proc.stop() == 0, "agent did not exit cleanly on SIGTERM:\n" + "".join(proc.output)


@pytest.fixture
def unique() -> str:
    """A service name no other test uses on the shared agent."""
    return f"svc{next(_names)}"


@pytest.fixture(scope="session")
def etcd_session() -> Iterator[etcd_cluster.EtcdCluster]:
    if not etcd_cluster.available():
        pytest.skip(f"etcd is not installed at {etcd_cluster.ETCD} (apt-get install etcd-server)")
    yield etcd_cluster.acquire()
    etcd_cluster.release()


@pytest.fixture
def cluster(etcd_session: etcd_cluster.EtcdCluster) -> Iterator[etcd_cluster.EtcdCluster]:
    """The shared cluster, all members up; restored after a test that killed some."""
    etcd_session.heal()
    yield etcd_session
    etcd_session.heal()
