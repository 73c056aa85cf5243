"""Probes against real local servers: statuses and readable outputs, never exceptions."""

from __future__ import annotations

import shutil
import ssl
import subprocess

import pytest

from waypost.catalog import CheckDefinition
from waypost.health.probes import MAX_OUTPUT, grpc_probe, http_probe, script_probe, tcp_probe

from ..servers import HealthServer, TcpListener, free_port


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (200, "passing"),
        (204, "passing"),
        (429, "warning"),
        (500, "critical"),
        (404, "critical"),
        (301, "critical"),
    ],
)
async def test_http_status_mapping(code: int, expected: str) -> None:
    with HealthServer(status=code, body=b"" if code == 204 else b"hello") as server:
        status, output = await http_probe(CheckDefinition(http=server.url, interval=1))
    assert status == expected
    assert f"HTTP GET {server.url}: {code}" in output


async def test_http_method_headers_body_and_output_cap() -> None:
    with HealthServer(body=b"x" * 10_000) as server:
        defn = CheckDefinition(
            http=server.url, interval=1, method="POST", body='{"a":1}', header={"X-Probe": ["yes"]}
        )
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
        assert (await tcp_probe(CheckDefinition(tcp=f"127.0.0.1:{listener.port}", interval=1)))[
            0
        ] == "passing"
    finally:
        listener.close()
    status, output = await tcp_probe(CheckDefinition(tcp=f"127.0.0.1:{listener.port}", interval=1))
    assert status == "critical" and "TCP connect" in output


@pytest.mark.parametrize(("code", "expected"), [(0, "passing"), (1, "warning"), (2, "critical")])
async def test_script_probe_exit_codes(code: int, expected: str) -> None:
    status, output = await script_probe(
        CheckDefinition(args=("sh", "-c", f"echo hi; exit {code}"), interval=1)
    )
    assert (status, output.strip()) == (expected, "hi")


async def test_script_probe_missing_command() -> None:
    status, output = await script_probe(CheckDefinition(args=("/no/such/binary",), interval=1))
    assert status == "critical" and "/no/such/binary" in output


async def test_grpc_health_protocol_against_a_real_grpc_server() -> None:
    grpc = pytest.importorskip("grpc")
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        await servicer.set("payments", health_pb2.HealthCheckResponse.SERVING)
        status, output = await grpc_probe(
            CheckDefinition(grpc=f"127.0.0.1:{port}/payments", interval=1)
        )
        assert (status, output.endswith("SERVING")) == ("passing", True)
        await servicer.set("payments", health_pb2.HealthCheckResponse.NOT_SERVING)
        status, output = await grpc_probe(
            CheckDefinition(grpc=f"127.0.0.1:{port}/payments", interval=1)
        )
        assert (status, "NOT_SERVING" in output) == ("critical", True)
        status, output = await grpc_probe(
            CheckDefinition(grpc=f"127.0.0.1:{port}/unknown", interval=1)
        )
        assert status == "critical" and "NOT_FOUND" in output
    finally:
        await server.stop(None)


async def test_https_check_with_self_signed_cert(tmp_path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    with HealthServer() as server:
        server.server.socket = ctx.wrap_socket(server.server.socket, server_side=True)
        url = f"https://127.0.0.1:{server.port}/health"
        status, output = await http_probe(CheckDefinition(http=url, interval=1, timeout=5))
        assert status == "critical" and "CERTIFICATE_VERIFY_FAILED" in output
        status, output = await http_probe(
            CheckDefinition(http=url, interval=1, timeout=5, tls_skip_verify=True)
        )
        assert status == "passing", output


class _Redirects:
    """/ok answers 200; /to-ok redirects there (302, relative); /loop to itself;
    /see-other answers a POST with 303 to /ok, which must then be fetched with GET."""

    def __enter__(self) -> _Redirects:
        import http.server
        import threading

        seen: list[tuple[str, str]] = []
        self.seen = seen

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                seen.append((self.command, self.path))
                where = {"/to-ok": "/ok", "/loop": "/loop", "/see-other": "/ok"}.get(self.path)
                code = 303 if self.path == "/see-other" else 302
                self.send_response(code if where else 200)
                if where:
                    self.send_header("Location", where)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_http_checks_follow_redirects_as_consul_does() -> None:
    with _Redirects() as server:
        status, output = await http_probe(CheckDefinition(http=f"{server.url}/to-ok", interval=1))
        assert status == "passing", output
        assert f"HTTP GET {server.url}/to-ok: 200 OK" in output
        defn = CheckDefinition(http=f"{server.url}/see-other", interval=1, method="POST", body="x")
        assert (await http_probe(defn))[0] == "passing"
        assert server.seen[-2:] == [("POST", "/see-other"), ("GET", "/ok")]
        status, output = await http_probe(CheckDefinition(http=f"{server.url}/loop", interval=1))
        assert status == "critical" and "stopped after 10 redirects" in output


@pytest.mark.parametrize(
    "change",
    [{"method": "GET /x HTTP/1.1\r\nX: y\r\n\r\nGET"}, {"header": {"X-A": ["1\r\nInjected: yes"]}}],
)
async def test_a_stored_check_with_cr_lf_is_never_sent(change: dict[str, object]) -> None:
    """Registration refuses CR/LF (tests/api/test_hostile.py); a check stored
    before that rule must still not split the probe's request."""
    with HealthServer() as server:
        defn = CheckDefinition(http=server.url, interval=1, **change)  # type: ignore[arg-type]
        status, output = await http_probe(defn)
    assert status == "critical" and "not sent" in output
    assert server.requests == []
