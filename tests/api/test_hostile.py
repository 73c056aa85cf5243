"""Hostile callers, each reproduced against the agent before the fix: every
one must now get a clear 4xx (or be limited) and leave nothing behind."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from waypost._bounded import ByteBoundedCache
from waypost.api import consul as consul_api
from waypost.api.consul import ConsulApi
from waypost.api.http import Request

from ..agentproc import AgentProcess
from ..helpers import node, open_catalog, service


@pytest.fixture
def http(agent: AgentProcess) -> Iterator[httpx.Client]:
    with agent.client() as client:
        yield client


def test_writes_accept_only_put_as_consul_does(http: httpx.Client, unique: str) -> None:
    """A web page can POST text/plain cross-site without a preflight; not a PUT."""
    body = f'{{"Name": "{unique}", "Port": 80}}'
    headers = {"Content-Type": "text/plain"}
    for path in ("/v1/agent/service/register", "/v1/catalog/register", "/v1/kv/x", "/v1/txn"):
        r = http.post(path, content=body, headers=headers)
        assert r.status_code == 405, path
    assert unique not in http.get("/v1/catalog/services").json()


@pytest.mark.parametrize(
    "check",
    [
        {"Method": "GET /evil HTTP/1.1\r\nHost: x\r\n\r\nGET"},
        {"Method": "GET\n"},
        {"Header": {"X-A\r\nInjected": ["1"]}},
        {"Header": {"X-A": ["1\r\nInjected: yes"]}},
        {"Header": {"X-A": ["1\nInjected: yes"]}},
        {"HTTP": "http://127.0.0.1:1/ HTTP/1.1\r\nX: y"},
    ],
)
def test_http_checks_cannot_split_their_request(
    http: httpx.Client, unique: str, check: dict[str, object]
) -> None:
    body = {
        "Name": unique,
        "Check": {"HTTP": "http://127.0.0.1:1/health", "Interval": "10s", **check},
    }
    r = http.put("/v1/agent/service/register", json=body)
    assert r.status_code == 400, r.text
    assert unique not in http.get("/v1/catalog/services").json()


def test_intervals_and_timeouts_below_a_second_are_raised_to_one(
    http: httpx.Client, unique: str
) -> None:
    check = {"CheckID": unique, "TCP": "127.0.0.1:1", "Interval": "1ns", "Timeout": "10ms"}
    assert (
        http.put("/v1/agent/service/register", json={"Name": unique, "Check": check}).status_code
        == 200
    )
    shown = http.get("/v1/agent/checks").json()[unique]
    assert (shown["Interval"], shown["Timeout"]) == ("1s", "1s")
    assert http.put(f"/v1/agent/service/deregister/{unique}").status_code == 200


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"index": "²"}, 400),  # str.isdigit() says yes, int() says no
        ({"index": "1" * 5000}, 400),  # past int()'s 4,300 digits
        ({"index": "18446744073709551616"}, 400),  # past uint64
        ({"index": "\u0661\u0662"}, 400),  # Arabic-Indic digits
        ({"wait": "1²s"}, 400),
        ({"wait": "\u0661s"}, 400),
        ({"index": "18446744073709551615", "wait": "1ms"}, 200),
    ],
)
def test_malformed_blocking_parameters_are_400(
    http: httpx.Client, params: dict[str, str], status: int
) -> None:
    r = http.get("/v1/catalog/services", params=params)
    assert r.status_code == status, r.text


@pytest.mark.parametrize("depth", [40, 900, 5000, 200_000])
@pytest.mark.parametrize("path", ["/v1/agent/service/register", "/v1/catalog/register", "/v1/txn"])
def test_deeply_nested_json_is_400(http: httpx.Client, path: str, depth: int) -> None:
    """Deep enough for msgspec (its own limit is ~1,000) but too deep for the
    key folding's recursion used to be a RecursionError: 500 on every body endpoint."""
    nested = "[" * depth + "]" * depth
    body = f'{{"Name": "x", "Checks": {nested}}}' if path != "/v1/txn" else nested
    r = http.put(path, content=body)
    assert r.status_code == 400, r.text[:200]


@pytest.mark.parametrize("interval", ["\u0661s", "1²s", "\uff11s"])
def test_unicode_digits_in_durations_are_400(
    http: httpx.Client, unique: str, interval: str
) -> None:
    body = {"Name": unique, "Check": {"TCP": "127.0.0.1:1", "Interval": interval}}
    r = http.put("/v1/agent/service/register", json=body)
    assert r.status_code == 400 and "invalid duration" in r.text


