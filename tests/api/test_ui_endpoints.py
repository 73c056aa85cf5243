"""The web UI's HTTP side on a real agent: /v1/internal/ui/... reads and the static page."""

from __future__ import annotations

import concurrent.futures
import datetime
import time

import httpx
import pytest

from ..agentproc import AgentProcess
from ..wait import until


@pytest.fixture
def http(agent: AgentProcess) -> httpx.Client:
    with agent.client() as client:
        yield client


def register(http: httpx.Client, body: dict) -> None:
    assert http.put("/v1/agent/service/register", json=body).status_code == 200


def timeline(http: httpx.Client, name: str, **params: str) -> list[dict]:
    r = http.get(f"/v1/internal/ui/timeline/{name}", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_timeline_records_transitions_with_output(http: httpx.Client, unique: str) -> None:
    register(
        http, {"Name": unique, "ID": f"{unique}-1", "Check": {"TTL": "5m", "Status": "passing"}}
    )
    http.put(f"/v1/agent/check/warn/service:{unique}-1", params={"note": "slow: 900 ms"})
    http.put(f"/v1/agent/check/fail/service:{unique}-1", params={"note": "connection refused"})
    http.put(
        f"/v1/agent/service/maintenance/{unique}-1",
        params={"enable": "true", "reason": "deploy v2"},
    )
    events = timeline(http, unique)
    assert [(e["Kind"], e["From"], e["To"], e["Status"]) for e in events] == [
        ("registered", "", "passing", "passing"),
        ("check", "passing", "warning", "warning"),
        ("check", "warning", "critical", "critical"),
        ("maintenance", "", "maintenance", "maintenance"),
    ]
    assert [e["Output"] for e in events[1:]] == ["slow: 900 ms", "connection refused", "deploy v2"]
    assert {e["ServiceID"] for e in events} == {f"{unique}-1"}
    assert all(e["Node"] == "test-node" and e["Time"].endswith("Z") for e in events)
    assert events[1]["CheckID"] == f"service:{unique}-1" and events[1]["CheckType"] == "ttl"


def test_timeline_says_since_when_it_records(http: httpx.Client, unique: str) -> None:
    r = http.get(f"/v1/internal/ui/timeline/{unique}")
    start = datetime.datetime.fromisoformat(r.headers["x-waypost-timeline-start"])
    now = datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(0) < now - start < datetime.timedelta(hours=1)  # the agent's start
    assert "x-waypost-timeline-start" in http.get("/v1/internal/ui/timeline").headers


def test_timeline_filters_by_instance_and_seq(http: httpx.Client, unique: str) -> None:
    for n in (1, 2):
        register(http, {"Name": unique, "ID": f"{unique}-{n}", "Check": {"TTL": "5m"}})
    assert [e["ServiceID"] for e in timeline(http, unique, instance=f"{unique}-2")] == [
        f"{unique}-2"
    ]
    assert timeline(http, unique, instance=f"{unique}-2", node="elsewhere") == []
    first = timeline(http, unique)[0]["Seq"]
    assert [e["ServiceID"] for e in timeline(http, unique, after=str(first))] == [f"{unique}-2"]
    everything = http.get(
        "/v1/internal/ui/timeline", params={"after": str(first - 1), "limit": "2"}
    ).json()
    assert [e["Seq"] for e in everything] == [first, first + 1]


def test_the_reaper_shows_as_reaped(http: httpx.Client, unique: str) -> None:
    register(
        http,
        {
            "Name": unique,
            "ID": f"{unique}-1",
            "Check": {"TTL": "5m", "DeregisterCriticalServiceAfter": "1s"},
        },
    )
    reaped = until(lambda: [e for e in timeline(http, unique) if e["Kind"] == "reaped"], timeout=10)
    assert reaped[0]["ServiceID"] == f"{unique}-1" and reaped[0]["Status"] == ""


def test_timeline_is_a_blocking_query(http: httpx.Client, agent: AgentProcess, unique: str) -> None:
    register(http, {"Name": unique, "ID": f"{unique}-1", "Check": {"TTL": "5m"}})
    index = http.get(f"/v1/internal/ui/timeline/{unique}").headers["x-consul-index"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool, agent.client() as other:
        started = time.monotonic()
        waiting = pool.submit(
            other.get, f"/v1/internal/ui/timeline/{unique}", params={"index": index, "wait": "20s"}
        )
        time.sleep(0.3)
        assert not waiting.done()
        http.put(f"/v1/agent/check/pass/service:{unique}-1")
        answer = waiting.result(timeout=10)
    assert time.monotonic() - started < 5
    assert int(answer.headers["x-consul-index"]) > int(index)
    assert answer.json()[-1]["To"] == "passing"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("after=abc", 'Invalid after "abc": expected an integer'),
        ("after=-1", "Invalid after -1: must be at least 0"),
        ("limit=0", "Invalid limit 0: must be between 1 and 10000"),
    ],
)
def test_timeline_rejects_bad_parameters(http: httpx.Client, query: str, message: str) -> None:
    r = http.get(f"/v1/internal/ui/timeline?{query}")
    assert (r.status_code, r.text) == (400, message)


