"""The web UI in a real headless Chromium: it lists services and follows changes live."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from ..agentproc import AgentProcess

NODE_DIR = Path(__file__).parent.parent / "node"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.mark.skipif(
    shutil.which("node") is None, reason="Node.js is not installed (make test installs it)"
)
def test_ui_lists_services_and_updates_live(
    agent: AgentProcess, unique: str, tmp_path: Path
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: `make test` installs it (Debian package chromium)")
    with agent.client() as http:
        http.put(
            "/v1/agent/service/register",
            json={
                "Name": unique,
                "ID": f"{unique}-1",
                "Tags": ["blue"],
                "Check": {"TTL": "5m", "Status": "passing"},
            },
        )
        http.put(
            "/v1/agent/service/register",
            json={"Name": unique, "ID": f"{unique}-2", "Check": {"TTL": "5m"}},
        )
    shot = tmp_path / "ui.png"
    result = subprocess.run(
        ["node", "ui.js", agent.http_url, unique, str(shot)],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=90,
        env={"CHROMIUM": CHROMIUM, "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert "test-node" in seen["title"]
    assert seen["before"] == [unique, "2", "1", "0", "1", "blue"]
    assert seen["after"] == [unique, "2", "2", "0", "0", "blue"]
    assert seen["instances"] == [f"{unique}-1", f"{unique}-2"]
    assert shot.stat().st_size > 1000
