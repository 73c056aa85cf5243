"""The HTTP API with a plain HTTP client: shapes, headers, blocking queries, bad input."""

from __future__ import annotations

import concurrent.futures
import socket
import time
from collections.abc import Callable

import httpx
import pytest

from ..agentproc import AgentProcess
from ..wait import until


@pytest.fixture
def http(agent: AgentProcess) -> httpx.Client:
    with agent.client() as client:
        yield client


def register(http: httpx.Client, body: dict, **params: str) -> httpx.Response:
    return http.put("/v1/agent/service/register", json=body, params=params)


def test_read_headers_and_content_type(http: httpx.Client, unique: str) -> None:
    r = http.get(f"/v1/health/service/{unique}")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert int(r.headers["x-consul-index"]) >= 1
    assert r.headers["x-consul-knownleader"] == "true"
    assert r.headers["x-consul-lastcontact"] == "0"
    assert r.json() == []


def test_every_answer_names_the_default_acl_policy(http: httpx.Client, unique: str) -> None:
    """`X-Consul-Default-ACL-Policy`, as Consul 1.9+ sends on every answer
    (`allow` with ACLs off): the fast read path, the normal path, a write, an
    error, the agent's own endpoints."""
    register(http, {"Name": unique, "ID": f"{unique}-1"})
    answers = [
        http.get(f"/v1/health/service/{unique}"),
        http.get(f"/v1/health/checks/{unique}"),
        http.put("/v1/agent/service/register", json={"Name": unique, "ID": f"{unique}-1"}),
        http.get("/v1/no/such/endpoint"),
        http.get("/v1/agent/self"),
    ]
    for r in answers:
        assert r.headers["x-consul-default-acl-policy"] == "allow", r.request.url


def test_case_insensitive_snake_case_and_nanosecond_durations(
    http: httpx.Client, unique: str
) -> None:
    body = {
        "name": unique,
        "id": f"{unique}-1",
        "port": 81,
        "TAGS": ["a"],
        "weights": {"passing": 5, "warning": 2},
        "check": {
            "ttl": 30_000_000_000,
            "deregister_critical_service_after": "1m30s",
            "status": "passing",
        },
    }
    assert register(http, body).status_code == 200
    (row,) = http.get(f"/v1/health/service/{unique}").json()
    assert row["Service"]["Weights"] == {"Passing": 5, "Warning": 2}
    assert row["Service"]["Tags"] == ["a"]
    check = row["Checks"][1]
    assert check["Status"] == "passing"
    assert check["Definition"]["TTL"] == "30s"
    assert check["Definition"]["DeregisterCriticalServiceAfter"] == "1m30s"


def test_health_service_shape_matches_consul(http: httpx.Client, unique: str) -> None:
    register(
        http,
        {
            "Name": unique,
            "ID": f"{unique}-1",
            "Address": "10.0.0.5",
            "Port": 3000,
            "Meta": {"Version": "2"},
            "TaggedAddresses": {"lan": {"Address": "10.0.0.5", "Port": 3000}},
        },
    )
    (row,) = http.get(f"/v1/health/service/{unique}").json()
    assert set(row) == {"Node", "Service", "Checks"}
    assert {"ID", "Node", "Address", "Datacenter", "TaggedAddresses", "Meta"} <= set(row["Node"])
    assert {
        "ID",
        "Service",
        "Tags",
        "Address",
        "TaggedAddresses",
        "Meta",
        "Port",
        "Weights",
    } <= set(row["Service"])
    assert row["Service"]["Meta"] == {"Version": "2"}  # user map keys keep their case
    assert row["Service"]["TaggedAddresses"]["lan"] == {"Address": "10.0.0.5", "Port": 3000}
    check_fields = {
        "Node",
        "CheckID",
        "Name",
        "Status",
        "Notes",
        "Output",
        "ServiceID",
        "ServiceName",
        "ServiceTags",
    }
    assert all(check_fields <= set(c) for c in row["Checks"])
    (flat,) = http.get(f"/v1/catalog/service/{unique}").json()
    assert flat["ServiceAddress"] == "10.0.0.5"
    assert flat["ServicePort"] == 3000
    assert flat["ServiceWeights"] == {"Passing": 1, "Warning": 1}
    assert flat["Node"] == "test-node"


