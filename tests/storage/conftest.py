"""Fixtures for the storage tests: the shared real etcd cluster and a recording mirror."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from waypost.storage import Entry

from .. import etcd_cluster


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


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own, so tests never see each other's keys."""
    return f"/test-{uuid.uuid4().hex[:12]}/"


class Mirror:
    """What a catalog does with `apply()`, reduced to a dict, plus a log of calls."""

    def __init__(self) -> None:
        self.keys: dict[str, Entry] = {}
        self.calls: list[tuple[int, list[Entry], bool]] = []

    def __call__(self, index: int, entries: list[Entry], snapshot: bool = False) -> None:
        self.calls.append((index, entries, snapshot))
        if snapshot:
            self.keys = {}
        for entry in entries:
            if entry.value is None:
                self.keys.pop(entry.key, None)
            else:
                self.keys[entry.key] = entry

    @property
    def index(self) -> int:
        return max((c[0] for c in self.calls), default=0)

    def snapshots(self) -> int:
        return sum(1 for c in self.calls if c[2])


@pytest.fixture
def mirror() -> Mirror:
    return Mirror()
