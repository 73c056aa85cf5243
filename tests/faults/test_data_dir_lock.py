"""One agent per data dir: a second one refuses to start; indexes are never reused.

Two agents on one sqlite file would each hand out the next index from their
own counter (reusing indexes) and each believe its in-memory state is the
store's. The second must exit non-zero at once, naming the directory and the
pid of the agent that holds it, and leave the first alone.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from pathlib import Path

import httpx

from ..agentproc import AgentProcess
from ..wait import until
from .support import ok, start_agent

EXIT_WITHIN = 10.0


def write(http: httpx.Client, sid: str) -> int:
    """Register lock-svc instance `sid`; return the index the write got."""
    ok(http.put("/v1/agent/service/register", json={"Name": "lock-svc", "ID": sid}), sid)
    return int(ok(http.get("/v1/catalog/service/lock-svc"), "read").headers["x-consul-index"])


def read_index(http: httpx.Client) -> int:
    return int(ok(http.get("/v1/catalog/service/lock-svc"), "read").headers["x-consul-index"])


def own_ids(http: httpx.Client) -> set[str]:
    return set(ok(http.get("/v1/agent/services"), "GET /v1/agent/services").json())


def start_second(data: Path, env: dict[str, str]) -> tuple[int | None, str]:
    """Start another agent on `data`; (exit code or None if it is serving, its output)."""
    cmd = [sys.executable, "-m", "waypost.cli.main", "agent", "--data-dir", str(data)]
    cmd += ["--http", "127.0.0.1:0", "--dns", "off", "--grpc", "off", "--node", "n1"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    with contextlib.suppress(AssertionError):  # still running at the deadline: judged below
        until(
            lambda: proc.poll() is not None or any("waypost agent running" in x for x in lines),
            timeout=EXIT_WITHIN,
        )
    code = proc.poll()
    if code is None:
        proc.kill()
        proc.wait()
    reader.join(5)
    return code, "".join(lines)


def restart_and_write(data: Path, seen: list[int], stop: str) -> AgentProcess:
    """Start an agent on `data`, check the index did not go back, write once
    (its index must beat every one in `seen`), then stop it with `stop`."""
    agent = start_agent(data, "n1", dns=False)
    with agent.client() as http:
        before = read_index(http)
        assert before >= max(seen), (
            f"after a restart the read index is {before}, below {max(seen)} seen before"
        )
        assert {f"l-{n}" for n in range(1, len(seen) + 1)} <= own_ids(http), (
            "acknowledged registrations are missing after a restart"
        )
        index = write(http, f"l-{len(seen) + 1}")
    assert index > max(seen), (
        f"a write after the restart got index {index}, not above every index given "
        f"before ({seen}): an index was reused"
    )
    seen.append(index)
    if stop == "sigterm":
        assert agent.stop() == 0, "agent did not stop cleanly:\n" + "".join(agent.output)
    else:
        agent.kill()
    return agent


def test_a_second_agent_on_the_same_data_dir_refuses_to_start(tmp_path: Path) -> None:
    agents: list[AgentProcess] = []
    try:
        first = start_agent(tmp_path, "n1", dns=False)
        agents.append(first)
        with first.client() as http:
            seen = [write(http, "l-1")]

        pid = str(first.proc.pid)  # type: ignore[union-attr]
        code, output = start_second(tmp_path, first.env)
        serving = "waypost agent running" in output
        assert code is not None, (
            f"a second agent on {tmp_path}, which agent pid {pid} holds, "
            + ("started and serves" if serving else f"did not exit within {EXIT_WITHIN:g}s")
            + f":\n{output}"
        )
        assert code != 0, f"the second agent exited with 0:\n{output}"
        names = [str(tmp_path), str(tmp_path.resolve())]
        message = [
            line for line in output.splitlines() if pid in line and any(n in line for n in names)
        ]
        assert message, (
            f"no line of the second agent's output names both the data dir {tmp_path} and "
            f"the pid {pid} of the agent holding it:\n{output}"
        )

        with first.client() as http:
            assert read_index(http) == seen[-1], "the failed start moved the first agent's index"
            seen.append(write(http, "l-2"))
            assert own_ids(http) == {"l-1", "l-2"}
        assert first.proc.poll() is None  # type: ignore[union-attr]
        assert first.stop() == 0, "the first agent did not stop cleanly:\n" + "".join(first.output)

        for stop in ("sigterm", "kill -9"):
            agents.append(restart_and_write(tmp_path, seen, stop))
    finally:
        for agent in agents:
            agent.kill()


def test_the_index_keeps_increasing_across_restarts(tmp_path: Path) -> None:
    agents: list[AgentProcess] = []
    try:
        first = start_agent(tmp_path, "n1", dns=False)
        agents.append(first)
        with first.client() as http:
            seen = [write(http, "l-1")]
        first.kill()
        for stop in ("sigterm", "kill -9", "kill -9", "sigterm", "kill -9"):
            agents.append(restart_and_write(tmp_path, seen, stop))
    finally:
        for agent in agents:
            agent.kill()
