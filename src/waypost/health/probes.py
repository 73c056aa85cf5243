"""One probe per check type. A probe never raises: every failure is a status
with an output a person can read.

The HTTP probe is a small asyncio protocol around httptools (which uvicorn
already brings) rather than an httpx client: a health check is one request on
a fresh connection, and at a thousand checks a second httpx's per-request
machinery alone would use more than the half core the agent may spend on it.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from functools import cache
from http import HTTPStatus
from urllib.parse import urljoin, urlsplit

import httptools
import msgspec

from ..catalog.model import CheckDefinition

MAX_OUTPUT = 4096
DEFAULT_TIMEOUT = 10.0
MAX_REDIRECTS = 10  # Go's http.Client default, which Consul's HTTP checks use
_REDIRECTS = frozenset({301, 302, 303, 307, 308})

Result = tuple[str, str]  # (status, output)
Probe = Callable[[CheckDefinition], Awaitable[Result]]


def status_for_http(code: int) -> str:
    """Consul's mapping: 2xx passing, 429 Too Many Requests warning, else critical."""
    if 200 <= code < 300:
        return "passing"
    return "warning" if code == 429 else "critical"


@cache
def _ssl_context(verify: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _Response(asyncio.Protocol):
    """Collects a status code and up to MAX_OUTPUT bytes of body."""

    def __init__(self) -> None:
        self.done: asyncio.Future[tuple[int, bytes, str]] = (
            asyncio.get_running_loop().create_future()
        )
        self.parser = httptools.HttpResponseParser(self)
        self.body = bytearray()
        self.code = 0
        self.location = ""

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"malformed HTTP response: {exc}"))

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"location":
            self.location = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.code = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body += body
        if len(self.body) >= MAX_OUTPUT:
            self._finish()

    def on_message_complete(self) -> None:
        self._finish()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.code:
            self._finish()
        else:
            self._fail(exc or ConnectionError("connection closed before a response"))

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result((self.code, bytes(self.body[:MAX_OUTPUT]), self.location))

    def _fail(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


def _http_request(defn: CheckDefinition, host: str, target: str) -> bytes:
    method = defn.method or "GET"
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    names = {name.lower() for name in defn.header}
    if "user-agent" not in names:
        lines.append("User-Agent: Consul Health Check")
    if "accept" not in names:
        lines.append("Accept: text/plain, text/*, */*")
    for name, values in defn.header.items():
        lines.extend(f"{name}: {value}" for value in values)
    body = defn.body.encode()
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    if any(c in line for line in lines for c in "\r\n\x00"):
        # Registration refuses these (definitions.py); a check stored before that
        # rule, or a redirect target, must still not split the request.
        raise ValueError("the check's method, headers or URL hold CR, LF or NUL: not sent")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + body


async def http_probe(defn: CheckDefinition) -> Result:
    """GET (or the check's method) the URL, following redirects as Go's client
    does (up to 10; a 301/302/303 turns a POST into a GET), all within the
    check's one timeout."""
    method = defn.method or "GET"
    where = f"HTTP {method} {defn.http}"
    timeout = defn.timeout or DEFAULT_TIMEOUT
    try:
        async with asyncio.timeout(timeout):
            code, body = await _follow(defn)
    except TimeoutError:
        return "critical", f"{where}: timed out after {timeout:g}s"
    except (OSError, ValueError, ssl.SSLError) as exc:
        return "critical", f"{where}: {exc or type(exc).__name__}"
    reason = HTTPStatus(code).phrase if code in HTTPStatus._value2member_map_ else ""
    text = body.decode("utf-8", "replace")
    return status_for_http(code), f"{where}: {code} {reason} Output: {text}".strip()


async def _follow(defn: CheckDefinition) -> tuple[int, bytes]:
    for _ in range(MAX_REDIRECTS + 1):
        url = urlsplit(defn.http)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http:// or https:// URL: {defn.http}")
        tls = _ssl_context(not defn.tls_skip_verify) if url.scheme == "https" else None
        port = url.port or (443 if tls else 80)
        target = (url.path or "/") + (f"?{url.query}" if url.query else "")
        code, body, location = await _exchange(defn, url.hostname, port, url.netloc, target, tls)
        if code not in _REDIRECTS or not location:
            return code, body
        defn = _redirected(defn, code, urljoin(defn.http, location))
    raise ValueError(f"stopped after {MAX_REDIRECTS} redirects")


def _redirected(defn: CheckDefinition, code: int, url: str) -> CheckDefinition:
    if code in (301, 302, 303) and (defn.method or "GET") not in ("GET", "HEAD"):
        return msgspec.structs.replace(defn, http=url, method="GET", body="")
    return msgspec.structs.replace(defn, http=url)


async def _exchange(
    defn: CheckDefinition,
    host: str,
    port: int,
    netloc: str,
    target: str,
    tls: ssl.SSLContext | None,
) -> tuple[int, bytes, str]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_connection(
        _Response, host, port, ssl=tls, server_hostname=host if tls else None
    )
    try:
        transport.write(_http_request(defn, netloc, target))
        return await protocol.done
    finally:
        transport.close()


async def tcp_probe(defn: CheckDefinition) -> Result:
    host, _, port = defn.tcp.rpartition(":")
    host = host.strip("[]")
    where = f"TCP connect {defn.tcp}"
    if not host or not port.isdigit():
        return "critical", f"{where}: expected host:port"
    timeout = defn.timeout or DEFAULT_TIMEOUT
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, int(port))
    except TimeoutError:
        return "critical", f"{where}: timed out after {timeout:g}s"
    except (OSError, ValueError, OverflowError) as exc:
        return "critical", f"{where}: {exc}"
    writer.close()
    return "passing", f"{where}: Success"


async def script_probe(defn: CheckDefinition) -> Result:
    """Exit 0 passing, 1 warning, anything else critical (Consul's convention)."""
    timeout = defn.timeout or 30.0
    try:
        proc = await asyncio.create_subprocess_exec(
            *defn.args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
    except OSError as exc:
        return "critical", f"cannot run {defn.args[0]!r}: {exc}"
    try:
        async with asyncio.timeout(timeout):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return "critical", f"script timed out after {timeout:g}s and was killed"
    except BaseException:  # cancelled (check removed, agent stopping): leave no child behind
        if proc.returncode is None:
            proc.kill()
            await asyncio.shield(proc.wait())
        raise
    status = {0: "passing", 1: "warning"}.get(proc.returncode or 0, "critical")
    return status, out[:MAX_OUTPUT].decode("utf-8", "replace")


async def grpc_probe(defn: CheckDefinition) -> Result:
    """The standard gRPC health protocol, through grpcio (the `grpc` extra)."""
    try:
        import grpc  # type: ignore[import-untyped]
        from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]
    except ImportError:
        return "critical", "gRPC checks need grpcio: pip install 'waypost[grpc]'"
    target, _, service = defn.grpc.partition("/")
    where = f"gRPC check {defn.grpc}"
    timeout = defn.timeout or DEFAULT_TIMEOUT
    creds = grpc.ssl_channel_credentials() if defn.grpc_use_tls else None
    channel = grpc.aio.secure_channel(target, creds) if creds else grpc.aio.insecure_channel(target)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        return "critical", f"{where}: {exc.code().name}: {exc.details()}"
    finally:
        await channel.close()
    if reply.status == health_pb2.HealthCheckResponse.SERVING:
        return "passing", f"{where}: SERVING"
    return "critical", f"{where}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"


PROBES: dict[str, Probe] = {
    "http": http_probe,
    "tcp": tcp_probe,
    "grpc": grpc_probe,
    "script": script_probe,
}
