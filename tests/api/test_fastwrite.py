"""The write fast path (api/fastwrite.py) against a real agent, over raw sockets.

Which path answered is read from the agent's own counters on /metrics
(`waypost_http_fast_writes`, `waypost_http_fast_write_fallbacks`). The normal
path is reached for the same write by sending its body chunked
(`Transfer-Encoding: chunked`), which the fast path never takes: every
answer of the fast path is compared byte for byte with the normal path's.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..agentproc import AgentProcess
from ..faults.test_health_fail_closed import fill, small_disk  # noqa: F401  (a fixture)
from .test_fastpath import MGMT, Reader, ask, connect

NODE = "fastwrite-node"


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    proc = AgentProcess("--dev", "--http", "127.0.0.1:0", "--dns", "off", "--node", NODE).start()
    yield proc
    assert proc.stop() == 0, "".join(proc.output)


def put(target: str, body: bytes = b"", chunked: bool = False, extra: bytes = b"") -> bytes:
    head = f"PUT {target} HTTP/1.1\r\nHost: test\r\n".encode() + extra
    if chunked:
        chunk = f"{len(body):x}\r\n".encode() + body + b"\r\n" if body else b""
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + chunk + b"0\r\n\r\n"
    return head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


def counts(agent: AgentProcess, token: str = "") -> tuple[float, float]:
    extra = f"X-Consul-Token: {token}\r\n".encode() if token else b""
    answer = ask(agent, f"GET /metrics HTTP/1.1\r\nHost: t\r\n{extra.decode()}\r\n".encode())
    found = dict.fromkeys(("http_fast_writes", "http_fast_write_fallbacks"), 0.0)
    for line in answer.decode().splitlines():
        name, _, value = line.partition(" ")
        if name.removeprefix("waypost_") in found:
            found[name.removeprefix("waypost_")] = float(value)
    return found["http_fast_writes"], found["http_fast_write_fallbacks"]


def both_paths(
    agent: AgentProcess, target: str, body: bytes = b"", extra: bytes = b"", token: str = ""
) -> bytes:
    """The fast path's answer and the normal path's to the same write: the
    same bytes (retried when they straddle a second: the Date differs)."""
    for _ in range(5):
        before = counts(agent, token)
        fast = ask(agent, put(target, body, extra=extra))
        slow = ask(agent, put(target, body, chunked=True, extra=extra))
        after = counts(agent, token)
        assert after[0] == before[0] + 1, f"{target}: not answered by the fast path"
        assert after[1] == before[1] + 1, f"{target}: the chunked one not the normal way"
        if fast == slow:
            return fast
        if fast.split(b"\r\n")[1] == slow.split(b"\r\n")[1]:  # same Date: a real difference
            break
    raise AssertionError(f"{target}:\nfast: {fast!r}\nslow: {slow!r}")


def registration(service_id: str, **more: object) -> bytes:
    body = {"Name": "fw", "ID": service_id, "Port": 8080, **more}
    return json.dumps(body).encode()


TTL = {"CheckID": "fw-ttl", "TTL": "10m"}


@pytest.mark.parametrize(
    ("target", "body", "status"),
    [
        ("/v1/agent/service/register", registration("fw-1", Check=TTL), 200),
        ("/v1/agent/service/register?replace-existing-checks", registration("fw-1"), 200),
        ("/v1/agent/service/register", registration("fw-1", Check=TTL), 200),
        ("/v1/agent/service/register", b'{"Name": "fw", ', 400),  # bad JSON
        ("/v1/agent/service/register", b'{"Name": "fw", "Port": "eighty"}', 400),  # a wrong type
        ("/v1/agent/service/register", registration("fw-2", Port=-1), 400),  # the core's rule
        ("/v1/agent/service/register", b"", 400),  # no body
        ("/v1/agent/service/register?dc=elsewhere", registration("fw-3"), 200),  # local
        ("/v1/agent/check/pass/fw-ttl?note=fine", b"", 200),
        ("/v1/agent/check/warn/fw-ttl", b"", 200),
        ("/v1/agent/check/fail/fw-ttl?note=down", b"", 200),
        ("/v1/agent/check/update/fw-ttl", b'{"Status": "passing", "Output": "ok"}', 200),
        ("/v1/agent/check/update/fw-ttl", b'{"Status": "sideways"}', 400),
        ("/v1/agent/check/pass/no-such-check", b"", 404),
        ("/v1/agent/service/deregister/no-such-service", b"", 404),
    ],
)
def test_answers_are_the_normal_paths_bytes(
    agent: AgentProcess, target: str, body: bytes, status: int
) -> None:
    answer = both_paths(agent, target, body)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer


def test_a_deregistration_is_the_normal_paths_bytes(agent: AgentProcess) -> None:
    for service_id in ("fw-d1", "fw-d2"):
        assert (
            ask(agent, put("/v1/agent/service/register", registration(service_id)))[9:12] == b"200"
        )
    fast = ask(agent, put("/v1/agent/service/deregister/fw-d1"))
    slow = ask(agent, put("/v1/agent/service/deregister/fw-d2", chunked=True))
    assert fast.split(b"\r\n")[0] == b"HTTP/1.1 200 OK"
    assert fast.split(b"\r\n")[2:] == slow.split(b"\r\n")[2:]  # all but the Date
    services = ask(agent, b"GET /v1/agent/services HTTP/1.1\r\nHost: t\r\n\r\n")
    assert b"fw-d1" not in services and b"fw-d2" not in services


def test_a_write_pipelined_before_reads_is_answered_first_and_seen_by_them(
    agent: AgentProcess,
) -> None:
    """One sendall: register, read, deregister, read. The answers come in
    order, and each read sees the write before it."""
    reads = b"GET /v1/agent/service/fw-pipe HTTP/1.1\r\nHost: t\r\n\r\n"
    with connect(agent) as sock:
        sock.sendall(
            put("/v1/agent/service/register", registration("fw-pipe"))
            + reads
            + put("/v1/agent/service/deregister/fw-pipe")
            + reads
        )
        reader = Reader(sock)
        answers = [reader.response() for _ in range(4)]
    assert [a[9:12] for a in answers] == [b"200", b"200", b"200", b"404"], answers
    assert b'"ID":"fw-pipe"' in answers[1]


def test_a_body_split_across_packets_is_collected(agent: AgentProcess) -> None:
    raw = put("/v1/agent/service/register", registration("fw-split"))
    before = counts(agent)
    with connect(agent) as sock:
        for at in range(0, len(raw), 7):  # headers and body dribbled, 7 bytes at a time
            sock.sendall(raw[at : at + 7])
            time.sleep(0.002)
        assert Reader(sock).response().startswith(b"HTTP/1.1 200 OK\r\n")
    assert counts(agent)[0] == before[0] + 1
    assert b"fw-split" in ask(agent, b"GET /v1/agent/services HTTP/1.1\r\nHost: t\r\n\r\n")


@pytest.mark.parametrize(
    ("why", "raw", "status"),
    [
        ("expect", put("/v1/agent/check/pass/fw-no", extra=b"Expect: 100-continue\r\n"), 404),
        ("chunked", put("/v1/agent/service/register", registration("fw-ch"), chunked=True), 200),
        (
            "a body over 64 KiB",
            put("/v1/agent/service/register", registration("fw-big", Meta={"k": "v" * 70_000})),
            200,
        ),
    ],
)
def test_what_it_does_not_take_goes_the_normal_way(
    agent: AgentProcess, why: str, raw: bytes, status: int
) -> None:
    before = counts(agent)
    answer = ask(agent, raw)
    after = counts(agent)
    assert after == (before[0], before[1] + 1), why
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer


def test_a_write_in_flight_at_sigterm_is_answered_then_the_connection_closes() -> None:
    proc = AgentProcess("--dev", "--http", "127.0.0.1:0", "--dns", "off").start()
    try:
        raw = put("/v1/agent/service/register", registration("fw-term"))
        with connect(proc) as sock:
            sock.sendall(raw[:-5])  # headers and most of the body: being collected
            time.sleep(0.3)
            assert proc.proc is not None
            proc.proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            sock.sendall(raw[-5:])
            answer = Reader(sock).response()
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
            assert b"\r\nconnection: close\r\n" in answer
            assert sock.recv(1) == b""  # then closed
    finally:
        assert proc.stop() == 0, "".join(proc.output)


def test_with_access_logging_on_every_write_goes_the_normal_way() -> None:
    proc = AgentProcess("--dev", "--http", "127.0.0.1:0", "--dns", "off", "--log-level", "debug")
    proc.start()
    try:
        answer = ask(proc, put("/v1/agent/service/register", registration("fw-logged")))
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert counts(proc) == (0, 1)
        until_logged = time.monotonic() + 5
        while not any("/v1/agent/service/register" in line for line in proc.output):
            assert time.monotonic() < until_logged, "the write was not access-logged"
            time.sleep(0.05)
    finally:
        assert proc.stop() == 0, "".join(proc.output)


def test_a_stalled_body_is_closed_at_the_read_deadline(tmp_path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("http_read_timeout = 0.5\n")
    proc = AgentProcess(
        "--dev", "--config-file", str(config), "--http", "127.0.0.1:0", "--dns", "off"
    ).start()
    try:
        with connect(proc) as sock:
            sock.sendall(put("/v1/agent/service/register", registration("fw-stall"))[:-3])
            started = time.monotonic()
            assert sock.recv(1024) == b""  # closed, unanswered
            assert time.monotonic() - started < 4
        assert b"fw-stall" not in ask(proc, b"GET /v1/agent/services HTTP/1.1\r\nHost: t\r\n\r\n")
    finally:
        assert proc.stop() == 0, "".join(proc.output)


# -- with ACLs on: the same Guard, the same 403 ---------------------------------


@pytest.fixture(scope="module")
def acl_agent() -> Iterator[AgentProcess]:
    env = {"WAYPOST_ACL_TOKEN_INITIAL_MANAGEMENT": MGMT}
    proc = AgentProcess(
        "--dev", "--http", "127.0.0.1:0", "--dns", "off", "--acl-default-policy", "deny", env=env
    ).start()
    yield proc
    assert proc.stop() == 0, "".join(proc.output)


@pytest.mark.parametrize(
    ("target", "body"),
    [
        ("/v1/agent/service/register", registration("fw-acl", Check=TTL)),
        ("/v1/agent/check/pass/fw-ttl", b""),
        ("/v1/agent/service/deregister/fw-acl", b""),
    ],
)
def test_with_acls_a_refusal_and_an_admission_are_the_normal_paths_bytes(
    acl_agent: AgentProcess, target: str, body: bytes
) -> None:
    refused = both_paths(acl_agent, target, body, token=MGMT)
    assert refused.startswith(b"HTTP/1.1 403 Forbidden\r\n"), refused
    allowed = f"X-Consul-Token: {MGMT}\r\n".encode()
    if "deregister" in target:  # the first one deregisters: the second gets the 404
        answer = ask(acl_agent, put(target, body, extra=allowed))
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
        return
    answer = both_paths(acl_agent, target, body, extra=allowed, token=MGMT)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer


def test_connection_close_is_the_normal_paths_bytes(agent: AgentProcess) -> None:
    both_paths(agent, "/v1/agent/service/register", registration("fw-c"), b"Connection: close\r\n")
    with socket.create_connection(("127.0.0.1", agent.http_port), timeout=10) as sock:
        sock.sendall(put("/v1/agent/check/pass/nope", extra=b"Connection: close\r\n"))
        assert b"connection: close" in Reader(sock).response()
        assert sock.recv(1) == b""


def test_fast_writes_are_counted_in_the_request_metrics(agent: AgentProcess) -> None:
    def answered() -> tuple[int, int]:
        text = ask(agent, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").decode()
        ok = re.search(r'(?m)^waypost_http_requests_total\{code="200",method="PUT"\} (\S+)', text)
        seconds = re.search(r"(?m)^waypost_http_request_seconds_count (\S+)", text)
        return int(float(ok.group(1)) if ok else 0), int(float(seconds.group(1)))  # type: ignore[union-attr]

    before = answered()
    assert ask(agent, put("/v1/agent/service/register", registration("fw-m")))[9:12] == b"200"
    after = answered()
    assert after[0] == before[0] + 1
    assert after[1] == before[1] + 2  # the write, and the /metrics read before it


def test_a_write_the_store_refuses_is_the_normal_paths_bytes(small_disk: Path) -> None:  # noqa: F811
    """The data dir on a tmpfs filled to the last byte: the commit fails, and
    both paths give the same error answer."""
    proc = AgentProcess(
        "--data-dir", str(small_disk / "data"), "--http", "127.0.0.1:0", "--dns", "off"
    ).start()
    try:
        filler = fill(small_disk)
        big = registration("fw-full", Meta={f"k{i}": "v" * 500 for i in range(60)})
        answer = both_paths(proc, "/v1/agent/service/register", big)
        assert answer.split(b" ")[1] in (b"500", b"503"), answer
        filler.unlink()
    finally:
        proc.stop()


@pytest.mark.parametrize(
    ("target", "body"),
    [
        ("/v1/agent/service/register", registration("fw-gz")),
        ("/v1/agent/service/register", b'{"Name": "fw", "Port": "eighty"}'),  # a 400 with a body
        ("/v1/agent/check/pass/no-such-check", b""),
    ],
)
def test_gzip_answers_are_the_normal_paths_bytes(
    agent: AgentProcess, target: str, body: bytes
) -> None:
    answer = both_paths(agent, target, body, extra=b"Accept-Encoding: gzip\r\n")
    assert b"\r\nvary: Accept-Encoding\r\n" in answer
    assert (b"\r\ncontent-encoding: gzip\r\n" in answer) == (not answer.endswith(b"\r\n\r\n"))