def test_passing_filter_counts_warning_and_node_checks(http: httpx.Client, unique: str) -> None:
    register(
        http, {"Name": unique, "ID": f"{unique}-1", "Check": {"TTL": "1m", "Status": "warning"}}
    )
    register(
        http, {"Name": unique, "ID": f"{unique}-2", "Check": {"TTL": "1m", "Status": "passing"}}
    )
    for flag in ("", "1", "true", "T", "TRUE"):
        rows = http.get(f"/v1/health/service/{unique}?passing={flag}").json()
        assert [r["Service"]["ID"] for r in rows] == [f"{unique}-2"]
    assert len(http.get(f"/v1/health/service/{unique}").json()) == 2
    for flag in ("0", "f", "False"):  # Go's ParseBool, as Consul reads ?passing
        assert len(http.get(f"/v1/health/service/{unique}?passing={flag}").json()) == 2
    for flag in ("nope", "yes", "no"):
        r = http.get(f"/v1/health/service/{unique}?passing={flag}")
        assert (r.status_code, r.text) == (400, "Invalid value for ?passing"), flag


def test_multiple_tags_must_all_match(http: httpx.Client, unique: str) -> None:
    register(http, {"Name": unique, "ID": "a", "Tags": ["x", "y"]})
    register(http, {"Name": unique, "ID": "b", "Tags": ["x"]})
    rows = http.get(f"/v1/health/service/{unique}", params=[("tag", "x"), ("tag", "y")]).json()
    assert [r["Service"]["ID"] for r in rows] == ["a"]


def test_a_tag_matches_whatever_its_case_as_in_consul(http: httpx.Client, unique: str) -> None:
    """Consul's tag filter compares lowercased tags (a scrape config's `tags:`
    in another case than the registration's must still find its targets)."""
    register(http, {"Name": unique, "ID": "a", "Tags": ["Primary", "v1"]})
    register(http, {"Name": unique, "ID": "b", "Tags": ["v1"]})
    for path in (f"/v1/health/service/{unique}", f"/v1/catalog/service/{unique}"):
        rows = http.get(path, params=[("tag", "PRIMARY"), ("tag", "V1")]).json()
        ids = [r["Service"]["ID"] if "Service" in r else r["ServiceID"] for r in rows]
        assert ids == ["a"], path


def test_enterprise_namespaces_and_partitions_are_refused_as_consul_oss_does(
    http: httpx.Client, unique: str
) -> None:
    register(http, {"Name": unique, "ID": "a"})
    for path in (f"/v1/health/service/{unique}", f"/v1/catalog/service/{unique}", "/v1/kv/x"):
        r = http.get(path, params={"ns": "team-a"})
        assert r.status_code == 400, path
        assert (
            r.text == 'Invalid query parameter: "ns" - Namespaces are a Consul Enterprise feature'
        )
        r = http.get(path, params={"partition": "p1"})
        assert r.status_code == 400 and "Partitions are a Consul Enterprise feature" in r.text
    r = http.put("/v1/agent/service/register?ns=team-a", json={"Name": f"{unique}-ns"})
    assert r.status_code == 400
    assert f"{unique}-ns" not in http.get("/v1/agent/services").json()  # nothing written
    assert http.get(f"/v1/health/service/{unique}", params={"ns": ""}).status_code == 200
    # Their headers too (the fast path's health read included), checked first, as Consul OSS does.
    for path in (f"/v1/health/service/{unique}", f"/v1/catalog/service/{unique}", "/v1/kv/x"):
        r = http.get(path, headers={"X-Consul-Namespace": "team-a"}, params={"ns": "team-a"})
        assert (r.status_code, r.text) == (
            400,
            'Invalid header: "X-Consul-Namespace" - Namespaces are a Consul Enterprise feature',
        ), path
        r = http.get(path, headers={"X-Consul-Partition": "p1"})
        assert (r.status_code, r.text) == (
            400,
            'Invalid header: "X-Consul-Partition" - Partitions are a Consul Enterprise feature',
        ), path
    body = {"Name": f"{unique}-hdr"}
    r = http.put("/v1/agent/service/register", json=body, headers={"X-Consul-Namespace": "x"})
    assert r.status_code == 400
    assert f"{unique}-hdr" not in http.get("/v1/agent/services").json()  # nothing written
    r = http.get(f"/v1/health/service/{unique}", headers={"X-Consul-Namespace": ""})
    assert r.status_code == 200  # an empty header names nothing (Header.Get returns "")


