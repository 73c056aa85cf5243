"""The Node.js `consul` package's watch() across a kill -9 of the agent.

Consul's clients watch with blocking queries and retry with backoff when the
agent goes away; when it is back (same data dir, same address) the watch must
carry on: no change lost, no wrong answer, and no need to restart the app.
"""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from ..agentproc import AgentProcess
from ..servers import free_port

NODE_DIR = Path(__file__).parent.parent / "node"
EVENT_TIMEOUT = 30.0


def _agent(data_dir: Path, port: int) -> AgentProcess:
    return AgentProcess(
        "--data-dir", str(data_dir), "--http", f"127.0.0.1:{port}", "--dns", "off", "--node", "n1"
    ).start()  # fmt: skip


def _register(agent: AgentProcess, sid: str) -> None:
    body = {"Name": "crash-web", "ID": sid, "Port": 8080}
    response = httpx.put(f"{agent.http_url}/v1/agent/service/register", json=body, timeout=10)
    assert response.status_code == 200, response.text


class Events:
    """The JSON lines the watch script prints, read on a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[dict[str, object]] = queue.Queue()
        self.seen: list[dict[str, object]] = []
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.put(json.loads(line))

    def until_change(self, ids: list[str]) -> None:
        deadline = time.monotonic() + EVENT_TIMEOUT
        while time.monotonic() < deadline:
            try:
                event = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.seen.append(event)
            if event.get("change") == ids:
                return
        pytest.fail(f"the watch never reported {ids}; it saw {self.seen}")


@pytest.mark.skipif(
    shutil.which("node") is None, reason="Node.js is not installed (make test installs it)"
)
def test_node_consul_watch_survives_a_kill_9_of_the_agent(tmp_path: Path) -> None:
    port = free_port()
    agent = _agent(tmp_path, port)
    watcher = subprocess.Popen(
        ["node", "watch_crash.js", str(port), "crash-web"],
        cwd=NODE_DIR,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        events = Events(watcher)
        _register(agent, "a-1")
        events.until_change(["a-1"])
        agent.kill()  # mid long-poll: the watch sees its connection reset
        time.sleep(0.5)  # the watch retries against a closed port meanwhile
        agent = _agent(tmp_path, port)
        _register(agent, "a-2")
        events.until_change(["a-1", "a-2"])  # a-1 survived the crash; a-2 came after it
        assert any("error" in e for e in events.seen), "the crash went unnoticed: no test"
        assert watcher.poll() is None, "the watch gave up"
    finally:
        watcher.kill()
        watcher.wait()
        agent.stop()