def test_nodes_with_their_health_services_and_checks(http: httpx.Client, unique: str) -> None:
    register(
        http,
        {
            "Name": unique,
            "ID": f"{unique}-1",
            "Port": 81,
            "Check": {"TTL": "5m", "Status": "warning"},
        },
    )
    r = http.get("/v1/internal/ui/nodes")
    assert int(r.headers["x-consul-index"]) >= 1
    (node,) = [n for n in r.json() if n["Node"] == "test-node"]
    assert node["Status"] == "passing"  # the node's own checks: serfHealth
    (mine,) = [s for s in node["Services"] if s["ID"] == f"{unique}-1"]
    assert (mine["Service"], mine["Port"], mine["Status"]) == (unique, 81, "warning")
    check_ids = {c["CheckID"] for c in node["Checks"]}
    assert {"serfHealth", f"service:{unique}-1"} <= check_ids
    assert http.put("/v1/agent/maintenance", params={"enable": "true"}).status_code == 200
    try:
        (node,) = [n for n in http.get("/v1/internal/ui/nodes").json() if n["Node"] == "test-node"]
        assert node["Status"] == "maintenance"
    finally:
        http.put("/v1/agent/maintenance", params={"enable": "false"})


def test_services_summary_counts_maintenance_apart(http: httpx.Client, unique: str) -> None:
    for n in (1, 2):
        register(
            http,
            {"Name": unique, "ID": f"{unique}-{n}", "Check": {"TTL": "5m", "Status": "passing"}},
        )
    http.put(f"/v1/agent/service/maintenance/{unique}-2", params={"enable": "true"})
    (row,) = [s for s in http.get("/v1/internal/ui/services").json() if s["Name"] == unique]
    assert (row["InstancesPassing"], row["InstancesCritical"], row["InstancesMaintenance"]) == (
        1,
        0,
        1,
    )
    assert row["Nodes"] == ["test-node"] and row["Datacenter"] == "dc1"


def test_an_index_from_before_a_restart_is_answered_at_once(
    http: httpx.Client, unique: str
) -> None:
    r = http.get(f"/v1/health/service/{unique}")
    ahead = int(r.headers["x-consul-index"]) + 10**9
    started = time.monotonic()
    again = http.get(f"/v1/health/service/{unique}", params={"index": str(ahead), "wait": "20s"})
    assert time.monotonic() - started < 3
    assert int(again.headers["x-consul-index"]) < ahead


def test_ui_paths(http: httpx.Client) -> None:
    assert (http.get("/ui").status_code, http.get("/ui").headers["location"]) == (301, "/ui/")
    page = http.get("/ui/")
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    # A deep link is the page itself: the browser's router reads the path.
    for path in ("/ui/services/pay%2Fment", "/ui/nodes/n1", "/ui/services/x/instances/n/x-1"):
        r = http.get(path)
        assert (r.status_code, r.content) == (200, page.content), path
    js = http.get("/ui/assets/app.js")
    assert js.headers["content-type"] == "text/javascript; charset=utf-8"
    assert http.get("/ui/assets/style.css").headers["content-type"] == "text/css; charset=utf-8"
    assert http.get("/ui/assets/nope.js").status_code == 404
    cached = http.get("/ui/assets/app.js", headers={"If-None-Match": js.headers["etag"]})
    assert (cached.status_code, cached.content) == (304, b"")


async def test_summary_rows_follow_changes_holds_and_removals() -> None:
    """The summary reuses rows of unchanged services: whatever changes a row
    (its index, a hold without an index, a removal) must still show."""
    from waypost.api.internal_ui import UiEndpoints
    from waypost.catalog import writes
    from waypost.catalog.definitions import CheckRegistration, ServiceRegistration

    from ..helpers import open_catalog

    catalog = await open_catalog()
    ui = UiEndpoints(None, catalog, None)  # type: ignore[arg-type]  # only the builder runs

    async def reg(sid: str, tags: list[str]) -> None:
        check = CheckRegistration(name="alive", ttl="1m", status="passing")
        body = ServiceRegistration(name="web", id=sid, tags=tags, check=check)
        await catalog.write(writes.register, "n1", body, False, False)

    def row() -> tuple[list[str], int, int]:
        (only,) = ui._summaries()
        return only["Tags"], only["InstancesPassing"], only["InstancesCritical"]

    await reg("web-1", ["a"])
    assert row() == (["a"], 1, 0)
    await reg("web-1", ["b"])
    assert row() == (["b"], 1, 0)
    catalog.hold("n1", "service:web-1", "the store refused the result")
    assert row() == (["b"], 0, 1)
    catalog.release("n1", "service:web-1")
    assert row() == (["b"], 1, 0)
    await catalog.deregister_service("n1", "web-1")
    assert ui._summaries() == []
    await catalog.close()
