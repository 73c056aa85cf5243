"""The two older Python Consul clients against a real agent.

python-consul 1.1.0 (the last release; Debian ships an older 0.7.1 as python3-consul)
and its fork python-consul2 0.1.5 each run tests/compat/legacy_consul_client.py in
their own venv (see venvs.py): agent services with HTTP/TCP/TTL checks, TTL
updates, blocking health queries, catalog registration, KV with CAS and locks,
sessions, events, status, and the consistency/dc parameters as they send them;
then tokens against an agent with ACLs on (legacy_consul_acl.py).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..agentproc import AgentProcess
from .venvs import python_for

SCRIPT = Path(__file__).with_name("legacy_consul_client.py")
ACL_SCRIPT = Path(__file__).with_name("legacy_consul_acl.py")
MGMT = "0e3b9a52-6c1d-4f7e-a8b2-91d4c5e6f703"
CLIENTS = ["python-consul==1.1.0", "python-consul2==0.1.5"]


@pytest.fixture(scope="module")
def acl_agent() -> Iterator[AgentProcess]:
    """Default deny, the management token from the environment (never the command line)."""
    env = {"WAYPOST_ACL_TOKEN_INITIAL_MANAGEMENT": MGMT}
    proc = AgentProcess(
        "--dev", "--http", "127.0.0.1:0", "--dns", "off", "--node", "acl-node",
        "--acl-default-policy", "deny", env=env,
    ).start()  # fmt: skip
    yield proc
    assert proc.stop() == 0, "".join(proc.output)


def run(requirement: str, script: Path, agent: AgentProcess, *args: str) -> list[str]:
    """Run `script` in the client's venv against `agent`; the steps it printed."""
    host, port = agent.http_url.removeprefix("http://").rsplit(":", 1)
    cmd = [str(python_for(requirement)), str(script), host, port, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0 and done.stdout.endswith("done\n"), done.stdout + done.stderr
    return [line for line in done.stdout.splitlines() if line.startswith("ok ")]


@pytest.mark.parametrize("requirement", CLIENTS)
def test_legacy_client(agent: AgentProcess, unique: str, requirement: str) -> None:
    steps = run(requirement, SCRIPT, agent, unique)
    assert len(steps) == 58, steps  # every step ran, none skipped


@pytest.mark.parametrize(("requirement", "count"), list(zip(CLIENTS, (12, 19), strict=True)))
def test_legacy_client_tokens(
    acl_agent: AgentProcess, unique: str, requirement: str, count: int
) -> None:
    # python-consul2 has the ACL API (policy, tokens) too: 7 more steps.
    steps = run(requirement, ACL_SCRIPT, acl_agent, unique, MGMT)
    assert len(steps) == count, steps
