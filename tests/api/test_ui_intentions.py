"""/v1/internal/ui/intentions (the UI's mesh view) on a real agent of its own:
the picture's size cap, the per-service question, blocking, and the default
reported as `decide` applies it. ACL filtering: tests/api/test_acl.py."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator

import httpx
import pytest

from waypost.api.ui_intentions import MATRIX_MAX

from ..agentproc import AgentProcess

PATH = "/v1/internal/ui/intentions"


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    proc = AgentProcess("--dev", "--http", "127.0.0.1:0", "--dns", "off").start()
    with proc.client() as client:
        yield client
    proc.stop()


def intend(http: httpx.Client, source: str, destination: str, action: str) -> None:
    r = http.put(
        "/v1/connect/intentions/exact",
        params={"source": source, "destination": destination},
        json={"Action": action},
    )
    assert r.status_code == 200, r.text


def test_a_service_alone_and_the_default(http: httpx.Client) -> None:
    intend(http, "web", "ghost", "deny")  # ghost is named by an intention, never registered
    view = http.get(PATH, params={"service": "ghost"}).json()
    assert view["Services"] == ["ghost", "web"] and view["DefaultAllow"] is True
    assert view["Cells"] == [[1, 0, 0, 0], [0, 1, 1, -1]]  # web -> ghost denied; back: default
    bad = http.get(PATH, params={"service": ""})
    assert bad.status_code == 400 and "?service=NAME" in bad.text
    intend(http, "*", "*", "deny")
    view = http.get(PATH, params={"service": "ghost"}).json()
    assert view["DefaultAllow"] is None  # no pair falls through to it any more
    assert view["Cells"][1] == [0, 1, 0, 1]  # ghost -> web: denied by * -> *
    http.delete("/v1/connect/intentions/exact", params={"source": "*", "destination": "*"})


def test_a_blocking_read_wakes_on_an_intention(http: httpx.Client) -> None:
    first = http.get(PATH)
    index = first.headers["X-Consul-Index"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(http.get, PATH, params={"index": index, "wait": "20s"})
        intend(http, "ghost", "web", "deny")
        woke = waiting.result(timeout=10)
    assert int(woke.headers["X-Consul-Index"]) > int(index)
    pairs = [(i["SourceName"], i["DestinationName"]) for i in woke.json()["Intentions"]]
    assert ("ghost", "web") in pairs


def test_too_many_services_for_a_matrix(http: httpx.Client) -> None:
    for n in range(MATRIX_MAX + 1):
        http.put("/v1/agent/service/register", json={"Name": f"many-{n:02}"}).raise_for_status()
    sidecar = {
        "Name": "many-00-sidecar-proxy",
        "Kind": "connect-proxy",
        "Port": 21000,
        "Proxy": {"DestinationServiceName": "many-00"},
    }
    http.put("/v1/agent/service/register", json=sidecar).raise_for_status()
    view = http.get(PATH).json()
    assert view["TooMany"] is True and view["Cells"] == []
    assert "many-00-sidecar-proxy" not in view["Services"] and "consul" not in view["Services"]
    one = http.get(PATH, params={"service": "many-07"}).json()
    assert one["TooMany"] is False
    assert len(one["Cells"]) == 2 * (len(one["Services"]) - 1)


def test_a_check_flapping_does_not_move_the_view(http: httpx.Client) -> None:
    """The view waits on intentions and the service list only: health changes
    (the frequent ones) never rebuild it."""
    body = {"Name": "flappy", "Check": {"TTL": "5m", "Status": "passing"}}
    http.put("/v1/agent/service/register", json=body).raise_for_status()
    before = http.get(PATH).headers["X-Consul-Index"]
    http.put("/v1/agent/check/fail/service:flappy").raise_for_status()
    assert http.get("/v1/health/service/flappy").json()[0]["Checks"][-1]["Status"] == "critical"
    assert http.get(PATH).headers["X-Consul-Index"] == before