def test_replace_existing_checks(http: httpx.Client, unique: str) -> None:
    sid = f"{unique}-1"
    register(
        http,
        {
            "Name": unique,
            "ID": sid,
            "Checks": [{"CheckID": "c1", "TTL": "1m"}, {"CheckID": "c2", "TTL": "1m"}],
        },
    )
    register(http, {"Name": unique, "ID": sid, "Checks": [{"CheckID": "c1", "TTL": "1m"}]})
    assert {"c1", "c2"} <= set(http.get("/v1/agent/checks").json())
    register(
        http,
        {"Name": unique, "ID": sid, "Checks": [{"CheckID": "c1", "TTL": "1m"}]},
        **{"replace-existing-checks": "true"},
    )
    checks = http.get("/v1/agent/checks").json()
    assert "c1" in checks and "c2" not in checks


def test_check_register_update_and_deregister(http: httpx.Client, unique: str) -> None:
    register(http, {"Name": unique, "ID": f"{unique}-1"})
    cid = f"{unique}-ttl"
    r = http.put(
        "/v1/agent/check/register", json={"Name": cid, "ServiceID": f"{unique}-1", "TTL": "1m"}
    )
    assert r.status_code == 200, r.text
    assert (
        http.put(
            f"/v1/agent/check/update/{cid}", json={"Status": "warning", "Output": "disk 91%"}
        ).status_code
        == 200
    )
    check = http.get("/v1/agent/checks").json()[cid]
    assert (check["Status"], check["Output"], check["ServiceName"]) == (
        "warning",
        "disk 91%",
        unique,
    )
    assert http.put(f"/v1/agent/check/update/{cid}", json={"Status": "sideways"}).status_code == 400
    assert http.put(f"/v1/agent/check/deregister/{cid}").status_code == 200
    assert http.put(f"/v1/agent/check/deregister/{cid}").status_code == 404


def test_blocking_query_returns_on_change_only_for_its_service(
    agent: AgentProcess, unique: str
) -> None:
    other = unique + "-other"
    with agent.client() as http:
        register(http, {"Name": unique, "ID": f"{unique}-1"})
        index = int(http.get(f"/v1/health/service/{unique}").headers["x-consul-index"])
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            waiting = pool.submit(
                http.get, f"/v1/health/service/{unique}", params={"index": index, "wait": "3s"}
            )
            time.sleep(0.3)
            with agent.client() as writer:
                register(writer, {"Name": other, "ID": f"{other}-1"})  # must not wake it
                time.sleep(0.3)
                assert not waiting.done()
                register(writer, {"Name": unique, "ID": f"{unique}-2"})
            r = waiting.result(10)
        assert time.monotonic() - started < 2.5
        assert int(r.headers["x-consul-index"]) > index
        assert len(r.json()) == 2


@pytest.mark.parametrize(
    "path", ["/v1/health/service/{}", "/v1/catalog/service/{}", "/v1/health/service/{}?stale"]
)
def test_wait_0s_blocks_for_the_default_wait(agent: AgentProcess, unique: str, path: str) -> None:
    """`?wait=0s` is Consul's default wait (5 minutes), not an answer at once:
    a watcher that sends it must not spin (the fast path's two routes, and
    the normal path: `?stale` is not a parameter the fast path takes)."""
    url = path.format(unique)
    with agent.client() as http:
        register(http, {"Name": unique, "ID": f"{unique}-1"})
        index = int(http.get(url).headers["x-consul-index"])
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(http.get, url, params={"index": index, "wait": "0s"})
            time.sleep(0.5)
            assert not waiting.done()  # parked, as with no ?wait= at all
            with agent.client() as writer:
                register(writer, {"Name": unique, "ID": f"{unique}-2"})
            r = waiting.result(10)
        assert int(r.headers["x-consul-index"]) > index


@pytest.mark.parametrize(
    ("query", "mode"),
    [
        ("", "leader"),  # the fast path's answer
        ("?leader", "leader"),
        ("?stale", "stale"),
        ("?max_stale=10s", "stale"),
        ("?max_stale=0s", "leader"),
        ("?consistent", "consistent"),
    ],
)
def test_reads_name_their_consistency_mode(
    http: httpx.Client, unique: str, query: str, mode: str
) -> None:
    """`X-Consul-Effective-Consistency`, as Consul sends it on every catalog,
    health, KV and session read."""
    register(http, {"Name": unique, "ID": f"{unique}-1"})
    http.put(f"/v1/kv/{unique}", content=b"v")
    for path in (
        f"/v1/health/service/{unique}",
        f"/v1/catalog/service/{unique}",
        f"/v1/kv/{unique}",
    ):
        r = http.get(path + query)
        assert r.status_code == 200, r.text
        assert r.headers["x-consul-effective-consistency"] == mode, path
    blocked = http.get(f"/v1/health/service/{unique}{query}")
    index = blocked.headers["x-consul-index"]
    sep = "&" if query else "?"
    r = http.get(f"/v1/health/service/{unique}{query}{sep}index={index}&wait=50ms")
    assert r.headers["x-consul-effective-consistency"] == mode  # a blocking read's too


