"""Fixtures for the storage tests: the shared real etcd cluster and a recording mirror."""

from __future__ import annotations

import uuid

import pytest

from waypost.storage import Entry


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
