"""Fixtures of the client tests: a fake Consul and real backends on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from ._servers import Backend, FakeConsul


@pytest.fixture
def consul() -> Iterator[FakeConsul]:
    server = FakeConsul()
    yield server
    server.close()


@pytest.fixture
def backends() -> Iterator[Callable[[int], list[Backend]]]:
    started: list[Backend] = []

    def make(n: int) -> list[Backend]:
        new = [Backend(f"b{len(started) + k}") for k in range(n)]
        started.extend(new)
        return new

    yield make
    for backend in started:
        backend.close()
