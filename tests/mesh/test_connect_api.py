"""Consul's mesh API on a real agent: sidecar registration, the CA, intentions."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from cryptography import x509

from ..agentproc import AgentProcess
from .envoyproc import agent_with_xds


@pytest.fixture(scope="module")
def mesh_agent() -> Iterator[AgentProcess]:
    proc = agent_with_xds(
        "mesh-node",
        "--leaf-cert-ttl",
        "4s",
        "--sidecar-min-port",
        "21500",
        "--sidecar-max-port",
        "21502",
    ).start()
    yield proc
    assert proc.stop() == 0, "".join(proc.output)


@pytest.fixture
def api(mesh_agent: AgentProcess) -> Iterator[httpx.Client]:
    with mesh_agent.client() as client:
        yield client


def register(api: httpx.Client, body: dict[str, object]) -> httpx.Response:
    return api.put("/v1/agent/service/register", json=body)


def test_sidecar_service_expands_as_consul_does(api: httpx.Client) -> None:
    body = {
        "Name": "web",
        "ID": "web-1",
        "Port": 8080,
        "Tags": ["v1"],
        "Connect": {
            "SidecarService": {
                "Proxy": {
                    "Upstreams": [
                        {
                            "DestinationName": "db",
                            "LocalBindPort": 9191,
                            "Config": {"protocol": "http"},
                        }
                    ],
                }
            }
        },
    }
    assert register(api, body).status_code == 200
    proxy = api.get("/v1/agent/service/web-1-sidecar-proxy").json()
    assert proxy["Kind"] == "connect-proxy" and proxy["Service"] == "web-sidecar-proxy"
    assert proxy["Port"] == 21500 and proxy["Tags"] == ["v1"]
    assert proxy["Proxy"]["DestinationServiceName"] == "web"
    assert proxy["Proxy"]["DestinationServiceID"] == "web-1"
    assert proxy["Proxy"]["LocalServiceAddress"] == "127.0.0.1"
    assert proxy["Proxy"]["LocalServicePort"] == 8080
    up = proxy["Proxy"]["Upstreams"][0]
    assert (up["DestinationName"], up["LocalBindAddress"], up["LocalBindPort"]) == (
        "db",
        "127.0.0.1",
        9191,
    )
    assert up["Config"] == {"protocol": "http"}  # opaque: its keys are not folded
    checks = {
        c["Name"]: c
        for c in api.get("/v1/agent/checks").json().values()
        if c["ServiceID"] == "web-1-sidecar-proxy"
    }
    assert checks["Connect Sidecar Listening"]["Definition"]["TCP"] == "127.0.0.1:21500"
    assert checks["Connect Sidecar Aliasing web-1"]["Definition"]["AliasService"] == "web-1"
    assert register(api, {**body, "ID": "web-2"}).status_code == 200
    assert api.get("/v1/agent/service/web-2-sidecar-proxy").json()["Port"] == 21501
    assert register(api, body).status_code == 200  # re-registered: keeps its port
    assert api.get("/v1/agent/service/web-1-sidecar-proxy").json()["Port"] == 21500


def test_the_alias_check_follows_the_parent(api: httpx.Client) -> None:
    body = {
        "Name": "alias",
        "Port": 7000,
        "Check": {"TTL": "30s", "Status": "passing"},
        "Connect": {
            "SidecarService": {"Port": 7001, "Checks": [{"Name": "alias", "AliasService": "alias"}]}
        },
    }
    assert register(api, body).status_code == 200

    def alias_status() -> str:
        checks = api.get("/v1/health/checks/alias-sidecar-proxy").json()
        return str(checks[0]["Status"])

    deadline = time.monotonic() + 5
    while alias_status() != "passing" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alias_status() == "passing"
    api.put("/v1/agent/check/fail/service:alias", params={"note": "down"})
    started = time.monotonic()
    while alias_status() != "critical":
        assert time.monotonic() - started < 1.0, "the alias check did not follow within a second"
        time.sleep(0.02)
    rows = api.get("/v1/health/connect/alias").json()
    assert [r["Service"]["ID"] for r in rows] == ["alias-sidecar-proxy"]
    assert api.get("/v1/health/connect/alias", params={"passing": "1"}).json() == []
    catalog = api.get("/v1/catalog/connect/alias").json()
    assert catalog[0]["ServiceKind"] == "connect-proxy"
    assert catalog[0]["ServiceProxy"]["DestinationServiceName"] == "alias"


def test_removing_the_parent_removes_its_sidecar(api: httpx.Client) -> None:
    body = {"Name": "gone", "Port": 6000, "Connect": {"SidecarService": {"Port": 6001}}}
    assert register(api, body).status_code == 200
    assert api.get("/v1/agent/service/gone-sidecar-proxy").status_code == 200
    assert register(api, {"Name": "gone", "Port": 6000}).status_code == 200  # without: it goes
    assert api.get("/v1/agent/service/gone-sidecar-proxy").status_code == 404
    assert register(api, body).status_code == 200
    assert api.put("/v1/agent/service/deregister/gone").status_code == 200
    assert api.get("/v1/agent/service/gone-sidecar-proxy").status_code == 404
    assert not [
        c for c in api.get("/v1/agent/checks").json().values() if c["ServiceID"].startswith("gone")
    ]


@pytest.mark.parametrize(
    ("sidecar", "message"),
    [
        (
            {"Proxy": {"Config": {"protocol": "htp"}}},
            'Proxy.Config.protocol "htp" is not supported',
        ),
        (
            {"Proxy": {"Config": {"connect_timeout_ms": "5s"}}},
            "connect_timeout_ms must be a non-negative integer",
        ),
        (
            {"Proxy": {"Upstreams": [{"DestinationName": "db"}]}},
            "Upstreams[0].LocalBindPort must be between 1 and 65535",
        ),
        (
            {"Proxy": {"Upstreams": [{"LocalBindPort": 1}]}},
            "Upstreams[0].DestinationName must be set",
        ),
        (
            {"Proxy": {"Config": {"passive_health_check": {"interval": "soon"}}}},
            "passive_health_check.interval",
        ),
        (
            {
                "Proxy": {
                    "Upstreams": [
                        {"DestinationName": "a", "LocalBindPort": 5},
                        {"DestinationName": "b", "LocalBindPort": 5},
                    ]
                }
            },
            "already binds 127.0.0.1:5",
        ),
    ],
)
def test_bad_proxy_definitions_are_400_and_register_nothing(
    api: httpx.Client, sidecar: dict[str, object], message: str
) -> None:
    answer = register(api, {"Name": "bad", "Port": 1, "Connect": {"SidecarService": sidecar}})
    assert answer.status_code == 400 and message in answer.text, answer.text
    assert api.get("/v1/agent/service/bad").status_code == 404  # the parent did not land either


def test_the_sidecar_port_range_runs_out_with_a_clear_error(api: httpx.Client) -> None:
    for n in range(3):  # 21500-21502; web-1 and web-2 may hold two of them already
        register(api, {"Name": f"fill{n}", "Port": 1, "Connect": {"SidecarService": {}}})
    answer = register(api, {"Name": "one-too-many", "Port": 1, "Connect": {"SidecarService": {}}})
    assert (
        answer.status_code == 400 and "no free sidecar port between 21500 and 21502" in answer.text
    )


def test_roots_and_a_leaf_signed_by_them(api: httpx.Client) -> None:
    roots = api.get("/v1/agent/connect/ca/roots").json()
    assert roots == api.get("/v1/connect/ca/roots").json()
    assert roots["TrustDomain"].endswith(".consul") and len(roots["Roots"]) == 1
    root = roots["Roots"][0]
    assert root["ID"] == roots["ActiveRootID"] and root["Active"] is True
    assert "BEGIN PRIVATE KEY" not in str(roots)
    answer = api.get("/v1/agent/connect/ca/leaf/web")
    leaf = answer.json()
    assert leaf["ServiceURI"] == f"spiffe://{roots['TrustDomain']}/ns/default/dc/dc1/svc/web"
    cert = x509.load_pem_x509_certificate(leaf["CertPEM"].encode())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(root["RootCert"].encode()))
    assert int(answer.headers["x-consul-index"]) == leaf["ModifyIndex"]


def test_the_leaf_blocks_until_it_is_renewed(api: httpx.Client) -> None:
    first = api.get("/v1/agent/connect/ca/leaf/renewed")
    index = first.headers["x-consul-index"]
    started = time.monotonic()
    second = api.get("/v1/agent/connect/ca/leaf/renewed", params={"index": index, "wait": "10s"})
    waited = time.monotonic() - started
    assert second.json()["SerialNumber"] != first.json()["SerialNumber"]
    assert int(second.headers["x-consul-index"]) > int(index)
    assert 1.0 < waited < 4.0  # renewed at 60-80% of the 4 s lifetime, not at the wait's end


def test_intention_endpoints(api: httpx.Client, mesh_agent: AgentProcess) -> None:
    exact = "/v1/connect/intentions/exact"
    pair = {"source": "web", "destination": "billing"}
    assert api.put(exact, params=pair, json={"Action": "deny", "Description": "no"}).json() is True
    got = api.get(exact, params=pair).json()
    assert (got["SourceName"], got["DestinationName"], got["Action"], got["Precedence"]) == (
        "web",
        "billing",
        "deny",
        9,
    )
    assert api.get("/v1/connect/intentions/check", params=pair).json() == {"Allowed": False}
    made = api.post(
        "/v1/connect/intentions",
        json={"SourceName": "*", "DestinationName": "billing", "Action": "allow"},
    )
    assert api.get(f"/v1/connect/intentions/{made.json()['ID']}").json()["SourceName"] == "*"
    match = api.get(
        "/v1/connect/intentions/match", params={"by": "destination", "name": "billing"}
    ).json()
    assert [(i["SourceName"], i["Action"]) for i in match["billing"]] == [
        ("web", "deny"),
        ("*", "allow"),
    ]
    assert {"web", "*"} <= {i["SourceName"] for i in api.get("/v1/connect/intentions").json()}
    domain = api.get("/v1/connect/ca/roots").json()["TrustDomain"]
    authorize = api.post(
        "/v1/agent/connect/authorize",
        json={"Target": "billing", "ClientCertURI": f"spiffe://{domain}/ns/default/dc/dc1/svc/web"},
    ).json()
    assert authorize["Authorized"] is False and "web => billing" in authorize["Reason"]
    other = api.post(
        "/v1/agent/connect/authorize",
        json={
            "Target": "billing",
            "ClientCertURI": "spiffe://elsewhere.consul/ns/default/dc/dc1/svc/api",
        },
    ).json()
    assert other["Authorized"] is False and "trust domain" in other["Reason"]
    assert api.delete(exact, params=pair).json() is True
    assert api.get(exact, params=pair).status_code == 404
    assert api.delete(f"/v1/connect/intentions/{made.json()['ID']}").json() is True
    assert api.get("/v1/connect/intentions/check", params=pair).json() == {"Allowed": True}
    assert api.put(exact, params=pair, json={"Action": "perhaps"}).status_code == 400
    assert api.put(exact, params={"source": "web"}, json={"Action": "deny"}).status_code == 400
    assert (
        api.get("/v1/connect/intentions/match", params={"by": "nobody", "name": "x"}).status_code
        == 400
    )


def test_py_consul_drives_the_mesh_api_unchanged(mesh_agent: AgentProcess) -> None:
    """py-consul (a client no one here wrote): sidecar registration, CA, intentions."""
    import consul

    c = consul.Consul(host="127.0.0.1", port=mesh_agent.http_port)
    c.agent.service.register(
        "orders", service_id="orders-1", port=5000, connect={"sidecar_service": {"port": 5001}}
    )
    index, rows = c.health.connect("orders")
    assert [r["Service"]["ID"] for r in rows] == ["orders-1-sidecar-proxy"] and int(index) > 0
    assert c.catalog.connect("orders")[1][0]["ServiceProxy"]["DestinationServiceID"] == "orders-1"
    roots = c.agent.connect.ca.roots()
    assert roots == c.connect.ca.roots() and roots["Roots"][0]["Active"]
    leaf = c.agent.connect.ca.leaf("orders")
    assert leaf["ServiceURI"].endswith("/svc/orders")
    assert (
        c.connect.intentions.upsert("orders", "payments", action="deny", description="not yet")
        is True
    )
    assert c.connect.intentions.read("orders", "payments")["Description"] == "not yet"
    assert c.connect.intentions.check("orders", "payments") is False
    assert [i["SourceName"] for i in c.connect.intentions.match("source", "orders")["orders"]] == [
        "orders"
    ]
    verdict = c.agent.connect.authorize("payments", leaf["ServiceURI"], leaf["SerialNumber"])
    assert verdict["Authorized"] is False and "orders => payments" in verdict["Reason"]
    assert c.connect.intentions.delete("orders", "payments") is True
    assert c.connect.intentions.check("orders", "payments") is True
    c.agent.service.deregister("orders-1")
    assert c.health.connect("orders")[1] == []
