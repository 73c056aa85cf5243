"""The commands that talk to an agent, run as a user runs them: `python -m
waypost.cli.main ...` against a real agent process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..agentproc import AgentProcess
from ..servers import HealthServer, free_port
from ..wait import until


def waypost(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_HTTP")}
    return subprocess.run(
        [sys.executable, "-m", "waypost.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**clean, **(env or {})},
    )


def spawn(*args: str) -> subprocess.Popen[str]:
    """`waypost ARGS` left running (watch, events -f), stdout and stderr on one text pipe."""
    return subprocess.Popen(
        [sys.executable, "-m", "waypost.cli.main", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def rows(out: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.strip()}


@pytest.fixture
def empty() -> Iterator[AgentProcess]:
    agent = AgentProcess(
        "--dev", "--http", "127.0.0.1:0", "--dns", "off", "--node", "cli-node"
    ).start()
    yield agent
    assert agent.stop() == 0


def test_services_on_an_empty_catalog_says_so(empty: AgentProcess) -> None:
    result = waypost("services", "--http-addr", empty.http_url)
    assert (result.returncode, result.stdout) == (
        0,
        "no services registered (only the agents' own `consul`)\n",
    )


def test_services_table_with_names_that_need_encoding(empty: AgentProcess) -> None:
    """`q?x` and `pct%41` are looked up as themselves, not as a query or `pctA`."""
    with empty.client() as http:
        for name in ("q?x", "pct%41", "pctA"):
            body = {
                "Name": name,
                "ID": f"{name}-1",
                "Tags": ["v1"],
                "Check": {"TTL": "1m", "Status": "passing"},
            }
            http.put("/v1/agent/service/register", json=body).raise_for_status()
        http.put(
            "/v1/agent/service/register",
            json={"Name": "pctA", "ID": "pctA-2", "Check": {"TTL": "1m"}},
        )
    table = rows(waypost("services", "--http-addr", empty.http_url).stdout)
    assert table["q?x"] == ["q?x", "1", "1", "0", "0", "v1"]
    assert table["pct%41"] == ["pct%41", "1", "1", "0", "0", "v1"]
    assert table["pctA"] == ["pctA", "2", "1", "0", "1", "v1"]


def test_address_from_the_environment_without_a_scheme(empty: AgentProcess) -> None:
    hostport = empty.http_url.removeprefix("http://")
    result = waypost("members", env={"CONSUL_HTTP_ADDR": hostport})
    assert result.returncode == 0, result.stderr
    assert rows(result.stdout)["cli-node"][1:3] == ["127.0.0.1", "alive"]
    flag = waypost("members", "-http-addr", hostport)  # Consul's single-dash spelling too
    assert rows(flag.stdout)["cli-node"][2] == "alive"


def test_the_token_is_sent_from_the_flag_or_the_environment() -> None:
    with HealthServer(body=b"{}") as server:
        waypost(
            "services",
            env={"CONSUL_HTTP_ADDR": f"127.0.0.1:{server.port}", "CONSUL_HTTP_TOKEN": "t-env"},
        )
        waypost("services", "--http-addr", f"127.0.0.1:{server.port}", "--token", "t-flag")
        sent = [headers.get("X-Consul-Token") for _, _, headers in server.requests]
    assert sent == ["t-env", "t-flag"]


def test_a_token_file_wins_over_a_token_as_in_consul(tmp_path: Path) -> None:
    """Consul: a token file (-token-file, else CONSUL_HTTP_TOKEN_FILE) is used
    "even if a Token is configured" (-token or CONSUL_HTTP_TOKEN): an exported
    management token must not override the file a command was given."""
    held = tmp_path / "token"
    held.write_text("t-file\n")
    with HealthServer(body=b"{}") as server:
        addr = f"127.0.0.1:{server.port}"
        waypost(
            "services",
            "--token-file",
            str(held),
            env={"CONSUL_HTTP_ADDR": addr, "CONSUL_HTTP_TOKEN": "t-env"},
        )
        waypost(
            "services",
            "-token",
            "t-flag",
            env={"CONSUL_HTTP_ADDR": addr, "CONSUL_HTTP_TOKEN_FILE": str(held)},
        )
        waypost(
            "services",
            "-token",
            "t-flag",
            env={"CONSUL_HTTP_ADDR": addr, "CONSUL_HTTP_TOKEN": "t-env"},
        )
        sent = [headers.get("X-Consul-Token") for _, _, headers in server.requests]
    assert sent == ["t-file", "t-file", "t-flag"]
    missing = waypost("services", "--http-addr", "127.0.0.1:1", "--token-file", "/nonexistent")
    assert missing.returncode == 2
    assert "cannot read the token file /nonexistent: No such file" in missing.stderr


def test_a_server_that_is_not_an_agent_is_explained() -> None:
    with HealthServer(body=b"<html><body>It works!</body></html>") as server:
        result = waypost("services", "--http-addr", f"127.0.0.1:{server.port}")
    assert result.returncode == 2
    assert (
        "does not answer like a waypost or Consul agent: GET /v1/catalog/services gave 200"
        in result.stderr
    )
    assert "<html>" not in result.stderr


def test_no_agent_is_explained() -> None:
    result = waypost("services", "--http-addr", "127.0.0.1:1")
    assert result.returncode == 2
    assert (
        "cannot reach the agent at http://127.0.0.1:1: connection refused (is the agent running?"
        in result.stderr
    )


def test_register_and_deregister_with_flags(empty: AgentProcess) -> None:
    out = waypost(
        "register",
        "--http-addr",
        empty.http_url,
        "--name",
        "web",
        "--id",
        "web-1",
        "--port",
        "8080",
        "--tag",
        "v1",
        "--meta",
        "zone=a",
        "--check-ttl",
        "30s",
    )
    assert out.stdout == "Registered service: web-1\n", out.stderr
    with empty.client() as http:
        (row,) = http.get("/v1/health/service/web").json()
        assert (row["Service"]["Port"], row["Service"]["Tags"], row["Service"]["Meta"]) == (
            8080,
            ["v1"],
            {"zone": "a"},
        )
        assert row["Checks"][1]["Type"] == "ttl"
        assert (
            waypost("deregister", "--http-addr", empty.http_url, "web-1").stdout
            == "Deregistered service: web-1\n"
        )
        assert http.get("/v1/health/service/web").json() == []
    again = waypost("deregister", "--http-addr", empty.http_url, "web-1")
    assert again.returncode == 2
    assert (
        'refused PUT /v1/agent/service/deregister/web-1: 404 Unknown service ID "web-1"'
        in again.stderr
    )


def test_register_from_a_consul_style_file(empty: AgentProcess, tmp_path: Path) -> None:
    with HealthServer() as server:
        path = tmp_path / "payment.json"
        service = {
            "name": "payment",
            "id": "payment-7",
            "port": server.port,
            "address": "127.0.0.1",
            "check": {"http": server.url, "interval": "1s"},
        }
        path.write_text(json.dumps({"service": service}))
        assert waypost("register", "--http-addr", empty.http_url, str(path)).returncode == 0
        with empty.client() as http:
            until(lambda: http.get("/v1/health/service/payment?passing").json())
        assert (
            waypost("deregister", "--http-addr", empty.http_url, str(path)).stdout
            == "Deregistered service: payment-7\n"
        )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "web"], "give a FILE, or --name and --port"),
        (
            ["--name", "web", "--port", "1", "--check-ttl", "1s", "--check-http", "http://x"],
            "give one check, not both",
        ),
        (
            ["--name", "web", "--port", "1", "--meta", "novalue"],
            "--meta 'novalue': expected KEY=VALUE",
        ),
        (["/no/such.json"], "cannot read /no/such.json"),
    ],
)
def test_register_errors(args: list[str], message: str) -> None:
    result = waypost("register", "--http-addr", "127.0.0.1:1", *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_register_refused_by_the_agent_says_why(empty: AgentProcess) -> None:
    result = waypost("register", "--http-addr", empty.http_url, "--name", "web", "--port", "70000")
    assert result.returncode == 2
    assert "400 Port must be between 0 and 65535" in result.stderr


def test_watch_redraws_on_every_change(empty: AgentProcess) -> None:
    watcher = spawn("watch", "--http-addr", empty.http_url, "--count", "3", "shop")
    assert watcher.stdout is not None
    tables: list[list[str]] = [[]]

    def read_table() -> list[str]:
        while (line := watcher.stdout.readline()) not in ("\n", ""):  # type: ignore[union-attr]
            tables[-1].append(line.rstrip())
        tables.append([])
        return tables[-2]

    try:
        assert read_table()[1] == "no instances of 'shop' registered"
        with empty.client() as http:
            body = {
                "Name": "shop",
                "ID": "shop-1",
                "Address": "10.1.1.1",
                "Port": 80,
                "Check": {"TTL": "1m"},
            }
            http.put("/v1/agent/service/register", json=body).raise_for_status()
            second = read_table()
            assert "shop: 1 instance(s) (1 critical)" in second[0]
            assert second[2].split()[:4] == ["shop-1", "cli-node", "10.1.1.1:80", "critical"]
            http.put("/v1/agent/check/pass/service:shop-1").raise_for_status()
            third = read_table()
            assert "(1 passing)" in third[0] and third[2].split()[3] == "passing"
        assert watcher.wait(10) == 0
    finally:
        watcher.kill()


def test_events_lists_and_follows_the_timeline(empty: AgentProcess) -> None:
    """`waypost events` reads the agent's timeline (/v1/internal/ui/timeline):
    what happened, oldest first; `-f` prints new events as they happen."""
    with empty.client() as http:
        body = {"Name": "beat", "ID": "beat-1", "Check": {"TTL": "1m", "Status": "passing"}}
        http.put("/v1/agent/service/register", json=body).raise_for_status()
        http.put("/v1/agent/check/fail/service:beat-1?note=disk%20full").raise_for_status()
        listed = waypost("events", "--http-addr", empty.http_url, "beat")
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        assert re.search(r"registered\s+beat/beat-1 node=cli-node passing$", lines[0]), lines
        assert lines[1].endswith(
            'check        beat/beat-1 node=cli-node check=service:beat-1 passing -> critical output="disk full"'
        ), lines
        follower = spawn("events", "-f", "--http-addr", empty.http_url, "beat")
        assert follower.stdout is not None
        try:
            for _ in lines:  # what was there already comes first
                follower.stdout.readline()
            http.put(
                "/v1/agent/service/maintenance/beat-1?enable=true&reason=deploy"
            ).raise_for_status()
            assert 'maintenance output="deploy"' in follower.stdout.readline()
        finally:
            follower.kill()
    assert (
        waypost("events", "--http-addr", empty.http_url, "nothing-here").stdout
        == "no events recorded for nothing-here\n"
    )


def test_events_from_something_without_a_timeline_says_so() -> None:
    with HealthServer(status=404, body=b"not found") as server:
        result = waypost("events", "--http-addr", f"127.0.0.1:{server.port}")
    assert result.returncode == 2
    assert "this agent keeps no events" in result.stderr, result.stderr


def test_watch_rides_out_an_agent_restart() -> None:
    port = free_port()
    first = AgentProcess("--dev", "--http", f"127.0.0.1:{port}", "--dns", "off").start()
    with first.client() as http:
        http.put("/v1/agent/service/register", json={"Name": "shop", "ID": "shop-1", "Port": 80})
    watcher = spawn("watch", "--http-addr", f"127.0.0.1:{port}", "--count", "2", "shop")
    assert watcher.stdout is not None
    second = None
    try:
        assert "shop: 1 instance(s)" in watcher.stdout.readline()
        assert first.stop() == 0
        until(lambda: "retrying in 2s" in watcher.stdout.readline(), timeout=30)  # type: ignore[union-attr]
        second = AgentProcess("--dev", "--http", f"127.0.0.1:{port}", "--dns", "off").start()
        rest = watcher.communicate(timeout=30)[0]
        assert "shop: 0 instance(s)" in rest and "no instances of 'shop' registered" in rest
    finally:
        watcher.kill()
        if second is not None:
            second.stop()
