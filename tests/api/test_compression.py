"""gzip on the HTTP API (api/compress.py), as Consul's gziphandler does it:
against a real agent, with real clients that decode gzip (httpx; requests
under py-consul) and over raw sockets for the exact headers, on both the
protocol's fast path and the normal ASGI path."""

from __future__ import annotations

import asyncio
import gzip
import socket
import threading
from collections.abc import Iterator

import consul
import httpx
import pytest
import requests

from waypost.api import compress
from waypost.api.http import Response

from ..agentproc import AgentProcess
from ..wait import until
from .test_fastpath import EMPTY_CHUNKED, Reader, ask, both_paths, connect, counters, request

SERVICE = "gzweb"
GZ = b"Accept-Encoding: gzip\r\n"


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    proc = AgentProcess("--dev", "--http", "127.0.0.1:0", "--dns", "off", "--node", "gz-node")
    proc.start()
    with proc.client() as http:
        for i in range(10):
            body = {
                "Name": SERVICE,
                "ID": f"{SERVICE}-{i}",
                "Port": 8080 + i,
                "Check": {"CheckID": f"{SERVICE}-{i}-ttl", "TTL": "10m", "Status": "passing"},
            }
            http.put("/v1/agent/service/register", json=body).raise_for_status()
    yield proc
    assert proc.stop() == 0, "".join(proc.output)