def test_blocking_query_times_out_with_same_index(http: httpx.Client, unique: str) -> None:
    index = http.get(f"/v1/health/service/{unique}").headers["x-consul-index"]
    started = time.monotonic()
    r = http.get(f"/v1/health/service/{unique}", params={"index": index, "wait": "400ms"})
    elapsed = time.monotonic() - started
    assert r.headers["x-consul-index"] == index
    assert (
        0.39 <= elapsed < 0.4 * (1 + 1 / 16) + 1.0
    )  # wait plus at most wait/16 jitter (plus slack)


def test_nonexistent_service_has_stable_index(http: httpx.Client, unique: str) -> None:
    first = http.get(f"/v1/health/service/{unique}-none").headers["x-consul-index"]
    register(http, {"Name": unique, "ID": f"{unique}-1"})
    assert http.get(f"/v1/health/service/{unique}-none").headers["x-consul-index"] == first


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v1/agent/service/register", {"Port": 1}, 400, "Missing service name"),
        (
            "/v1/agent/service/register",
            {"Name": "x", "Port": -1},
            400,
            "Port must be between 0 and 65535",
        ),
        ("/v1/agent/service/register", {"Name": "x", "Port": "80"}, 400, "Expected `int`"),
        (
            "/v1/agent/service/register",
            {"Name": "x", "Check": {"TTL": "10s", "Interval": "10s"}},
            400,
            "Interval and TTL",
        ),
        (
            "/v1/agent/service/register",
            {"Name": "x", "Check": {"TTL": "ten seconds"}},
            400,
            "invalid duration",
        ),
        (
            "/v1/agent/service/register",
            {"Name": "x", "Check": {"Interval": "10s"}},
            400,
            "one of TTL, HTTP",
        ),
        (
            "/v1/agent/service/register",
            {"Name": "x", "Check": {"HTTP": "http://h/", "TCP": "h:1", "Interval": "1s"}},
            400,
            "one type",
        ),
        (
            "/v1/agent/service/register",
            {"Name": "x", "Check": {"HTTP": "http://h/"}},
            400,
            "Interval must be > 0",
        ),
        (
            "/v1/agent/service/register",
            {"Name": "x", "Check": {"HTTP": "ftp://h/", "Interval": "1s"}},
            400,
            "http:// or https://",
        ),
        (
            "/v1/agent/service/register",
            {"Name": "x", "Check": {"Args": ["true"], "Interval": "1s"}},
            400,
            "Scripts are disabled",
        ),
        (
            "/v1/agent/service/register",
            {"Name": "x", "Check": {"TTL": "1s", "Status": "great"}},
            400,
            "Invalid check status",
        ),
        (
            "/v1/agent/service/register",
            {"Name": "x", "Weights": {"Passing": 0}},
            400,
            "Passing must be greater than 0",
        ),
        ("/v1/agent/check/register", {"TTL": "1s"}, 400, "Missing check name"),
        (
            "/v1/agent/check/register",
            {"Name": "c", "TTL": "1s", "ServiceID": "ghost"},
            404,
            'ServiceID "ghost" does not exist',
        ),
        ("/v1/catalog/register", {"Address": "1.2.3.4"}, 400, "Must provide node"),
        ("/v1/catalog/deregister", {"Node": "ghost-node"}, 404, "Unknown node"),
    ],
)
def test_bad_input_is_a_clear_4xx_and_writes_nothing(
    http: httpx.Client, path: str, body: dict, status: int, message: str
) -> None:
    before = http.get("/v1/catalog/services").headers["x-consul-index"]
    r = http.put(path, json=body)
    assert r.status_code == status, r.text
    assert message in r.text
    assert http.get("/v1/catalog/services").headers["x-consul-index"] == before


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("PUT", "/v1/agent/service/deregister/ghost", 404, 'Unknown service ID "ghost"'),
        ("PUT", "/v1/agent/check/pass/ghost", 404, 'Unknown check ID "ghost"'),
        ("PUT", "/v1/agent/service/maintenance/ghost?enable=true", 404, "Unknown service ID"),
        ("PUT", "/v1/agent/maintenance", 400, "Missing value for enable"),
        ("PUT", "/v1/agent/maintenance?enable=maybe", 400, "Invalid value for enable"),
        ("GET", "/v1/agent/service/ghost", 404, "unknown service ID"),
        ("GET", "/v1/health/service/x?index=abc", 400, "Invalid index"),
        ("GET", "/v1/health/service/x?index=1&wait=forever", 400, "Invalid wait time"),
        ("GET", "/v1/health/service/x?stale&consistent", 400, "conflicting"),
        ("GET", "/v1/health/service/x?max_stale=5s&consistent", 400, "conflicting"),
        ("GET", "/v1/kv/x?max_stale=soon", 400, 'Invalid max_stale value "soon"'),
        ("GET", "/v1/health/state/sideways", 400, "Invalid state"),
        ("GET", "/v1/agent/service/register", 405, "not allowed"),
        ("GET", "/v1/no/such/endpoint", 404, "no endpoint"),
    ],
)
def test_bad_requests(
    http: httpx.Client, method: str, path: str, status: int, message: str
) -> None:
    r = http.request(method, path)
    assert r.status_code == status, r.text
    assert message in r.text


