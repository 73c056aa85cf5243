"""The README's quickstart, run as written.

`make run` is what a user starts with; here its agent is started the same
way (`waypost agent --data-dir ./data --http ... --dns ...`, in a fresh
directory whose `.venv` is this test's virtualenv). Then every `sh` block of
the quickstart runs, in order, in one bash (so `kill %1` finds the job an
earlier block started), and each `text` block after a command block must match
what that block printed: runs of spaces are one space, `...` is anything.
The only change to the commands is the ports: 8500, 8600 and 3000 are never
used by tests, so each becomes a free port (and CONSUL_HTTP_ADDR points the
CLI, whose default is 127.0.0.1:8500, at the agent's).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .agentproc import AgentProcess
from .servers import free_port

README = Path(__file__).resolve().parents[1] / "README.md"
MARK = "=====quickstart-block====="


def quickstart_blocks() -> list[tuple[str, str]]:
    """(kind, text) of each fenced block in the Quickstart section."""
    text = README.read_text()
    section = text[text.index("## Quickstart") :]
    section = section[: section.index("\n## ", 5)]
    return re.findall(r"```(\w+)\n(.*?)```", section, re.DOTALL)


def as_pattern(expected: str) -> re.Pattern[str]:
    parts = [re.escape(" ".join(line.split())) for line in expected.strip().splitlines()]
    return re.compile("\n".join(parts).replace(re.escape("..."), ".*?"), re.DOTALL)


def test_the_readme_quickstart_works_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = {"8500": str(free_port()), "8600": str(free_port()), "3000": str(free_port())}

    def ported(text: str) -> str:
        return re.sub(r"\b(8500|8600|3000)\b", lambda m: ports[m.group(1)], text)

    blocks = quickstart_blocks()
    commands = [(n, ported(text)) for n, (kind, text) in enumerate(blocks) if kind == "sh"]
    assert len(commands) >= 5, "the quickstart's sh blocks were not found"
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)  # what `make run` made
    monkeypatch.chdir(tmp_path)
    agent = AgentProcess(
        "--data-dir",
        "./data",
        "--http",
        f"127.0.0.1:{ports['8500']}",
        "--dns",
        f"127.0.0.1:{ports['8600']}",
    ).start()
    script = "set -e\n" + "".join(f"echo {MARK}{n}\n{text}\n" for n, text in commands)
    script = script.replace(
        "/tmp/payment", str(tmp_path / "payment")
    )  # no shared /tmp between runs
    try:
        env = {**os.environ, "CONSUL_HTTP_ADDR": f"127.0.0.1:{ports['8500']}"}
        run = subprocess.run(
            ["bash", "-c", script + "kill %1 2>/dev/null || true\n"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env=env,
        )
    finally:
        assert agent.stop() == 0
    assert run.returncode == 0, run.stdout + run.stderr
    printed = dict(re.findall(rf"{MARK}(\d+)\n(.*?)(?={MARK}|\Z)", run.stdout, re.DOTALL))
    for n, (kind, expected) in enumerate(blocks):
        if kind == "text":
            got = "\n".join(
                " ".join(line.split()) for line in printed[str(n - 1)].strip().splitlines()
            )
            assert as_pattern(ported(expected)).fullmatch(got), f"block {n}:\n{got}\n!=\n{expected}"
