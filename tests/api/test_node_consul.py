"""The Node.js `consul` package (v2), unchanged, against a real agent."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from ..agentproc import AgentProcess

NODE_DIR = Path(__file__).parent.parent / "node"


@pytest.mark.skipif(
    shutil.which("node") is None, reason="Node.js is not installed (make test installs it)"
)
def test_node_consul_client(agent: AgentProcess, unique: str) -> None:
    if not (NODE_DIR / "node_modules" / "consul").is_dir():
        pytest.fail(
            "tests/node/node_modules is missing: run `make test` (it runs npm install there)"
        )
    result = subprocess.run(
        ["node", "compat.js", str(agent.http_port), unique],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["services"] == [f"{unique}-1"]
    assert seen["passing"] == [f"{unique}-1"]
    assert seen["catalog"] == [[f"{unique}-1", 3000]]
    assert seen["watchUpdates"] == [1, 2]
    assert seen["afterFail"] == [f"{unique}-2"]  # -1 failed its TTL check; -2 has no checks
    assert (
        seen["badRequest"].startswith("400")
        and "Port must be between 0 and 65535" in seen["badRequest"]
    )
    assert seen["leader"].endswith(":8300")


@pytest.mark.skipif(
    shutil.which("node") is None, reason="Node.js is not installed (make test installs it)"
)
def test_node_consul_kv_sessions_events_txn(agent: AgentProcess, unique: str) -> None:
    result = subprocess.run(
        ["node", "kv.js", str(agent.http_port), unique, "test-node"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["set"] is True
    assert seen["get"] == [f"{unique}/a", "one", 0]
    assert seen["flags"] == 42
    assert seen["keys"] == [f"{unique}/a", f"{unique}/dir/"]
    assert seen["recurse"] == [f"{unique}/a", f"{unique}/dir/b"]
    assert seen["missing"] is True
    assert (seen["casStale"], seen["casOk"]) == (False, True)
    assert seen["watch"] == [None, "woken"]
    assert seen["info"] == f"{unique}-1"
    assert (seen["acquire"], seen["contended"], seen["holder"]) == (True, False, True)
    assert (seen["renew"], seen["release"], seen["nodeSessions"]) == (True, True, True)
    assert seen["listed"] == 1  # s1 destroyed, s2 still there
    assert seen["fired"] == f"{unique}-deploy"
    assert seen["events"] == [[True, "v2"]]
    assert seen["txn"] == [f"{unique}/t", f"{unique}/a"]
    assert seen["txnConflict"] == 409
    assert seen["t2"] is True  # the failed transaction wrote nothing
    assert (seen["del"], seen["afterDel"]) == (True, True)