def test_malformed_json_and_wrong_shapes(http: httpx.Client) -> None:
    for raw in (b"{", b"[1, 2]", b'"name"', b"\xff\xfe", b'{"Name": "x", "Tags": "notalist"}'):
        r = http.put("/v1/agent/service/register", content=raw)
        assert r.status_code == 400, (raw, r.text)
        assert "Request decode failed" in r.text


def test_body_too_large_is_413(http: httpx.Client) -> None:
    r = http.put("/v1/agent/service/register", content=b"{" + b" " * (1 << 20) + b"}")
    assert r.status_code == 413
    assert "too large" in r.text


def test_abandoned_client_mid_body_does_not_block_others(
    agent: AgentProcess, http: httpx.Client
) -> None:
    """A client that sends headers promising a body and then goes silent."""
    host, port = "127.0.0.1", agent.http_port
    stalled = []
    for _ in range(20):
        s = socket.create_connection((host, port))
        s.sendall(
            b"PUT /v1/agent/service/register HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"
        )
        stalled.append(s)
    try:
        assert http.get("/v1/status/leader").status_code == 200
    finally:
        for s in stalled:
            s.close()


def test_metrics_and_ui(http: httpx.Client) -> None:
    text = http.get("/metrics").text
    assert "waypost_http_requests_total" in text
    assert "waypost_catalog_instances" in text
    assert http.get("/ui/").headers["content-type"].startswith("text/html")


