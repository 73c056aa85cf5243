"""`?filter=` (Consul's expression language) and `?node-meta=`: the language on its
own, then Consul's documented examples against a real agent, then every endpoint
that takes them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from waypost._exceptions import ValidationError
from waypost.api import encode, filter_fields
from waypost.api.filter import compile_filter
from waypost.catalog.model import (
    Check,
    CheckDefinition,
    Node,
    Proxy,
    Service,
    ServiceAddress,
    Upstream,
    Weights,
)

from ..agentproc import AgentProcess

ROW: dict[str, Any] = {
    "Node": {"Node": "n1", "Meta": {"os": "linux", "rack": "r1"}, "Address": "10.0.0.1"},
    "Service": {
        "ID": "web-1",
        "Service": "web",
        "Tags": ["v1", "primary"],
        "Meta": {"env": "qa", "version": "1.2"},
        "Port": 8080,
        "EnableTagOverride": False,
        "Weights": {"Passing": 3, "Warning": 1},
    },
    "Checks": [
        {"CheckID": "serfHealth", "Status": "passing", "Output": "Agent alive"},
        {"CheckID": "service:web-1", "Status": "critical", "Output": "connection refused"},
    ],
}


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("Service.Port == 8080", True),
        ("Service.Port != 8080", False),
        ('Service.Meta.env == "qa"', True),
        ('Service.Meta["env"] == `qa`', True),
        ("Service.Meta.env == qa", True),  # a bare word is its own text
        ('"v1" in Service.Tags', True),
        ('"v2" not in Service.Tags', True),
        ('Service.Tags contains "primary"', True),
        ('Service.Tags not contains "primary"', False),
        ('"env" in Service.Meta', True),  # in a map: its keys
        ('"ver" in Service.ID', False),
        ('"web" in Service.ID', True),  # in a string: a substring
        ('Service.ID matches "^web-[0-9]+$"', True),
        ('Service.ID not matches "^db"', True),
        ("Service.Meta.missing is empty", True),  # a missing key is empty
        ('Service.Meta.missing == ""', False),  # and equal to nothing
        ('Service.Meta.missing != "x"', True),
        ("Service.Meta is not empty", True),
        ("Service.Kind is empty", True),  # a field the answer leaves out: its zero value
        ("Service.EnableTagOverride == false", True),
        ("Service.Weights.Passing == 3", True),
        ("Checks.Status == critical", True),  # through a list: any element
        ("Checks.Status != passing", True),
        ('Checks.Output contains "refused"', True),
        ("not Checks.Status == warning", True),
        ("Node.Meta.os == linux and Node.Meta.rack == r2", False),
        ("Node.Meta.os == linux and Node.Meta.rack == r2 or Service.Port == 8080", True),
        ("Node.Meta.os == linux and (Node.Meta.rack == r2 or Service.Port == 1)", False),
        ("not (Service.Port == 1 or Service.Port == 2)", True),
        ("not not Service.Port == 8080", True),
        ('  ( Service.Meta.env=="qa" )  ', True),
        # go-bexpr's collection expressions
        ('any Service.Tags as t { t == "v1" }', True),
        ('all Service.Tags as t { t == "v1" }', False),
        ('all Service.Tags as t { t matches "^(v1|primary)$" }', True),
        ('any Checks as c { c.Status == critical and c.Output contains "refused" }', True),
        ('any Checks as c { c.Status == critical and c.Output contains "alive" }', False),
        ("all Checks as c { c.Status == passing }", False),
        ('any Service.Meta as k { k == "env" }', True),  # alone: a map's key
        ('any Service.Meta as k, v { k == "env" and v == "qa" }', True),
        ('any Service.Meta as k, v { k == "env" and v == "1.2" }', False),
        ('any Service.Meta as _, v { v == "1.2" }', True),
        ("any Service.Tags as i, _ { i == 1 }", True),  # a list's index
        ("any Service.Tags as i, t { i == 0 and t == primary }", False),
        ('not any Service.Tags as t { t == "v9" }', True),
        ('Service.Port == 8080 and any Service.Tags as t { t == "v1" }', True),
        ("any Checks as c { all Service.Tags as t { t != x and c.Status == passing } }", True),
        ('all Service.Proxy.Upstreams as u { u.DestinationName == "db" }', True),  # none: all
        ('any Service.Proxy.Upstreams as u { u.DestinationName == "db" }', False),  # none: any
        ("any in Service.Tags or Service.Port == 8080", True),  # a bare word "any" is a value
        # JSON Pointer selectors, and go-bexpr's numeric index
        ('"/Service/Meta/env" == "qa"', True),
        ('"/Service/Meta/env" == "prod"', False),
        ('"/Service/Port" == 8080', True),
        ('"v1" in "/Service/Tags"', True),
        ('"/Service/Tags" contains "v1"', True),
        ('"/x" in Service.Tags', False),  # a pointer-shaped value before "in" is a value
        ('"/Checks/1/Status" == critical', True),
        ("Checks.0.Status == passing", True),
        ("Checks.1.Status == passing", False),
        ("Checks.5.Status is empty", True),  # past the end: missing
        ('any "/Service/Tags" as t { t == "primary" }', True),
    ],
)
def test_the_language(expression: str, expected: bool) -> None:
    assert compile_filter(expression, filter_fields.HEALTH_ROW)(ROW) is expected


def test_json_pointer_escapes() -> None:
    """RFC 6901: in a segment, ~1 is "/" and ~0 is "~"."""
    row = {"Service": {"Meta": {"a/b": "slash", "c~d": "tilde"}}}
    for expression in ('"/Service/Meta/a~1b" == slash', '"/Service/Meta/c~0d" == tilde'):
        assert compile_filter(expression, filter_fields.HEALTH_ROW)(row) is True


def test_a_collection_selected_through_an_index() -> None:
    ups = [{"DestinationName": "a", "Config": {}}, {"DestinationName": "b", "Config": {"x": "1"}}]
    row = {"Service": {"Proxy": {"Upstreams": ups}}}
    for at, expected in (("0", False), ("1", True), ("7", False)):
        expression = f'any Service.Proxy.Upstreams.{at}.Config as k {{ k == "x" }}'
        assert compile_filter(expression, filter_fields.HEALTH_ROW)(row) is expected


@pytest.mark.parametrize(
    ("expression", "position", "message"),
    [
        ("Service.Port ==", 16, "expected a value"),
        ('Service.Port == "eighty"', 17, 'Service.Port is a number: "eighty" is not one'),
        (
            "Servcie.Port == 1",
            1,
            'Selector "Servcie" is not valid (valid here: Node, Service, Checks)',
        ),
        ("Service.Prot == 1", 1, 'Selector "Service.Prot" is not valid'),
        ("Service.Tags == v1", 1, "Service.Tags is a list"),
        ("(Service.Port == 80", 20, 'expected ")" to close the "(" at position 1'),
        ("Service.Port = 80", 14, "expected an operator"),
        ('Service.ID matches "("', 20, "invalid regular expression"),
        ("Service.Port == 80 and", 23, "expected a selector, a value or '('"),
        ('"x" in', 7, 'expected a selector after "in"'),
        ('Service.Meta["a" == 1', 18, 'expected "]"'),
        ('Service.ID == "abc', 15, "unterminated string"),
        ("Service.Port == 80 80", 20, 'expected "and", "or" or the end'),
        ("Service.Port is empty", 1, "is empty needs a string, a list or a map"),
        ("Service.EnableTagOverride == maybe", 30, "true or false"),
        ("", 1, "the filter is empty"),
        (
            "any Service.Port as p { p == 1 }",
            5,
            "any needs a list or a map: Service.Port is a number",
        ),
        ("any Checks.Status as s { s == x }", 5, "Checks.Status passes through a list"),
        ("any Service.Tags as t t == 1", 23, 'expected "{" after the names any binds'),
        ('any Service.Tags as t { t == "x"', 33, 'expected "}" to close the "{" at position 23'),
        ("any Service.Meta as k { k.x == 1 }", 25, '"k" is a map key, so k.x is not valid'),
        ('all Service.Tags as t, t { t == "x" }', 21, "cannot be used as a placeholder for both"),
        ("any Service.Tags as t { t.x == 1 }", 25, 'Selector "t.x" is not valid'),
        ('any Service.Tags as i, _ { i == "x" }', 33, 'i is a number: "x" is not one'),
        ("any Service.Tags as _ { t == 1 }", 21, '"_" alone binds nothing'),
        ("any Service.Tags as { t == 1 }", 21, "expected a name to bind"),
        ('"/Service/Nope" == 1', 1, 'Selector "/Service/Nope" is not valid'),
        ('"/Service/Port" == "eighty"', 20, '"/Service/Port" is a number'),
        ("Service.Tags.x == 1", 1, 'Selector "Service.Tags.x" is not valid'),
    ],
)
def test_errors_name_the_position(expression: str, position: int, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        compile_filter(expression, filter_fields.HEALTH_ROW)
    text = str(caught.value)
    assert f"position {position}: " in text and message in text, text
    shown, caret = text.splitlines()[1:]
    assert shown == "  " + expression and caret.index("^") == position + 1  # under the spot


def _sample_records() -> dict[str, tuple[filter_fields.Record, dict[str, Any]]]:
    node = Node(name="n", id="i", address="a", tagged_addresses={"lan": "a"}, meta={"k": "v"})
    defn = CheckDefinition(
        interval=1,
        timeout=1,
        ttl=0,
        http="h",
        tcp="t",
        grpc="g",
        method="GET",
        header={"a": ["b"]},
        args=("x",),
        tls_skip_verify=True,
        deregister_critical_after=60,
    )
    service = Service(
        node="n",
        id="s",
        name="web",
        tags=("t",),
        address="a",
        port=1,
        meta={"k": "v"},
        weights=Weights(2, 1),
        tagged_addresses={"lan": ServiceAddress("a", 1)},
        kind="k",
        proxy=Proxy("web", upstreams=(Upstream("db", 5432),)),
    )
    check = Check(
        node="n",
        check_id="c",
        name="c",
        service_id="s",
        service_name="web",
        service_tags=("t",),
        type="http",
        definition=defn,
    )
    return {
        "node": (filter_fields.NODE, encode.node(node)),
        "service": (filter_fields.SERVICE, encode.service(service, "dc1")),
        "agent service": (filter_fields.AGENT_SERVICE, encode.agent_service(service, "dc1")),
        "check": (filter_fields.CHECK, encode.check(check)),
        "health": (filter_fields.HEALTH_ROW, encode.health_row(node, service, [check])),
        "catalog": (filter_fields.CATALOG_SERVICE, encode.catalog_service(node, service)),
    }


@pytest.mark.parametrize("name", list(_sample_records()))
def test_the_shapes_are_what_the_encoder_emits(name: str) -> None:
    """Every field of every answer is selectable, and no selector names a field
    that no answer has: the shapes cannot drift from encode.py unnoticed."""

    def compare(shape: filter_fields.Record, record: dict[str, Any]) -> None:
        assert set(record) <= set(shape.fields), shape.name
        assert set(shape.fields) - set(record) <= {"Datacenter"}, shape.name  # only where asked
        for key, value in record.items():
            field = shape.fields[key]
            if isinstance(field, filter_fields.Record):
                compare(field, value)
            elif isinstance(field, filter_fields.ListOf) and isinstance(
                field.item, filter_fields.Record
            ):
                compare(field.item, value[0])

    compare(*_sample_records()[name])


# -- against a real agent: Consul's documented examples -----------------------------


@pytest.fixture(scope="module")
def fresh() -> Iterator[httpx.Client]:
    """An agent of this module's own: the documented examples assume an empty catalog."""
    agent = AgentProcess(
        "--dev", "--http", "127.0.0.1:0", "--dns", "off", "--node", "agent-1"
    ).start()
    try:
        with agent.client() as http:
            _seed(http)
            yield http
    finally:
        assert agent.stop() == 0


