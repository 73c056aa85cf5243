"""Probes against real local servers: statuses and readable outputs, never exceptions."""

from __future__ import annotations

import pytest

from waypost.catalog import CheckDefinition
from waypost.health.probes import MAX_OUTPUT, http_probe, script_probe, tcp_probe

from ..servers import HealthServer, TcpListener, free_port


@pytest.mark.parametrize(("code", "expected"), [(200, "passing"), (204, "passing"), (429, "warning"), (500, "critical"), (404, "critical"), (301, "critical")])
async def test_http_status_mapping(code: int, expected: str) -> None:
    with HealthServer(status=code, body=b"" if code == 204 else b"hello") as server:
        status, output = await http_probe(CheckDefinition(http=server.url, interval=1))
    assert status == expected
    assert f"HTTP GET {server.url}: {code}" in output


async def test_http_method_headers_body_and_output_cap() -> None:
    with HealthServer(body=b"x" * 10_000) as server:
        defn = CheckDefinition(http=server.url, interval=1, method="POST", body='{"a":1}',
                               header={"X-Probe": ["yes"]})
        status, output = await http_probe(defn)
    assert status == "passing"
    method, path, headers = server.requests[0]
    assert (method, path) == ("POST", "/health")
    assert headers["X-Probe"] == "yes"
    assert output.count("x") <= MAX_OUTPUT


async def test_http_connection_refused_and_timeout() -> None:
    url = f"http://127.0.0.1:{free_port()}/health"
    status, output = await http_probe(CheckDefinition(http=url, interval=1))
    assert status == "critical"
    assert url in output
    listener = TcpListener()  # accepts, never answers
    try:
        url = f"http://127.0.0.1:{listener.port}/"
        status, output = await http_probe(CheckDefinition(http=url, interval=1, timeout=0.2))
    finally:
        listener.close()
    assert (status, output.endswith("timed out after 0.2s")) == ("critical", True)


async def test_tcp_probe() -> None:
    listener = TcpListener()
    try:
        assert (await tcp_probe(CheckDefinition(tcp=f"127.0.0.1:{listener.port}", interval=1)))[0] == "passing"
    finally:
        listener.close()
    status, output = await tcp_probe(CheckDefinition(tcp=f"127.0.0.1:{listener.port}", interval=1))
    assert status == "critical" and "TCP connect" in output


@pytest.mark.parametrize(("code", "expected"), [(0, "passing"), (1, "warning"), (2, "critical")])
async def test_script_probe_exit_codes(code: int, expected: str) -> None:
    status, output = await script_probe(CheckDefinition(args=("sh", "-c", f"echo hi; exit {code}"), interval=1))
    assert (status, output.strip()) == (expected, "hi")


async def test_script_probe_missing_command() -> None:
    status, output = await script_probe(CheckDefinition(args=("/no/such/binary",), interval=1))
    assert status == "critical" and "/no/such/binary" in output