def test_slow_clients_are_closed_after_the_read_deadline(tmp_path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("http_read_timeout = 0.5\n")
    slow = AgentProcess(
        "--dev", "--config-file", str(config), "--http", "127.0.0.1:0", "--dns", "off"
    ).start()
    try:
        silent = socket.create_connection(("127.0.0.1", slow.http_port))
        dribble = socket.create_connection(("127.0.0.1", slow.http_port))
        dribble.sendall(
            b"GET /v1/status/leader HTTP/1.1\r\nHost: x\r\n"
        )  # never finishes its headers
        stalled = socket.create_connection(("127.0.0.1", slow.http_port))
        stalled.sendall(
            b"PUT /v1/agent/service/register HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
        )
        for s in (silent, dribble, stalled):
            s.settimeout(5)
            started = time.monotonic()
            assert s.recv(1024) == b""  # closed by the agent
            assert time.monotonic() - started < 4
            s.close()
        with slow.client() as http:  # a prompt client is served as usual
            assert http.get("/v1/status/leader").status_code == 200
    finally:
        slow.stop()


def test_ui_service_summaries(http: httpx.Client, unique: str) -> None:
    register(
        http,
        {
            "Name": unique,
            "ID": f"{unique}-1",
            "Tags": ["t"],
            "Check": {"TTL": "1m", "Status": "passing"},
        },
    )
    register(
        http, {"Name": unique, "ID": f"{unique}-2", "Check": {"TTL": "1m", "Status": "warning"}}
    )
    r = http.get("/v1/internal/ui/services")
    assert int(r.headers["x-consul-index"]) >= 1
    (row,) = [s for s in r.json() if s["Name"] == unique]
    assert row["Tags"] == ["t"]
    assert (
        row["InstanceCount"],
        row["InstancesPassing"],
        row["InstancesWarning"],
        row["InstancesCritical"],
    ) == (2, 1, 1, 0)
    assert (row["ChecksPassing"], row["ChecksWarning"]) == (
        3,
        1,
    )  # serfHealth counts once per instance


def test_node_maintenance_takes_every_instance_out_of_passing(
    http: httpx.Client, unique: str
) -> None:
    register(
        http, {"Name": unique, "ID": f"{unique}-1", "Check": {"TTL": "1m", "Status": "passing"}}
    )
    assert len(http.get(f"/v1/health/service/{unique}?passing").json()) == 1
    assert (
        http.put("/v1/agent/maintenance", params={"enable": "true", "reason": "kernel"}).status_code
        == 200
    )
    try:
        assert http.get(f"/v1/health/service/{unique}?passing").json() == []
        notes = http.get("/v1/agent/checks").json()["_node_maintenance"]["Notes"]
        assert notes == "kernel"
    finally:
        assert http.put("/v1/agent/maintenance", params={"enable": "false"}).status_code == 200
    assert len(http.get(f"/v1/health/service/{unique}?passing").json()) == 1


def test_abandoned_long_polls_stop_waiting_when_the_client_goes(
    agent: AgentProcess, unique: str
) -> None:
    """Clients that open blocking queries and drop them must not pile up parked tasks."""

    def parked(http: httpx.Client) -> float:
        for line in http.get("/metrics").text.splitlines():
            if line.startswith("waypost_catalog_parked_queries "):
                return float(line.split()[1])
        raise AssertionError("no parked_queries metric")

    with agent.client() as http:
        index = http.get(f"/v1/health/service/{unique}").headers["x-consul-index"]
        base = parked(http)
        sockets = []
        for _ in range(50):
            s = socket.create_connection(("127.0.0.1", agent.http_port))
            s.sendall(
                f"GET /v1/health/service/{unique}?index={index}&wait=10m HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            )
            sockets.append(s)
        until(lambda: parked(http) >= base + 50)
        for s in sockets:
            s.close()
        until(lambda: parked(http) == base, timeout=5)


def test_reregistration_keeps_status_unless_the_body_gives_one(
    http: httpx.Client, unique: str
) -> None:
    sid = f"{unique}-1"
    register(
        http,
        {"Name": unique, "ID": sid, "Check": {"CheckID": "c", "TTL": "1m", "Status": "passing"}},
    )
    register(http, {"Name": unique, "ID": sid, "Check": {"CheckID": "c", "TTL": "1m"}})
    assert http.get("/v1/agent/checks").json()["c"]["Status"] == "passing"  # kept
    register(
        http,
        {"Name": unique, "ID": sid, "Check": {"CheckID": "c", "TTL": "1m", "Status": "critical"}},
    )
    assert http.get("/v1/agent/checks").json()["c"]["Status"] == "critical"  # given explicitly


def test_tag_lists_and_a_tag_with_a_comma_are_different_questions(
    http: httpx.Client, unique: str
) -> None:
    register(http, {"Name": unique, "ID": "both", "Tags": ["a", "b"]})
    register(http, {"Name": unique, "ID": "comma", "Tags": ["a,b"]})
    both = http.get(f"/v1/catalog/service/{unique}", params=[("tag", "a"), ("tag", "b")]).json()
    comma = http.get(f"/v1/catalog/service/{unique}", params={"tag": "a,b"}).json()
    assert [r["ServiceID"] for r in both] == ["both"]
    assert [r["ServiceID"] for r in comma] == ["comma"]


def test_ids_are_percent_decoded_once(http: httpx.Client, unique: str) -> None:
    register(http, {"Name": unique, "ID": "a%41"})
    assert http.put("/v1/agent/service/deregister/a%2541").status_code == 200
    assert http.get(f"/v1/catalog/service/{unique}").json() == []


# -- a write that changes nothing moves no index and wakes nobody (as in Consul) --

WAIT = 1.0  # the blocking reads below: a no-op write must leave them to time out


def blocked(
    agent: AgentProcess, path: str, index: str, write: Callable[[httpx.Client], object]
) -> tuple[float, httpx.Response]:
    """A blocking read of `path` at `index`, and `write` made while it waits:
    how long the read took, and its answer."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    with agent.client() as reader, agent.client() as writer, pool:
        started = time.monotonic()
        waiting = pool.submit(reader.get, path, params={"index": index, "wait": f"{WAIT}s"})
        time.sleep(0.2)
        write(writer)
        r = waiting.result(10)
    return time.monotonic() - started, r


def timed_out(elapsed: float, r: httpx.Response, index: str) -> bool:
    return elapsed >= WAIT * 0.95 and r.headers["x-consul-index"] == index


def woken(elapsed: float, r: httpx.Response, index: str) -> bool:
    return elapsed < WAIT * 0.9 and int(r.headers["x-consul-index"]) > int(index)


def web_body(name: str, **change: object) -> dict[str, object]:
    body: dict[str, object] = {
        "Name": name,
        "ID": f"{name}-1",
        "Port": 80,
        "Tags": ["a"],
        "Meta": {"v": "1"},
        "Checks": [
            {"CheckID": f"{name}-given", "TTL": "1m", "Status": "passing"},
            {"CheckID": f"{name}-kept", "TTL": "1m"},  # keeps the status a heartbeat gave it
        ],
    }
    return {**body, **change}


def test_an_identical_agent_reregistration_moves_no_index_and_wakes_nobody(
    agent: AgentProcess, unique: str
) -> None:
    path = f"/v1/health/service/{unique}"
    with agent.client() as http:
        assert register(http, web_body(unique)).status_code == 200
        assert http.put(f"/v1/agent/check/pass/{unique}-kept").status_code == 200
        index = http.get(path).headers["x-consul-index"]
        (instance,) = http.get(f"/v1/catalog/service/{unique}").json()

        def again(w: httpx.Client) -> httpx.Response:
            return register(w, web_body(unique))

        elapsed, r = blocked(agent, path, index, again)
        assert timed_out(elapsed, r, index), (elapsed, r.headers["x-consul-index"], index)
        assert [c["Status"] for c in r.json()[0]["Checks"][1:]] == ["passing", "passing"]
        assert again(http).status_code == 200 and again(http).text == ""  # as Consul answers
        assert http.get(path).headers["x-consul-index"] == index
        (after,) = http.get(f"/v1/catalog/service/{unique}").json()
        assert after["ModifyIndex"] == instance["ModifyIndex"]


@pytest.mark.parametrize(
    ("change", "params"),
    [
        ({"Tags": ["b"]}, {}),
        ({"Checks": [{"CheckID": "{name}-given", "TTL": "2m", "Status": "passing"}]}, {}),
        (
            {"Checks": [{"CheckID": "{name}-given", "TTL": "1m", "Status": "passing"}]},
            {"replace-existing-checks": "true"},  # {name}-kept goes
        ),
    ],
    ids=["tag", "check-definition", "check-removed"],
)
def test_a_reregistration_that_changes_something_moves_the_index_and_wakes(
    agent: AgentProcess, unique: str, change: dict[str, object], params: dict[str, str]
) -> None:
    path = f"/v1/health/service/{unique}"
    change = with_name(change, unique)

    def changed(w: httpx.Client) -> httpx.Response:
        return register(w, web_body(unique, **change), **params)

    with agent.client() as http:
        register(http, web_body(unique))
        index = http.get(path).headers["x-consul-index"]
        elapsed, r = blocked(agent, path, index, changed)
        assert woken(elapsed, r, index), (elapsed, r.headers["x-consul-index"], index)


def with_name(change: dict[str, object], name: str) -> dict[str, object]:
    """`change` with `{name}` in its check IDs filled in."""
    checks = change.get("Checks")
    if not isinstance(checks, list):
        return change
    return {**change, "Checks": [{**c, "CheckID": c["CheckID"].format(name=name)} for c in checks]}


def test_an_identical_catalog_registration_moves_no_index(agent: AgentProcess, unique: str) -> None:
    body = {
        "Node": f"{unique}-ext",
        "Address": "10.0.0.9",
        "NodeMeta": {"rack": "r1"},
        "Service": {"Service": unique, "ID": f"{unique}-e1", "Port": 5432, "Tags": ["x"]},
        "Check": {"Name": "alive", "ServiceID": f"{unique}-e1", "Status": "passing"},
    }
    path = f"/v1/health/service/{unique}"
    with agent.client() as http:
        assert http.put("/v1/catalog/register", json=body).json() is True
        index = http.get(path).headers["x-consul-index"]
        node_before = http.get(f"/v1/catalog/node/{unique}-ext").json()["Node"]["ModifyIndex"]

        def again(w: httpx.Client, body: dict[str, object] = body) -> httpx.Response:
            return w.put("/v1/catalog/register", json=body)

        elapsed, r = blocked(agent, path, index, again)
        assert timed_out(elapsed, r, index), (elapsed, r.headers["x-consul-index"], index)
        assert again(http).json() is True
        node_after = http.get(f"/v1/catalog/node/{unique}-ext").json()["Node"]["ModifyIndex"]
        assert node_after == node_before
        moved = {**body, "NodeMeta": {"rack": "r2"}}  # a change of the node: health shows it
        elapsed, r = blocked(agent, path, index, lambda w: again(w, moved))
        assert woken(elapsed, r, index), (elapsed, r.headers["x-consul-index"], index)


def test_a_kv_put_of_the_same_value_and_flags_moves_no_index(
    agent: AgentProcess, unique: str
) -> None:
    """Consul's kvsSetTxn skips a set equal to the entry: ModifyIndex stays."""
    path = f"/v1/kv/{unique}/k"
    with agent.client() as http:
        assert http.put(path, content=b"v", params={"flags": "3"}).json() is True
        r = http.get(path)
        (entry,) = r.json()
        index = r.headers["x-consul-index"]

        def put(w: httpx.Client, flags: str = "3") -> httpx.Response:
            return w.put(path, content=b"v", params={"flags": flags})

        elapsed, r = blocked(agent, path, index, put)
        assert timed_out(elapsed, r, index), (elapsed, r.headers["x-consul-index"], index)
        assert put(http).json() is True
        assert http.get(path).json()[0]["ModifyIndex"] == entry["ModifyIndex"]
        elapsed, r = blocked(agent, path, index, lambda w: put(w, "4"))  # other flags: a change
        assert woken(elapsed, r, index), (elapsed, r.headers["x-consul-index"], index)
        assert r.json()[0]["Flags"] == 4


def test_an_output_only_update_shows_on_every_read(http: httpx.Client, unique: str) -> None:
    """A check's new output at the same status commits nothing (no new index),
    yet every read shows it at once: the fast path's prebuilt answers, the
    normal path's encoded-answer cache and the agent's own view agree."""
    register(http, {"Name": unique, "ID": f"{unique}-1"})
    cid = f"{unique}-ttl"
    http.put(
        "/v1/agent/check/register", json={"Name": cid, "ServiceID": f"{unique}-1", "TTL": "1m"}
    )
    reads = {
        "fast": (f"/v1/health/service/{unique}", lambda b: b[0]["Checks"][-1]["Output"]),
        "normal": (f"/v1/health/checks/{unique}", lambda b: b[0]["Output"]),
        "filtered": (
            f'/v1/health/service/{unique}?filter=Service.ID!=""',
            lambda b: b[0]["Checks"][-1]["Output"],
        ),
        "agent": ("/v1/agent/checks", lambda b: b[cid]["Output"]),
    }
    for note in ("one", "two", "three"):
        assert http.put(f"/v1/agent/check/pass/{cid}", params={"note": note}).status_code == 200
        for name, (path, output) in reads.items():
            for _ in range(2):  # the second read of each comes from its cache
                assert output(http.get(path).json()) == note, (name, note)


def test_agent_service_blocks_on_its_content_hash(agent: AgentProcess, unique: str) -> None:
    """Consul's hash-based blocking on `/v1/agent/service/<id>` (the Go client's
    `WaitHash`): `?hash=` holds the read while the content hashes the same,
    another instance's change included, and answers when this one changes."""
    url = f"/v1/agent/service/{unique}-1"
    with agent.client() as http:
        register(http, {"Name": unique, "ID": f"{unique}-1", "Tags": ["a"]})
        first = http.get(url)
        digest = first.headers["x-consul-contenthash"]
        assert len(digest) == 16 and first.json()["Tags"] == ["a"]
        assert http.get(url).headers["x-consul-contenthash"] == digest  # stable
        other = http.get(url, params={"hash": "0123456789abcdef"})  # not its hash: at once
        assert other.headers["x-consul-contenthash"] == digest
        timed_out = http.get(url, params={"hash": digest, "wait": "300ms"})
        assert timed_out.headers["x-consul-contenthash"] == digest
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(http.get, url, params={"hash": digest, "wait": "20s"})
            with agent.client() as writer:
                register(writer, {"Name": unique, "ID": f"{unique}-2"})  # the node moves
                time.sleep(0.5)
                assert not waiting.done()  # but this instance's content did not
                register(writer, {"Name": unique, "ID": f"{unique}-1", "Tags": ["b"]})
            changed = waiting.result(10)
        assert changed.json()["Tags"] == ["b"]
        assert changed.headers["x-consul-contenthash"] != digest
        bad = http.get(url, params={"hash": digest, "wait": "forever"})
        assert bad.status_code == 400 and "Invalid wait time" in bad.text