def split(answer: bytes) -> tuple[dict[bytes, bytes], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")[1:]
    return {k.lower(): v for k, _, v in (ln.partition(b": ") for ln in lines)}, body


@pytest.mark.parametrize(
    ("value", "gzipped"),
    [
        (b"gzip", True),
        (b"gzip, deflate, br, zstd", True),  # httpx
        (b"GZIP", True),
        (b"x-gzip", True),
        (b"*", True),
        (b"deflate, gzip;q=0.8", True),
        (b"gzip, identity;q=0.5", True),
        (b"gzip;q=0", False),
        (b"gzip;q=0.000", False),
        (b"*;q=0", False),
        (b"identity", False),
        (b"gzip;q=0.5, identity", False),  # identity preferred, explicitly
        (b"br, deflate", False),
        (b"gzip;q=banana", False),  # unreadable: plain, which every client reads
        (b"gzip;q=7", False),
        (b"", False),
        (b" ,, ;q=1", False),
    ],
)
def test_accept_encoding_is_read_as_rfc_9110_says(value: bytes, gzipped: bool) -> None:
    assert compress.accepts_gzip([(b"host", b"x"), (b"accept-encoding", value)]) is gzipped


def test_a_body_is_compressed_once_and_kept() -> None:
    body = b'{"Node":"n"}' * 500
    packed = compress.gzipped(body)
    assert gzip.decompress(packed) == body and len(packed) < len(body) // 10
    assert compress.gzipped(bytes(bytearray(body))) is packed  # equal bytes, the kept member


def test_a_body_past_off_loop_is_compressed_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body = (b'{"Node":"n%d"}' % 7) * (compress.OFF_LOOP // 8)
    threads: list[int] = []
    pack = compress.pack

    def recorded(data: bytes) -> bytes:
        threads.append(threading.get_ident())
        return pack(data)

    monkeypatch.setattr(compress, "pack", recorded)
    response = Response(200, body, [])
    asyncio.run(compress.encode_off_loop(response, gzip=True))
    assert gzip.decompress(response.body) == body
    assert (b"content-encoding", b"gzip") in response.headers
    assert threads and threading.get_ident() not in threads  # a worker thread packed it


def test_the_fast_path_gzips_an_answer_past_off_loop_on_a_worker(agent: AgentProcess) -> None:
    """A service of a megabyte and more: the fast path's answer is compressed
    on a worker thread (as the normal path's), to the same bytes; a parked
    query waits for it too."""
    big = f"{SERVICE}-big"
    for i in range(4):  # 4 x 300 KB of meta: past compress.OFF_LOOP (1 MiB)
        meta = {"blob": f"{i}-" + "0123456789abcdef" * 19_000}
        body = {"Name": big, "ID": f"{big}-{i}", "Port": 80, "Meta": meta}
        httpx.put(f"{agent.http_url}/v1/agent/service/register", json=body).raise_for_status()
    target = f"/v1/health/service/{big}"
    before = counters(agent)["http_fast_compressed_off_loop"]
    both_paths(agent, target, "GET", extra=GZ)
    assert counters(agent)["http_fast_compressed_off_loop"] == before + 1
    headers, _ = split(ask(agent, request(target)))
    current = int(headers[b"x-consul-index"])
    with connect(agent) as sock:
        sock.sendall(request(f"{target}?index={current}&wait=5m", extra=GZ + b"\r\n"))
        until(lambda: counters(agent)["http_fast_parked"] == 1)
        body = {"Name": big, "ID": f"{big}-late", "Port": 81}
        httpx.put(f"{agent.http_url}/v1/agent/service/register", json=body).raise_for_status()
        headers, packed = split(Reader(sock).response())
    assert headers[b"content-encoding"] == b"gzip" and int(headers[b"x-consul-index"]) > current
    plain = gzip.decompress(packed)
    assert len(plain) > compress.OFF_LOOP and f'"ID":"{big}-late"'.encode() in plain
    assert counters(agent)["http_fast_compressed_off_loop"] == before + 2
    # Another encoding of that body (Connection: close) reuses its compression.
    ask(agent, request(target, extra=GZ + b"Connection: close\r\n\r\n"))
    assert counters(agent)["http_fast_compressed_off_loop"] == before + 2
    httpx.put(f"{agent.http_url}/v1/agent/service/deregister/{big}-late").raise_for_status()
    for i in range(4):
        httpx.put(f"{agent.http_url}/v1/agent/service/deregister/{big}-{i}").raise_for_status()


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_the_fast_path_gzips_the_normal_paths_bytes(agent: AgentProcess, method: str) -> None:
    target = f"/v1/health/service/{SERVICE}?passing"
    both_paths(agent, target, method, extra=GZ)  # same bytes, and each path counted
    headers, body = split(ask(agent, request(target, method, GZ + b"\r\n")))
    assert headers[b"content-encoding"] == b"gzip"
    assert headers[b"vary"] == b"Accept-Encoding"
    _, plain = split(ask(agent, request(target)))
    if method == "GET":
        assert gzip.decompress(body) == plain and len(body) * 5 < len(plain)
    else:
        assert body == b"" and headers[b"content-length"] == b"0"


@pytest.mark.parametrize(
    "extra",
    [
        b"",
        b"Accept-Encoding: gzip;q=0\r\n",
        b"Accept-Encoding: identity\r\n",
        b"Accept-Encoding: gzip;q=banana\r\n",  # malformed: a plain answer, not an error
    ],
)
@pytest.mark.parametrize("path", ["fast", "normal"])
def test_a_client_that_refuses_gzip_gets_plain_answers(
    agent: AgentProcess, extra: bytes, path: str
) -> None:
    target = f"/v1/health/service/{SERVICE}"
    answer = ask(
        agent, request(target, "GET", extra + (b"\r\n" if path == "fast" else EMPTY_CHUNKED))
    )
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    headers, body = split(answer)
    assert b"content-encoding" not in headers
    assert headers[b"vary"] == b"Accept-Encoding"  # gziphandler sends it on every answer
    assert body.startswith(b'[{"Node":')


def test_httpx_decodes_every_kind_of_answer(agent: AgentProcess) -> None:
    """httpx asks for gzip by default: fast-path reads, normal-path reads,
    /metrics and errors all come gzipped and decode to the plain answers."""
    plain = {"Accept-Encoding": "identity"}
    with httpx.Client(base_url=agent.http_url, timeout=10) as http:
        for target in (f"/v1/health/service/{SERVICE}", "/v1/catalog/services", "/v1/agent/self"):
            packed = http.get(target)
            assert packed.headers["content-encoding"] == "gzip", target
            assert packed.json() == http.get(target, headers=plain).json(), target
        bad = http.get(f"/v1/health/service/{SERVICE}?index=bad")
        assert bad.status_code == 400 and bad.headers["content-encoding"] == "gzip"
        assert "index" in bad.text
        metrics = http.get("/metrics")
        assert metrics.headers["content-encoding"] == "gzip"
        assert "waypost_http_fast_answered" in metrics.text


def test_py_consul_over_requests_gets_gzipped_answers(agent: AgentProcess) -> None:
    c = consul.Consul(host="127.0.0.1", port=agent.http_port)
    encodings: list[str] = []

    def record(resp: requests.Response, *_: object, **__: object) -> None:
        encodings.append(resp.headers.get("content-encoding", ""))

    c.http.session.hooks["response"].append(record)
    _, nodes = c.health.service(SERVICE, passing=True)
    assert sorted(n["Service"]["ID"] for n in nodes) == [f"{SERVICE}-{i}" for i in range(10)]
    _, services = c.catalog.services()
    assert SERVICE in services
    assert encodings == ["gzip", "gzip"]


def test_parked_watchers_each_get_the_encoding_they_asked_for(agent: AgentProcess) -> None:
    """A gzip watcher and a plain one parked on the same question: one change,
    one answer each, in its own encoding (the prebuilt bytes are per encoding)."""
    target = f"/v1/health/service/{SERVICE}"
    current = int(split(ask(agent, request(target)))[0][b"x-consul-index"])
    blocking = f"{target}?index={current}&wait=5m"
    socks: list[socket.socket] = []
    try:
        for extra in (GZ, b"", GZ, b""):
            sock = connect(agent)
            sock.sendall(request(blocking, "GET", extra + b"\r\n"))
            socks.append(sock)
        until(lambda: counters(agent)["http_fast_parked"] == 4)
        body = {"Name": SERVICE, "ID": f"{SERVICE}-late", "Port": 9999}
        httpx.put(f"{agent.http_url}/v1/agent/service/register", json=body).raise_for_status()
        answers = [split(Reader(sock).response()) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    httpx.put(f"{agent.http_url}/v1/agent/service/deregister/{SERVICE}-late")
    plain = answers[1][1]
    assert b'"ID":"gzweb-late"' in plain and answers[3][1] == plain
    for headers, body in answers[0::2]:
        assert headers[b"content-encoding"] == b"gzip" and gzip.decompress(body) == plain
    for headers, _ in answers[1::2]:
        assert b"content-encoding" not in headers
