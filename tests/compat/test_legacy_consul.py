"""The two older Python Consul clients against a real agent.

python-consul 1.1.0 (the last release; Debian ships an older 0.7.1 as python3-consul)
and its fork python-consul2 0.1.5 each run tests/compat/legacy_consul_client.py in
their own venv (see venvs.py): agent services with HTTP/TCP/TTL checks, TTL
updates, blocking health queries, catalog registration, KV with CAS and locks,
sessions, events, status, and the consistency/dc/token parameters as they send them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ..agentproc import AgentProcess
from .venvs import python_for

SCRIPT = Path(__file__).with_name("legacy_consul_client.py")


@pytest.mark.parametrize("requirement", ["python-consul==1.1.0", "python-consul2==0.1.5"])
def test_legacy_client(agent: AgentProcess, unique: str, requirement: str) -> None:
    python = python_for(requirement)
    host, port = agent.http_url.removeprefix("http://").rsplit(":", 1)
    run = subprocess.run(
        [str(python), str(SCRIPT), host, port, unique],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert run.returncode == 0 and run.stdout.endswith("done\n"), run.stdout + run.stderr
    steps = [line for line in run.stdout.splitlines() if line.startswith("ok ")]
    assert len(steps) == 58, run.stdout  # every step ran, none skipped
