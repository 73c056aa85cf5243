"""Fixtures: the fake Kubernetes API server (see fakeapi.py for why a fake)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .fakeapi import FakeKubeApi


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[FakeKubeApi]:
    """A fresh fake API server over HTTPS, bookmarks every 0.2 s."""
    api = FakeKubeApi(bookmark_interval=0.2).start(tmp_path)
    yield api
    api.stop()
