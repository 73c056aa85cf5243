"""The agent endpoints and shapes that Consul clients' own acceptance tests check."""

from __future__ import annotations

import threading

import consul
import consul.exceptions
import httpx
import pytest

from ..agentproc import AgentProcess
from ..wait import until


@pytest.fixture
def http(agent: AgentProcess) -> httpx.Client:
    return agent.client()


NO_PATH = 'No path to datacenter "dc2": this agent serves datacenter "dc1" only'


def test_another_datacenter_is_500_and_writes_nothing(http: httpx.Client, unique: str) -> None:
    node = f"{unique}-ext"
    assert http.put("/v1/catalog/register", json={"Node": node, "Address": "10.0.0.1"}).json()
    index = http.get("/v1/catalog/nodes").headers["x-consul-index"]
    for method, path, body in (
        ("PUT", "/v1/catalog/deregister", {"Node": node, "Datacenter": "dc2"}),
        ("PUT", "/v1/catalog/register", {"Node": f"{node}2", "Datacenter": "dc2"}),
        ("PUT", "/v1/catalog/deregister?dc=dc2", {"Node": node}),
        ("GET", "/v1/catalog/nodes?dc=dc2", None),
    ):
        r = http.request(method, path, json=body)
        assert (r.status_code, r.text) == (500, NO_PATH), path
    assert http.get("/v1/catalog/nodes").headers["x-consul-index"] == index
    assert node in [n["Node"] for n in http.get("/v1/catalog/nodes?dc=dc1").json()]


def test_agent_checks_leave_out_serf_health(http: httpx.Client, unique: str) -> None:
    http.put("/v1/agent/check/register", json={"Name": unique, "TTL": "30s"})
    try:
        checks = http.get("/v1/agent/checks").json()
        assert unique in checks and "serfHealth" not in checks
        node_checks = http.get("/v1/health/node/test-node").json()
        assert "serfHealth" in {c["CheckID"] for c in node_checks}
    finally:  # a node-level check shows in every instance's health: leave none behind
        http.put(f"/v1/agent/check/deregister/{unique}")


def test_check_for_unknown_service_is_404(agent: AgentProcess, unique: str) -> None:
    c = consul.Consul(host="127.0.0.1", port=agent.http_port)
    # py-consul's boolean calls say False on 404 (Consul's answer), not BadRequest
    assert c.agent.check.register(unique, consul.Check.ttl("10s"), service_id="ghost") is False


def test_agent_services_shape(http: httpx.Client, unique: str) -> None:
    http.put("/v1/agent/service/register", json={"Name": unique, "ID": unique, "Port": 80})
    entry = http.get("/v1/agent/services").json()[unique]
    assert set(entry) == {
        "ID", "Service", "Tags", "Meta", "Port", "Address", "Weights", "EnableTagOverride",
        "Datacenter",
    }  # fmt: skip
    assert "consul" not in http.get("/v1/agent/services").json()  # the server's own entry
    single = http.get(f"/v1/agent/service/{unique}").json()
    assert "CreateIndex" not in single and single["Service"] == unique


def test_agent_self_members_and_the_consul_service(http: httpx.Client) -> None:
    me = http.get("/v1/agent/self").json()
    assert me["Config"]["Version"] == "1.18.0"  # the Consul API spoken
    assert me["Config"]["WaypostVersion"]
    assert me["Config"]["SessionTTLMin"] == 10_000_000_000
    assert me["Stats"]["consul"]["leader_addr"].endswith(":8300")
    assert {"Coord", "DebugConfig", "xDS", "Member"} <= set(me)
    assert me["Member"]["Tags"]["role"] == "consul"
    lan = http.get("/v1/agent/members").json()
    wan = http.get("/v1/agent/members?wan=1").json()
    assert [m["Name"] for m in lan] == ["test-node"] and lan[0]["Port"] == 8301
    assert [m["Name"] for m in wan] == ["test-node.dc1"] and wan[0]["Port"] == 8302
    (row,) = http.get("/v1/catalog/service/consul").json()
    assert (row["Node"], row["ServiceID"], row["ServicePort"]) == ("test-node", "consul", 8300)
    assert "consul" in http.get("/v1/catalog/services").json()


def test_agent_metrics_json_and_prometheus(http: httpx.Client) -> None:
    body = http.get("/v1/agent/metrics").json()
    assert set(body) == {"Timestamp", "Gauges", "Points", "Counters", "Samples"}
    names = {g["Name"] for g in body["Gauges"]}
    assert {"waypost.catalog.index", "waypost.sessions.sessions_invalidated"} <= names
    prom = http.get("/v1/agent/metrics?format=prometheus")
    assert "waypost_catalog_index" in prom.text


def test_monitor_streams_log_lines_until_the_client_leaves(agent: AgentProcess) -> None:
    lines: list[str] = []
    streaming = threading.Event()

    def read() -> None:
        with httpx.stream(
            "GET", f"{agent.http_url}/v1/agent/monitor?loglevel=info", timeout=10
        ) as r:
            assert r.status_code == 200
            streaming.set()  # subscribed in the step that sent the headers (nothing awaits between)
            for line in r.iter_lines():
                if line:
                    lines.append(line)
                    return  # closes the stream: the agent ends its side

    reader = threading.Thread(target=read)
    reader.start()
    assert streaming.wait(10), "the monitor sent no headers"
    httpx.put(f"{agent.http_url}/v1/agent/reload")  # logs a line at info
    reader.join(10)
    assert not reader.is_alive()
    assert any("reload requested" in line for line in lines), lines
    bad = httpx.get(f"{agent.http_url}/v1/agent/monitor?loglevel=loud")
    assert bad.status_code == 400


@pytest.mark.parametrize(
    "path",
    ["/v1/operator/raft/configuration", "/v1/snapshot", "/v1/query", "/v1/config/proxy-defaults",
     "/v1/peerings", "/v1/agent/join/10.0.0.1"],
)  # fmt: skip
def test_unbuilt_endpoints_say_so(http: httpx.Client, path: str) -> None:
    r = http.request("PUT" if "join" in path else "GET", path)
    assert r.status_code == 501
    assert r.text.startswith("waypost does not implement") and "docs/http-api.md" in r.text
    assert http.get("/v1/no-such-thing").status_code == 404


def test_leave_shuts_the_agent_down() -> None:
    proc = AgentProcess("--dev", "--http", "127.0.0.1:0", "--dns", "off").start()
    try:
        assert httpx.put(f"{proc.http_url}/v1/agent/leave").status_code == 200
        assert proc.proc is not None
        until(lambda: proc.proc is not None and proc.proc.poll() is not None, timeout=15)
        assert proc.proc.returncode == 0
    finally:
        proc.stop()