NO_PATH = 'No path to datacenter "elsewhere": this agent serves datacenter "dc1" only'


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/catalog/services"),
        ("GET", "/v1/health/service/consul"),
        ("GET", "/v1/kv/x"),
        ("PUT", "/v1/kv/x"),
        ("PUT", "/v1/txn"),
        ("GET", "/v1/session/list"),
        ("PUT", "/v1/event/fire/x"),
        ("GET", "/v1/status/leader"),
        ("GET", "/v1/internal/ui/services"),
        ("GET", "/v1/acl/tokens"),
    ],
)
def test_another_datacenter_is_an_error_naming_it(
    http: httpx.Client, method: str, path: str
) -> None:
    """Consul's text first (clients look for it), then which datacenter was asked."""
    index = http.get("/v1/kv/x").headers["x-consul-index"]
    r = http.request(method, path, params={"dc": "elsewhere"}, content=b"[]")
    assert (r.status_code, r.text) == (500, NO_PATH)
    assert http.get("/v1/kv/x").headers["x-consul-index"] == index  # nothing written


def test_agent_endpoints_ignore_dc_as_consuls_do(http: httpx.Client, unique: str) -> None:
    """The agent's endpoints are this agent's own: Consul ignores `?dc=` there."""
    body = {"Name": unique, "Port": 80}
    r = http.put("/v1/agent/service/register", params={"dc": "elsewhere"}, json=body)
    assert r.status_code == 200, r.text
    assert unique in [s["Service"] for s in http.get("/v1/agent/services?dc=x").json().values()]
    assert http.get("/v1/catalog/datacenters?dc=elsewhere").json() == ["dc1"]
    http.put(f"/v1/agent/service/deregister/{unique}")


def test_py_consul_sees_the_datacenter_named(agent: AgentProcess) -> None:
    import consul

    c = consul.Consul(host="127.0.0.1", port=agent.http_port)
    with pytest.raises(consul.ConsulException) as raised:
        c.catalog.services(dc="elsewhere")
    assert "No path to datacenter" in str(raised.value) and '"elsewhere"' in str(raised.value)


# -- the answer cache is bounded by bytes ------------------------------------------------


async def test_the_answer_cache_is_bounded_by_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """One service with a large Meta read with many distinct query strings
    (each a cache key) took the agent from 47 MB to 923 MB in 6 s."""
    monkeypatch.setattr(consul_api, "CACHE_BYTES", 2 << 20)
    catalog = await open_catalog()
    await catalog.put(node(), service("big", meta={f"k{i}": "v" * 1000 for i in range(100)}))
    api = ConsulApi(catalog, None, None, catalog.storage)  # type: ignore[arg-type]
    sizes = []
    for n in range(200):
        req = Request(
            {
                "method": "GET",
                "path": "/v1/health/service/web",
                "query_string": f"x={n}".encode(),
                "headers": [],
            },
            None,  # type: ignore[arg-type]
        )
        sizes.append(len((await api.health_service(req, "web")).body))
    assert min(sizes) > 100_000  # each answer carries the Meta
    assert api._cache.bytes <= 2 << 20
    assert len(api._cache) < 25 and api._cache.evictions > 150
    await catalog.close()


def test_an_answer_larger_than_an_eighth_of_the_budget_is_not_cached() -> None:
    cache: ByteBoundedCache[bytes] = ByteBoundedCache(8000, len)
    cache.put("big", b"x" * 2000)
    cache.put("small", b"x" * 100)
    assert cache.get("big") is None and cache.get("small") is not None


# -- connections per client -------------------------------------------------------------


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    return sock


def _get(sock: socket.socket) -> bytes:
    sock.sendall(b"GET /v1/status/leader HTTP/1.1\r\nHost: x\r\n\r\n")
    return sock.recv(4096)


def test_one_client_cannot_take_every_connection() -> None:
    """One client held 21,000 blocking queries and locked everyone else out;
    now it gets 429 past its limit, and other clients are served."""
    proc = AgentProcess(
        "--dev", "--http", "127.0.0.1:0", "--dns", "off", "--http-max-conns-per-client", "3"
    ).start()
    held: list[socket.socket] = []
    try:
        held = [_connect(proc.http_port) for _ in range(3)]
        assert _get(held[0]).startswith(b"HTTP/1.1 200")
        extra = _connect(proc.http_port)
        answer = extra.recv(4096)
        assert answer.startswith(b"HTTP/1.1 429") and b"http_max_conns_per_client" in answer
        extra.close()
        other = _connect(proc.http_port, source="127.0.0.2")  # another client address
        assert _get(other).startswith(b"HTTP/1.1 200")
        other.close()
        held.pop().close()
        again = None
        for _ in range(50):  # the agent sees the close on its next loop turn
            again = _connect(proc.http_port)
            if _get(again).startswith(b"HTTP/1.1 200"):
                break
            again.close()
        else:
            raise AssertionError("a closed connection did not free its slot")
        again.close()
    finally:
        for sock in held:
            sock.close()
        proc.stop()
