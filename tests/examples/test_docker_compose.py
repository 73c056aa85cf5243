"""examples/docker-compose.yml, run for real: the README's Docker commands as
written, against Debian's docker.io, offline (tests/docker_env.py).

All services up; orders flowing over all three payment replicas;
`kill -s SIGKILL payment-2` fails no order; the agent's health check marks
payment-2 critical. The containers talk only on the compose file's internal
network (no route out); the agent's published port is on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .. import docker_env
from ..servers import free_port

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
COMPOSE = "docker-compose -f examples/docker-compose.yml"


def readme_commands() -> list[str]:
    """The README's Docker Compose commands: up, logs, kill, logs, down."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Docker Compose") :]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block is not None
    lines = [line.strip() for line in block.group(1).splitlines() if line.strip()]
    verbs = [line.removeprefix(COMPOSE).split()[0] for line in lines]
    assert all(line.startswith(COMPOSE) for line in lines) and verbs == [
        "up",
        "logs",
        "kill",
        "logs",
        "down",
    ]
    return lines


@pytest.fixture(scope="module")
def docker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    started = None
    try:
        if not docker_env.daemon_answers():
            started = docker_env.start_daemon(tmp_path_factory.mktemp("dockerd"))
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "waypost-tests"
        yield docker_env.base_image(cache)
    except docker_env.Unavailable as exc:
        pytest.skip(f"Docker cannot run here: {exc}")
    finally:
        if started is not None:
            docker_env.stop_daemon(started)


def test_compose_example_end_to_end(docker: str, tmp_path: Path) -> None:
    docker_env.build_context(REPO, tmp_path, sys.executable)
    env = {
        **os.environ,
        "WAYPOST_BASE_IMAGE": docker,
        "WAYPOST_PIP_ARGS": "--no-index --find-links /src/wheelhouse waypost",
        "WAYPOST_HTTP_PORT": str(free_port()),
        "COMPOSE_PROJECT_NAME": f"waypost-e2e-{os.getpid()}",  # never another run's containers
    }
    up, logs, kill, logs_after, down = readme_commands()

    def sh(command: str, timeout: float = 300) -> str:
        done = subprocess.run(
            command,
            shell=True,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, f"{command}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def order_lines() -> list[str]:
        out = sh(f"{COMPOSE} logs --no-color order")
        return [line.split("|", 1)[1].strip() for line in out.splitlines() if "|" in line]

    try:
        sh(up, timeout=600)
        _wait(
            order_lines,
            lambda lines: all(f"payment-{k}:" in " ".join(lines) for k in (1, 2, 3)),
            120,
        )
        assert "payment-" in sh(logs)
        sh(kill)  # returns once payment-2 has exited (Docker waits for a SIGKILL's exit)
        # Counted once the kill returned: the lines printed while the command
        # ran (seconds of them on a busy machine) still had payment-2 in them.
        killed_at = len(order_lines())
        lines = _wait(order_lines, lambda lines: len(lines) >= killed_at + 12, 60)
        after = lines[killed_at:]
        assert not [line for line in lines if "FAILED" in line], lines
        # A dead instance answers nothing: only after[0], the second the kill
        # came in (printed once it ended), may name payment-2.
        assert all("payment-2" not in line for line in after[1:]), after
        assert all("payment-1" in line or "payment-3" in line for line in after)
        assert "payment-" in sh(logs_after)
        services = _wait(
            lambda: sh(f"{COMPOSE} exec -T agent waypost services"),
            lambda out: re.search(r"payment\s+3\s+2\s+0\s+1", out) is not None,
            60,
        )
        assert "payment" in services
        sh(down)
    finally:
        subprocess.run(
            f"{COMPOSE} down", shell=True, cwd=tmp_path, env=env, capture_output=True, timeout=120
        )


def _wait(read, done, timeout: float):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout}s: {value!r}")
        time.sleep(1)