def _seed(http: httpx.Client) -> None:
    """The data of Consul's filtering page (api-docs/features/filtering)."""
    for sid, port, tags, meta in (
        ("redis1", 1234, ["primary", "production"], {"env": "production", "foo": "bar"}),
        ("redis2", 1235, ["secondary", "production"], {"env": "production", "foo": "bar"}),
        ("redis3", 1234, ["primary", "qa"], {"env": "qa"}),
    ):
        body = {"ID": sid, "Name": "redis", "Tags": tags, "Meta": meta, "Port": port}
        if sid == "redis3":
            body["Check"] = {"TTL": "10m", "Status": "passing"}
        http.put("/v1/agent/service/register", json=body).raise_for_status()
    for node, address, node_meta, tags, env in (
        ("node-1", "198.18.0.1", {"agent": "true", "arch": "i386", "os": "darwin"}, ["tag"], "qa"),
        ("node-2", "198.18.0.2", {"arch": "arm", "os": "linux"}, ["test", "tag"], "production"),
        ("node-4", "198.18.0.4", {"arch": "i386", "os": "freebsd"}, [], "qa"),
    ):
        service = {
            "ID": "api-internal",
            "Service": "api-internal",
            "Tags": tags,
            "Meta": {"environment": env},
            "Port": 9090,
        }
        body = {"Node": node, "Address": address, "NodeMeta": node_meta, "Service": service}
        http.put("/v1/catalog/register", json=body).raise_for_status()
    checks = [
        {"CheckID": "node-health", "Name": "Node level check", "Status": "critical"},
        {
            "CheckID": "svc-web-health",
            "Name": "Service level check - web",
            "Status": "warning",
            "ServiceID": "web",
        },
    ]
    body = {
        "Node": "node-1",
        "Address": "198.18.0.1",
        "SkipNodeUpdate": True,
        "Service": {"ID": "web", "Service": "web", "Port": 80},
        "Checks": checks,
    }
    http.put("/v1/catalog/register", json=body).raise_for_status()


