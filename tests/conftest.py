"""Shared fixtures: a real agent process per session (dev store) and per test (sqlite)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

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
def sqlite_agent(tmp_path: Path) -> Iterator[AgentProcess]:
    """A fresh agent on a sqlite store in tmp_path (restartable: see `.data_dir`)."""
    proc = AgentProcess(
        "--data-dir", str(tmp_path / "data"), "--http", "127.0.0.1:0", "--dns", "off", "--node", "n1"
    ).start()
    yield proc
    proc.stop()


@pytest.fixture
def unique() -> str:
    """A service name no other test uses on the shared agent."""
    return f"svc{next(_names)}"
