"""The HTTP fast path (api/fastpath.py) against a real agent, over raw sockets.

Each test tells which path answered from the agent's own counters
(`waypost_http_fast_answered`, `waypost_http_fast_fallbacks` on /metrics). The
normal path is reached for the same request by sending it with an empty
chunked body (`Transfer-Encoding: chunked`, `0\\r\\n\\r\\n`): a GET's body is
ignored by every route here, and the fast path never takes a request with one.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from ..agentproc import AgentProcess
from ..wait import until

SERVICE = "fastweb"
MGMT = "0c1d2e3f-4a5b-4c6d-8e7f-901a2b3c4d5e"
ACL_AGENTS: dict[str, AgentProcess] = {}
EMPTY_CHUNKED = b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"


@pytest.fixture(scope="module")
def fast_agent() -> Iterator[AgentProcess]:
    proc = AgentProcess("--dev", "--http", "127.0.0.1:0", "--dns", "off", "--node", "fast-node")
    proc.start()
    with proc.client() as http:
        for i in range(3):
            body = {
                "Name": SERVICE,
                "ID": f"{SERVICE}-{i}",
                "Port": 8080 + i,
                "Tags": ["v1"] if i else ["v2"],
                "Check": {"CheckID": f"{SERVICE}-{i}-ttl", "TTL": "10m", "Status": "passing"},
            }
            http.put("/v1/agent/service/register", json=body).raise_for_status()
    yield proc
    assert proc.stop() == 0, "".join(proc.output)


def connect(agent: AgentProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", agent.http_port), timeout=10)
    sock.settimeout(10)
    return sock


def request(target: str, method: str = "GET", extra: bytes = b"\r\n") -> bytes:
    return f"{method} {target} HTTP/1.1\r\nHost: test\r\n".encode() + extra


class Reader:
    """Whole HTTP/1.1 responses off one socket, in the order they come."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the agent closed the connection")
        self.buffer += chunk

    def response(self) -> bytes:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, _ = self.buffer.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?im)^content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
        total = len(head) + 4 + length
        while len(self.buffer) < total:
            self._fill()
        answer, self.buffer = self.buffer[:total], self.buffer[total:]
        return answer


def ask(agent: AgentProcess, raw: bytes) -> bytes:
    with connect(agent) as sock:
        sock.sendall(raw)
        return Reader(sock).response()


def counters(agent: AgentProcess) -> dict[str, float]:
    headers = {"X-Consul-Token": MGMT} if agent is ACL_AGENTS.get("agent") else {}
    text = httpx.get(f"{agent.http_url}/metrics", headers=headers, timeout=10).text
    found = re.findall(r"(?m)^waypost_(http_fast_\w+|catalog_parked_queries) (\S+)$", text)
    return {name: float(value) for name, value in found}


def index_of(answer: bytes) -> int:
    return int(re.search(rb"(?im)^x-consul-index: (\d+)", answer).group(1))  # type: ignore[union-attr]


def both_paths(agent: AgentProcess, target: str, method: str = "GET", extra: bytes = b"") -> None:
    """The fast path's answer and the normal path's, for the same request, are
    the same bytes (retried when they straddle a second: the Date differs)."""
    for _ in range(5):
        before = counters(agent)
        fast = ask(agent, request(target, method, extra + b"\r\n"))
        slow = ask(agent, request(target, method, extra + EMPTY_CHUNKED))
        after = counters(agent)
        assert after["http_fast_answered"] == before["http_fast_answered"] + 1, target
        assert after["http_fast_fallbacks"] == before["http_fast_fallbacks"] + 1, target
        if fast == slow:
            return
        if fast.split(b"\r\n")[1] == slow.split(b"\r\n")[1]:  # same Date: a real difference
            break
    assert fast == slow, f"{target}:\nfast: {fast[:600]!r}\nslow: {slow[:600]!r}"


@pytest.mark.parametrize(
    "target",
    [
        f"/v1/health/service/{SERVICE}?passing",
        f"/v1/health/service/{SERVICE}",
        f"/v1/health/service/{SERVICE}?passing=false&tag=v1",
        f"/v1/health/service/{SERVICE}?index=1&wait=5s",
        f"/v1/health/service/{SERVICE}?passing&token=ignored-with-acls-off",
        f"/v1/catalog/service/{SERVICE}",
        f"/v1/catalog/service/{SERVICE}?tag=v2",
        "/v1/health/service/no-such-service",
    ],
)
def test_answers_are_the_normal_paths_bytes(fast_agent: AgentProcess, target: str) -> None:
    both_paths(fast_agent, target)