def test_documented_agent_services_example(fresh: httpx.Client) -> None:
    r = fresh.get("/v1/agent/services", params={"filter": 'Meta.env == "qa"'})
    assert r.status_code == 200, r.text
    assert list(r.json()) == ["redis3"]
    assert r.json()["redis3"]["Tags"] == ["primary", "qa"]


def test_documented_catalog_service_example(fresh: httpx.Client) -> None:
    r = fresh.get("/v1/catalog/service/api-internal", params={"filter": 'NodeMeta.os == "linux"'})
    assert [(row["Node"], row["ServiceTags"]) for row in r.json()] == [("node-2", ["test", "tag"])]


def test_documented_health_node_example(fresh: httpx.Client) -> None:
    r = fresh.get("/v1/health/node/node-1", params={"filter": 'ServiceName != ""'})
    assert [c["CheckID"] for c in r.json()] == ["svc-web-health"]


@pytest.mark.parametrize(
    ("path", "expression", "expected"),
    [
        ("/v1/catalog/nodes", "Meta.arch == i386", ["node-1", "node-4"]),
        ("/v1/catalog/services", '"test" in ServiceTags', {"api-internal": ["tag", "test"]}),
        (
            "/v1/catalog/services",
            'Node == "agent-1"',
            {"consul": [], "redis": ["primary", "production", "qa", "secondary"]},
        ),
        ("/v1/catalog/node/node-1", 'Service == "web"', ["web"]),
        (
            "/v1/health/service/api-internal",
            'Node.Meta.os matches "^(linux|freebsd)$"',
            ["node-2", "node-4"],
        ),
        ("/v1/health/service/redis", 'Service.Tags contains "qa"', ["redis3"]),
        ("/v1/health/checks/web", "Status == warning", ["svc-web-health"]),
        ("/v1/health/state/any", 'Node == "node-1" and ServiceID is empty', ["node-health"]),
        ("/v1/agent/checks", "Status == passing", ["service:redis3"]),
        (
            "/v1/agent/checks",
            'ServiceName == "web"',
            [],
        ),  # a catalog node's check, not this agent's
    ],
)
def test_every_filterable_endpoint(
    fresh: httpx.Client, path: str, expression: str, expected: object
) -> None:
    r = fresh.get(path, params={"filter": expression})
    assert r.status_code == 200, r.text
    assert _names(path, r.json()) == expected


