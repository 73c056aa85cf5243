"""The command line: flags, config file, clear errors, read commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ..agentproc import AgentProcess


def waypost(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "waypost.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--http", "nonsense"], "expected ADDRESS:PORT"),
        (["--http", "127.0.0.1:99999"], "expected ADDRESS:PORT"),
        (["--store", "mongodb://x"], "unknown store URL"),
        (["--config-file", "/no/such/file.toml"], "cannot read config file"),
    ],
)
def test_bad_flags_exit_2_with_a_message(args: list[str], message: str) -> None:
    result = waypost("agent", "--dns", "off", *args)
    assert result.returncode == 2
    assert message in result.stderr


def test_bad_config_files(tmp_path: Path) -> None:
    for text, message in (
        ("http = ", "not valid TOML"),
        ('colour = "blue"', "unknown field"),
        ("dev = 3", "Expected `bool`"),
    ):
        path = tmp_path / "c.toml"
        path.write_text(text)
        result = waypost("agent", "--config-file", str(path))
        assert result.returncode == 2, result.stderr
        assert message in result.stderr


def test_port_in_use_is_a_clear_error(agent: AgentProcess) -> None:
    result = waypost("agent", "--dev", "--dns", "off", "--http", f"127.0.0.1:{agent.http_port}")
    assert result.returncode == 2
    assert "cannot listen on" in result.stderr


def test_config_file_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        'dev = true\nnode = "from-file"\ndatacenter = "east"\ndns = "off"\nhttp = "127.0.0.1:1"\n'
    )
    agent = AgentProcess(
        "--config-file", str(path), "--http", "127.0.0.1:0", "--dns", "off"
    ).start()
    try:
        with agent.client() as http:
            config = http.get("/v1/agent/self").json()["Config"]
        assert (config["NodeName"], config["Datacenter"]) == ("from-file", "east")
        assert len(config["NodeID"]) == 36  # a UUID, as Consul gives
    finally:
        assert agent.stop() == 0


def test_services_and_members_tables(agent: AgentProcess, unique: str) -> None:
    with agent.client() as http:
        http.put(
            "/v1/agent/service/register",
            json={"Name": unique, "ID": f"{unique}-1", "Check": {"TTL": "1m", "Status": "passing"}},
        )
    out = waypost("services", "--http-addr", agent.http_url).stdout
    line = next(row for row in out.splitlines() if row.startswith(unique + " "))
    assert line.split() == [unique, "1", "1", "0", "0"]
    members = waypost("members", "--http-addr", agent.http_url).stdout
    assert "test-node" in members and "alive" in members


def test_read_command_against_no_agent() -> None:
    result = waypost("services", "--http-addr", "http://127.0.0.1:1")
    assert result.returncode == 2
    assert "cannot reach the agent" in result.stderr


def test_banner_never_prints_store_credentials() -> None:
    from waypost.agent import AgentConfig

    config = AgentConfig(store="etcds://admin:s3cret@127.0.0.11:2379,127.0.0.12:2379?ca=/ca.pem")
    assert "s3cret" not in config.display_store()
    assert config.display_store() == "etcds://***@127.0.0.11:2379,127.0.0.12:2379?ca=/ca.pem"


def test_demo_spreads_orders_then_survives_a_sigkill() -> None:
    result = waypost("demo", "--seconds", "4", "--rate", "10", timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    before = next(line for line in lines if line.startswith("t= 1s"))
    assert all(f"payment-{k}" in before for k in (1, 2, 3))  # spread across all three
    kill = lines.index("--- SIGKILL payment-3 ---")
    assert all("payment-3" not in line for line in lines[kill + 2 :])  # gone after the kill
    assert lines[-1] == "40 orders, 0 failed"