def test_head_and_connection_close_are_the_normal_paths_bytes(fast_agent: AgentProcess) -> None:
    both_paths(fast_agent, f"/v1/health/service/{SERVICE}?passing", method="HEAD")
    both_paths(fast_agent, f"/v1/health/service/{SERVICE}", extra=b"Connection: close\r\n")


@pytest.mark.parametrize(
    "query",
    [
        "filter=Service.Port%20%3D%3D%208080",
        "node-meta=rack:r1",
        "dc=dc1",
        "stale",
        "consistent",
        "cached",
        "near=_agent",
        "ns=default",
        "index=not-a-number",
        "wait=forever",
        "passing&unknown=1",
    ],
)
def test_every_parameter_it_does_not_know_goes_the_normal_way(
    fast_agent: AgentProcess, query: str
) -> None:
    target = f"/v1/health/service/{SERVICE}?{query}"
    before = counters(fast_agent)
    answer = ask(fast_agent, request(target))
    after = counters(fast_agent)
    assert after["http_fast_fallbacks"] == before["http_fast_fallbacks"] + 1
    assert after["http_fast_answered"] == before["http_fast_answered"]
    expected = httpx.get(f"{fast_agent.http_url}{target}", timeout=10)
    assert answer.split(b" ", 2)[1] == str(expected.status_code).encode()


def test_pipelined_requests_are_answered_in_order(fast_agent: AgentProcess) -> None:
    """A blocking query first, then fast, normal and HEAD requests behind it on
    the same connection: every answer comes in the order asked, the blocked
    one's included, although the later ones could be answered at once."""
    current = index_of(ask(fast_agent, request(f"/v1/health/service/{SERVICE}")))
    with connect(fast_agent) as sock:
        sock.sendall(
            request(f"/v1/health/service/{SERVICE}?index={current}&wait=1s")
            + request(f"/v1/catalog/service/{SERVICE}")
            + request("/v1/agent/self")
            + request(f"/v1/health/service/{SERVICE}?passing", "HEAD")
            + request(f"/v1/health/service/{SERVICE}?tag=v2")
        )
        reader = Reader(sock)
        started = time.monotonic()
        answers = [reader.response() for _ in range(5)]
    assert time.monotonic() - started >= 0.9  # the first waited out its wait=1s
    assert all(a.startswith(b"HTTP/1.1 200 OK\r\n") for a in answers)
    assert b'"ServiceName":"fastweb"' in answers[1]  # catalog rows
    assert b'"Config"' in answers[2]  # /v1/agent/self
    assert answers[3].endswith(b"content-length: 0\r\n\r\n")  # HEAD
    assert answers[4].count(b'"ID":"fastweb-') == 1  # the one v2 instance
    assert b'"ID":"fastweb-0"' in answers[4]


def test_a_parked_query_is_answered_on_a_change(fast_agent: AgentProcess) -> None:
    current = index_of(ask(fast_agent, request(f"/v1/health/service/{SERVICE}")))
    with connect(fast_agent) as sock:
        sock.sendall(request(f"/v1/health/service/{SERVICE}?index={current}&wait=5m"))
        until(lambda: counters(fast_agent)["http_fast_parked"] == 1)
        assert counters(fast_agent)["catalog_parked_queries"] == 1
        body = {"Name": SERVICE, "ID": f"{SERVICE}-late", "Port": 9999}
        httpx.put(f"{fast_agent.http_url}/v1/agent/service/register", json=body).raise_for_status()
        answer = Reader(sock).response()
    assert index_of(answer) > current
    assert b'"ID":"fastweb-late"' in answer
    assert counters(fast_agent)["http_fast_parked"] == 0
    httpx.put(f"{fast_agent.http_url}/v1/agent/service/deregister/{SERVICE}-late")