def _names(path: str, body: Any) -> object:
    if path.startswith("/v1/catalog/services"):
        return body
    if path.startswith("/v1/catalog/node/"):
        return sorted(body["Services"])
    if path.startswith(("/v1/health/checks", "/v1/health/state", "/v1/agent/checks")):
        return sorted(c["CheckID"] for c in (body.values() if isinstance(body, dict) else body))
    if path == "/v1/health/service/redis":
        return [row["Service"]["ID"] for row in body]
    if path.startswith("/v1/health/service/"):
        return [row["Node"]["Node"] for row in body]
    return [row["Node"] for row in body]


@pytest.mark.parametrize(
    ("path", "expression", "expected"),
    [
        ("/v1/health/service/redis", 'any Service.Tags as t { t == "qa" }', ["redis3"]),
        ("/v1/health/service/redis", 'all Service.Tags as t { t != "qa" }', ["redis1", "redis2"]),
        (
            "/v1/health/service/redis",
            'any Service.Meta as k, v { k == "foo" and v == "bar" }',
            ["redis1", "redis2"],
        ),
        ("/v1/health/service/redis", '"/Service/Meta/env" == "qa"', ["redis3"]),
        ("/v1/catalog/nodes", '"/Meta/os" == "linux"', ["node-2"]),
        ("/v1/agent/services", 'any Tags as t { t == "secondary" }', ["redis2"]),
        ("/v1/catalog/service/api-internal", '"tag" in "/ServiceTags"', ["node-1", "node-2"]),
    ],
)
def test_collections_and_pointers_on_the_documented_data(
    fresh: httpx.Client, path: str, expression: str, expected: list[str]
) -> None:
    r = fresh.get(path, params={"filter": expression})
    assert r.status_code == 200, r.text
    if path == "/v1/agent/services":
        assert list(r.json()) == expected
    else:
        assert _names(path, r.json()) == expected


def test_a_bad_filter_is_a_400_before_any_wait(fresh: httpx.Client) -> None:
    index = fresh.get("/v1/health/service/redis").headers["x-consul-index"]
    r = fresh.get(
        "/v1/health/service/redis",
        params={"filter": "Service.Tags == primary", "index": index, "wait": "30s"},
        timeout=5,
    )
    assert r.status_code == 400
    assert "position 1: Service.Tags is a list" in r.text


@pytest.mark.parametrize(
    ("path", "node_meta", "expected"),
    [
        ("/v1/catalog/nodes", ["arch:i386"], ["node-1", "node-4"]),
        ("/v1/catalog/nodes", ["arch:i386", "os:freebsd"], ["node-4"]),  # every pair must hold
        ("/v1/catalog/service/api-internal", ["os:linux"], ["node-2"]),
        ("/v1/health/service/api-internal", ["arch:i386"], ["node-1", "node-4"]),
        ("/v1/catalog/services", ["os:linux"], {"api-internal": ["tag", "test"]}),
        ("/v1/health/checks/web", ["os:linux"], []),
        ("/v1/health/state/any", ["os:darwin"], ["node-health", "svc-web-health"]),
    ],
)
def test_node_meta(fresh: httpx.Client, path: str, node_meta: list[str], expected: object) -> None:
    r = fresh.get(path, params=[("node-meta", m) for m in node_meta])
    assert r.status_code == 200, r.text
    assert _names(path, r.json()) == expected


def test_node_meta_and_filter_together(fresh: httpx.Client) -> None:
    params = [("node-meta", "arch:i386"), ("filter", 'ServiceMeta.environment == "qa"')]
    rows = fresh.get("/v1/catalog/service/api-internal", params=params).json()
    assert [row["Node"] for row in rows] == ["node-1", "node-4"]
    params = [("node-meta", "arch:arm"), ("filter", 'ServiceMeta.environment == "qa"')]
    assert fresh.get("/v1/catalog/service/api-internal", params=params).json() == []


def test_a_filtered_read_blocks_and_wakes_like_any_other(fresh: httpx.Client) -> None:
    """The filter runs over the answer; the index and the wake-ups are the endpoint's."""
    params = {"filter": 'Service.Meta.env == "qa"'}
    first = fresh.get("/v1/health/service/redis", params=params)
    index = first.headers["x-consul-index"]
    body = {"ID": "redis4", "Name": "redis", "Meta": {"env": "qa"}, "Port": 1}
    fresh.put("/v1/agent/service/register", json=body).raise_for_status()
    woken = fresh.get("/v1/health/service/redis", params={**params, "index": index, "wait": "10s"})
    assert int(woken.headers["x-consul-index"]) > int(index)
    assert [row["Service"]["ID"] for row in woken.json()] == ["redis3", "redis4"]
    fresh.put("/v1/agent/service/deregister/redis4").raise_for_status()


def test_py_consul_filter_and_node_meta(fresh: httpx.Client) -> None:
    """py-consul's own parameters, unchanged: agent.services(filter_expr=...),
    catalog.nodes(node_meta=...), health.service(node_meta=...)."""
    import consul

    port = int(str(fresh.base_url).rsplit(":", 1)[1].rstrip("/"))
    c = consul.Consul(host="127.0.0.1", port=port)
    assert list(c.agent.services(filter_expr='"qa" in Tags')) == ["redis3"]
    some = 'any Tags as t { t == "primary" }'
    assert sorted(c.agent.services(filter_expr=some)) == ["redis1", "redis3"]
    _, nodes = c.catalog.nodes(node_meta={"arch": "i386", "os": "freebsd"})
    assert [n["Node"] for n in nodes] == ["node-4"]
    _, entries = c.health.service("api-internal", node_meta={"os": "linux"})
    assert [e["Node"]["Node"] for e in entries] == ["node-2"]