def test_a_change_waking_150_queries_answers_each_from_two_threads(
    fast_agent: AgentProcess,
) -> None:
    """150 parked queries (above fanout.PARALLEL_MIN; under the 200 a client may open): one batch
    handed to the fan-out's worker (which takes chunks of it beside the loop thread, if it wakes
    in time), and every connection gets its whole answer, then the next."""
    current = index_of(ask(fast_agent, request(f"/v1/health/service/{SERVICE}")))
    before = counters(fast_agent)["http_fast_fanout_batches"]
    socks = [connect(fast_agent) for _ in range(150)]
    try:
        target = f"/v1/health/service/{SERVICE}?index={current}&wait=5m"
        for sock in socks:
            sock.sendall(request(target))
        until(lambda: counters(fast_agent)["http_fast_parked"] == 150)
        body = {"Name": SERVICE, "ID": f"{SERVICE}-fan", "Port": 9997}
        httpx.put(f"{fast_agent.http_url}/v1/agent/service/register", json=body).raise_for_status()
        answers = [Reader(sock).response() for sock in socks]
        indexes = {index_of(a) for a in answers}
        assert len(indexes) == 1 and indexes.pop() > current
        assert all(b'"ID":"fastweb-fan"' in a and a.startswith(b"HTTP/1.1 200") for a in answers)
        # The worker is used where the agent has two cores to run it (os.sched_getaffinity).
        two = len(os.sched_getaffinity(0)) >= 2
        assert counters(fast_agent)["http_fast_fanout_batches"] == before + two
        # Each connection carries its next request as before, and nothing
        # else came before its answer (no answer written twice).
        for sock in socks:
            sock.sendall(request("/v1/health/service/no-such-service"))
            assert Reader(sock).response().endswith(b"\r\n\r\n[]")
    finally:
        for sock in socks:
            sock.close()
        httpx.put(f"{fast_agent.http_url}/v1/agent/service/deregister/{SERVICE}-fan")


def test_queries_parked_in_different_seconds_share_one_answer_per_second(
    fast_agent: AgentProcess,
) -> None:
    """Each parked request keeps the Date of the second it came in (as
    uvicorn's cycle does). Woken together, in whatever order, they get one
    encoded answer per Date, not one each time the Date differs from the
    previous query's."""
    current = index_of(ask(fast_agent, request(f"/v1/health/service/{SERVICE}")))
    target = f"/v1/health/service/{SERVICE}?index={current}&wait=5m"
    socks: list[socket.socket] = []

    def all_parked() -> bool:
        return counters(fast_agent)["http_fast_parked"] == len(socks)

    try:
        for second in range(3):
            for _ in range(20):
                socks.append(connect(fast_agent))
                socks[-1].sendall(request(target))
            until(all_parked)
            if second < 2:
                time.sleep(1.05)  # the next batch in another second: another Date header
        before = counters(fast_agent)["http_fast_answers_built"]
        body = {"Name": SERVICE, "ID": f"{SERVICE}-dates", "Port": 9996}
        httpx.put(f"{fast_agent.http_url}/v1/agent/service/register", json=body).raise_for_status()
        answers = [Reader(sock).response() for sock in socks]
        assert all(b'"ID":"fastweb-dates"' in a for a in answers)
        answer_dates = {a.split(b"\r\n")[1] for a in answers}
        assert len(answer_dates) >= 2, answer_dates  # the test crossed seconds
        built = counters(fast_agent)["http_fast_answers_built"] - before
        assert built <= len(answer_dates) + 1, (built, answer_dates)  # +1: the write's own read
    finally:
        for sock in socks:
            sock.close()
        httpx.put(f"{fast_agent.http_url}/v1/agent/service/deregister/{SERVICE}-dates")


def test_a_parked_query_ends_at_its_wait(fast_agent: AgentProcess) -> None:
    current = index_of(ask(fast_agent, request(f"/v1/health/service/{SERVICE}")))
    started = time.monotonic()
    answer = ask(fast_agent, request(f"/v1/health/service/{SERVICE}?index={current}&wait=1s"))
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 3.0  # wait plus at most wait/16 of jitter and a 50 ms tick
    assert index_of(answer) == current


def test_a_query_that_ended_at_its_wait_is_not_answered_again_by_a_change(
    fast_agent: AgentProcess,
) -> None:
    """Its wait's answer takes it out of its topic's parked queries (grouped
    by answer): the next change writes nothing more on its connection."""
    current = index_of(ask(fast_agent, request(f"/v1/health/service/{SERVICE}")))
    with connect(fast_agent) as sock:
        sock.sendall(request(f"/v1/health/service/{SERVICE}?index={current}&wait=200ms"))
        assert index_of(Reader(sock).response()) == current
        body = {"Name": SERVICE, "ID": f"{SERVICE}-after-wait", "Port": 9996}
        httpx.put(f"{fast_agent.http_url}/v1/agent/service/register", json=body).raise_for_status()
        sock.sendall(request("/v1/health/service/no-such-service"))
        assert Reader(sock).response().endswith(b"\r\n\r\n[]")  # its answer, nothing before it
    httpx.put(f"{fast_agent.http_url}/v1/agent/service/deregister/{SERVICE}-after-wait")


def test_a_closed_connection_releases_its_parked_query(fast_agent: AgentProcess) -> None:
    current = index_of(ask(fast_agent, request(f"/v1/health/service/{SERVICE}")))
    socks = [connect(fast_agent) for _ in range(5)]
    for sock in socks:
        sock.sendall(request(f"/v1/health/service/{SERVICE}?index={current}&wait=5m"))
    until(lambda: counters(fast_agent)["http_fast_parked"] == 5)
    for sock in socks:
        sock.close()
    until(lambda: counters(fast_agent)["http_fast_parked"] == 0)
    assert counters(fast_agent)["catalog_parked_queries"] == 0
    # The topic is still watched properly: a new query on it wakes on a change,
    # and the dropped registration left nothing behind to fire.
    with connect(fast_agent) as sock:
        sock.sendall(request(f"/v1/health/service/{SERVICE}?index={current}&wait=5m"))
        until(lambda: counters(fast_agent)["http_fast_parked"] == 1)
        body = {"Name": SERVICE, "ID": f"{SERVICE}-again", "Port": 9998}
        httpx.put(f"{fast_agent.http_url}/v1/agent/service/register", json=body).raise_for_status()
        assert index_of(Reader(sock).response()) > current
    httpx.put(f"{fast_agent.http_url}/v1/agent/service/deregister/{SERVICE}-again")
    output = "".join(fast_agent.output)
    assert "Traceback" not in output and "Exception in callback" not in output, output


def test_sigterm_answers_parked_queries_at_once() -> None:
    proc = AgentProcess("--dev", "--http", "127.0.0.1:0", "--dns", "off").start()
    try:
        current = index_of(ask(proc, request("/v1/health/service/consul")))
        socks = [connect(proc) for _ in range(3)]
        for sock in socks:
            sock.sendall(request(f"/v1/health/service/consul?index={current}&wait=5m"))
        until(lambda: counters(proc)["http_fast_parked"] == 3)
        started = time.monotonic()
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGTERM)
        answers = [Reader(sock).response() for sock in socks]
        assert time.monotonic() - started < 5
        assert all(a.startswith(b"HTTP/1.1 200 OK\r\n") for a in answers)
        assert all(index_of(a) == current for a in answers)
        for sock in socks:
            sock.close()
    finally:
        assert proc.stop() == 0, "".join(proc.output)


# -- with ACLs on: the same Guard, per request -------------------------------


@pytest.fixture(scope="module")
def acl_agent() -> Iterator[tuple[AgentProcess, dict[str, str]]]:
    """ACLs on, default deny; tokens that read everything, only services, or nothing."""
    env = {"WAYPOST_ACL_TOKEN_INITIAL_MANAGEMENT": MGMT}
    proc = AgentProcess(
        "--dev", "--http", "127.0.0.1:0", "--dns", "off", "--acl-default-policy", "deny", env=env
    ).start()
    ACL_AGENTS["agent"] = proc
    tokens = {}
    with proc.client(headers={"X-Consul-Token": MGMT}) as admin:
        for name, rules in (
            ("all", 'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }'),
            ("services", 'service_prefix "" { policy = "read" }'),
        ):
            admin.put("/v1/acl/policy", json={"Name": name, "Rules": rules}).raise_for_status()
            made = admin.put("/v1/acl/token", json={"Policies": [{"Name": name}]})
            tokens[name] = made.raise_for_status().json()["SecretID"]
        body = {"Name": SERVICE, "ID": f"{SERVICE}-1", "Port": 8080}
        admin.put("/v1/agent/service/register", json=body).raise_for_status()
    yield proc, tokens
    ACL_AGENTS.clear()
    assert proc.stop() == 0, "".join(proc.output)


@pytest.mark.parametrize("who", ["all", "services", "anonymous"])
def test_with_acls_answers_are_the_normal_paths_bytes(
    acl_agent: tuple[AgentProcess, dict[str, str]], who: str
) -> None:
    """The token's answer, filtered and flagged as the normal path filters it."""
    proc, tokens = acl_agent
    extra = f"X-Consul-Token: {tokens[who]}\r\n".encode() if who in tokens else b""
    both_paths(proc, f"/v1/health/service/{SERVICE}?passing", extra=extra)
    answer = ask(proc, request(f"/v1/health/service/{SERVICE}", extra=extra + b"\r\n"))
    filtered = b"x-consul-results-filtered-by-acls: true" in answer
    assert filtered == (who != "all")
    assert (b'"ID":"fastweb-1"' in answer) == (who == "all")


def test_with_acls_a_refused_token_goes_the_normal_way(
    acl_agent: tuple[AgentProcess, dict[str, str]],
) -> None:
    proc, _ = acl_agent
    before = counters(proc)
    answer = ask(
        proc, request(f"/v1/health/service/{SERVICE}", extra=b"X-Consul-Token: nope\r\n\r\n")
    )
    assert answer.startswith(b"HTTP/1.1 403 ")
    after = counters(proc)
    assert after["http_fast_fallbacks"] == before["http_fast_fallbacks"] + 1
    assert after["http_fast_answered"] == before["http_fast_answered"]


def test_with_acls_a_parked_query_is_answered_on_a_change(
    acl_agent: tuple[AgentProcess, dict[str, str]],
) -> None:
    proc, tokens = acl_agent
    token = f"X-Consul-Token: {tokens['all']}\r\n".encode()
    current = index_of(ask(proc, request(f"/v1/health/service/{SERVICE}", extra=token + b"\r\n")))
    with connect(proc) as sock:
        target = f"/v1/health/service/{SERVICE}?index={current}&wait=5m"
        sock.sendall(request(target, extra=token + b"\r\n"))
        until(lambda: counters(proc)["http_fast_parked"] == 1)
        body = {"Name": SERVICE, "ID": f"{SERVICE}-2", "Port": 8081}
        headers = {"X-Consul-Token": MGMT}
        httpx.put(f"{proc.http_url}/v1/agent/service/register", json=body, headers=headers)
        answer = Reader(sock).response()
    assert index_of(answer) > current
    assert b'"ID":"fastweb-2"' in answer


def _service_and_node_reader(
    admin: httpx.Client, name: str
) -> tuple[dict[str, str], dict[str, str], bytes]:
    """A policy `name` reading every service and node, a token with it, and that
    token's header line: (the policy, the token, the header)."""
    rules = 'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }'
    policy = admin.put("/v1/acl/policy", json={"Name": name, "Rules": rules}).json()
    made = admin.put("/v1/acl/token", json={"Policies": [{"Name": name}]}).json()
    return policy, made, f"X-Consul-Token: {made['SecretID']}\r\n".encode()


def test_with_acls_a_changed_or_deleted_token_applies_at_the_next_request(
    acl_agent: tuple[AgentProcess, dict[str, str]],
) -> None:
    """The fast path reuses the guard's verdict per token only while the token
    resolves to the same authorizer: an ACL change is seen at once."""
    proc, _ = acl_agent
    with proc.client(headers={"X-Consul-Token": MGMT}) as admin:
        policy, made, token = _service_and_node_reader(admin, "churn")
        target = request(f"/v1/health/service/{SERVICE}", extra=token + b"\r\n")
        assert b'"ID":"fastweb-1"' in ask(proc, target)
        assert b'"ID":"fastweb-1"' in ask(proc, target)  # the verdict reused
        narrowed = {"Name": "churn", "Rules": 'service_prefix "" { policy = "read" }'}
        admin.put(f"/v1/acl/policy/{policy['ID']}", json=narrowed).raise_for_status()
        answer = ask(proc, target)
        assert b"x-consul-results-filtered-by-acls: true" in answer  # no node read any more
        assert b'"ID":"fastweb-1"' not in answer
        admin.delete(f"/v1/acl/token/{made['AccessorID']}").raise_for_status()
        assert ask(proc, target).startswith(b"HTTP/1.1 403 ")


def test_with_acls_a_query_parked_before_an_acl_change_does_not_serve_others_its_answer(
    acl_agent: tuple[AgentProcess, dict[str, str]],
) -> None:
    """A parked query answers with the authorizer it was admitted with; that
    answer must not be cached as valid for the token's new rights."""
    proc, _ = acl_agent
    with proc.client(headers={"X-Consul-Token": MGMT}) as admin:
        policy, _, token = _service_and_node_reader(admin, "parked")
        plain = request(f"/v1/health/service/{SERVICE}", extra=token + b"\r\n")
        current = index_of(ask(proc, plain))
        with connect(proc) as sock:
            sock.sendall(
                request(
                    f"/v1/health/service/{SERVICE}?index={current}&wait=1s", extra=token + b"\r\n"
                )
            )
            until(lambda: counters(proc)["http_fast_parked"] >= 1)
            narrowed = {"Name": "parked", "Rules": 'service_prefix "" { policy = "read" }'}
            admin.put(f"/v1/acl/policy/{policy['ID']}", json=narrowed).raise_for_status()
            Reader(sock).response()  # its wait ends: answered as admitted
        answer = ask(proc, plain)
        assert b"x-consul-results-filtered-by-acls: true" in answer
        assert b'"ID":"fastweb-1"' not in answer
