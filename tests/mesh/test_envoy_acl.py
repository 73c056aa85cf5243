"""The mesh with ACLs on (`--acl-default-policy deny`): intentions default to
deny everywhere, and the xDS port wants a token (and offers TLS).

One agent with ACLs and `--grpc-tls` (a certificate from a CA made here),
one real Envoy, db's sidecar, reached over TLS with a token that may run
it; the test itself calls as "web" with a leaf of the mesh's CA. Streams
that must be refused are opened with a grpcio ADS client, and once by a
real Envoy with the wrong token.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
import trustme

from waypost.mesh import rbac

from ..agentproc import AgentProcess
from ..servers import free_port
from .adsclient import AdsClient, names_of, r
from .envoyproc import App, EnvoyProcess, agent_with_xds
from .test_envoy import tls_get, within

MGMT = "0f6d2a9c-3b1e-4f7a-8c5d-2e9b4a6c1d03"


@dataclass
class AclMesh:
    agent: AgentProcess
    admin: httpx.Client
    ca_file: str
    folder: Path
    db_token: str
    web_token: str
    app: App
    sidecar_port: int
    envoy: EnvoyProcess | None = None


def _token(admin: httpx.Client, service: str) -> str:
    """A token with Consul's service identity for `service` (write on it and its sidecar)."""
    answer = admin.put("/v1/acl/token", json={"ServiceIdentities": [{"ServiceName": service}]})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["SecretID"])


@pytest.fixture(scope="module")
def acl_mesh() -> Iterator[AclMesh]:
    folder = Path(tempfile.mkdtemp(prefix="mesh-acl-"))
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    leaf.cert_chain_pems[0].write_to_path(str(folder / "agent.pem"))
    leaf.private_key_pem.write_to_path(str(folder / "agent-key.pem"))
    agent = agent_with_xds(
        "acl-mesh",
        "--grpc-tls",
        "127.0.0.1:0",
        "--tls-cert-file",
        str(folder / "agent.pem"),
        "--tls-key-file",
        str(folder / "agent-key.pem"),
        "--acl-default-policy",
        "deny",
        env={"WAYPOST_ACL_TOKEN_INITIAL_MANAGEMENT": MGMT},
    ).start()
    admin = agent.client(headers={"X-Consul-Token": MGMT})
    app = App("db").start()
    m = AclMesh(
        agent,
        admin,
        str(folder / "ca.pem"),
        folder,
        _token(admin, "db"),
        _token(admin, "web"),
        app,
        free_port(),
    )
    try:
        assert agent.grpc_tls_address
        assert (
            admin.put(
                "/v1/agent/service/register",
                json={
                    "Name": "db",
                    "Port": app.port,
                    "Connect": {
                        "SidecarService": {
                            "Port": m.sidecar_port,
                            "Proxy": {"Config": {"protocol": "http"}},
                        }
                    },
                },
            ).status_code
            == 200
        )
        m.envoy = EnvoyProcess(
            "connect",
            "envoy",
            "-sidecar-for",
            "db",
            "-token",
            m.db_token,
            "-ca-file",
            m.ca_file,
            http_url=agent.http_url,
            grpc_address=f"https://{agent.grpc_tls_address}",
        ).wait_ready()
        yield m
    finally:
        if m.envoy is not None:
            m.envoy.stop()
        app.kill()
        admin.close()
        agent.stop()


def _web_context(m: AclMesh) -> ssl.SSLContext:
    """TLS as the service "web" of the mesh (a leaf from the agent, the CA's roots)."""
    leaf = m.admin.get("/v1/agent/connect/ca/leaf/web").json()
    roots = "".join(
        x["RootCert"] for x in m.admin.get("/v1/agent/connect/ca/roots").json()["Roots"]
    )
    folder = Path(tempfile.mkdtemp(prefix="mesh-acl-web-"))
    (folder / "cert.pem").write_text(leaf["CertPEM"])
    (folder / "key.pem").write_text(leaf["PrivateKeyPEM"])
    context = ssl.create_default_context(cadata=roots)
    context.check_hostname = False  # the sidecar's identity is a SPIFFE URI
    context.load_cert_chain(str(folder / "cert.pem"), str(folder / "key.pem"))
    return context


def test_default_deny_refuses_with_a_reason_until_an_intention_allows(acl_mesh: AclMesh) -> None:
    m = acl_mesh
    assert m.envoy is not None
    pair = {"source": "web", "destination": "db"}
    assert m.admin.get("/v1/connect/intentions/check", params=pair).json() == {"Allowed": False}
    domain = m.admin.get("/v1/connect/ca/roots").json()["TrustDomain"]
    authorize = m.admin.post(
        "/v1/agent/connect/authorize",
        json={"Target": "db", "ClientCertURI": f"spiffe://{domain}/ns/default/dc/dc1/svc/web"},
    ).json()
    assert (
        authorize["Authorized"] is False
        and authorize["Reason"] == "Default behavior configured by ACLs: denied"
    )
    context = _web_context(m)
    refused = tls_get(m.sidecar_port, context)
    assert refused.startswith(b"HTTP/1.1 403"), refused
    body = refused.split(b"\r\n\r\n", 1)[1].decode()
    assert body.startswith("RBAC: access denied: no intention allows spiffe://")
    assert body.rstrip().endswith("/svc/web -> db; default policy deny"), body
    within(
        3.0,
        lambda: (
            f"/svc/web -> db: rbac_access_denied_matched_policy[{rbac.DEFAULT_DENY}]; GET /"
            in m.envoy.output()
        ),
        "the default refusal in db's access log:\n" + m.envoy.output()[-1500:],
    )  # type: ignore[union-attr]
    assert (
        m.admin.put("/v1/connect/intentions/exact", params=pair, json={"Action": "allow"}).json()
        is True
    )
    try:
        within(
            1.0,
            lambda: tls_get(m.sidecar_port, context).startswith(b"HTTP/1.1 200"),
            "allowed by the intention",
        )
        assert m.admin.get("/v1/connect/intentions/check", params=pair).json() == {"Allowed": True}
    finally:
        m.admin.delete("/v1/connect/intentions/exact", params=pair)


def _ca(m: AclMesh) -> bytes:
    return Path(m.ca_file).read_bytes()


@pytest.mark.parametrize("who", ["no token", "web's token", "an unknown token"])
def test_an_ads_stream_without_service_write_on_the_proxied_service_is_refused(
    acl_mesh: AclMesh, who: str
) -> None:
    token = {"no token": "", "web's token": acl_mesh.web_token, "an unknown token": "not-a-token"}[
        who
    ]
    client = AdsClient(acl_mesh.agent.grpc_address, "db-sidecar-proxy", token=token)
    try:
        client.send(r.CLUSTER)
        error = client.refusal()
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        expected = (
            "ACL not found"
            if who == "an unknown token"
            else "lacks permission 'service:write' on \"db\""
        )
        assert expected in (error.details() or ""), error.details()
        assert client.responses.empty()  # nothing was sent before the refusal
    finally:
        client.close()


def test_the_tls_port_serves_a_token_that_may_run_the_proxy(acl_mesh: AclMesh) -> None:
    client = AdsClient(
        acl_mesh.agent.grpc_tls_address,
        "db-sidecar-proxy",
        token=acl_mesh.db_token,
        ca=_ca(acl_mesh),
    )
    try:
        client.send(r.CLUSTER)
        assert sorted(names_of(client.next())) == ["local_app"]
    finally:
        client.close()
    other = trustme.CA().cert_pem.bytes()  # a client that trusts another CA does not connect
    stranger = AdsClient(
        acl_mesh.agent.grpc_tls_address, "db-sidecar-proxy", token=acl_mesh.db_token, ca=other
    )
    try:
        stranger.send(r.CLUSTER)
        assert stranger.refusal().code() == grpc.StatusCode.UNAVAILABLE
    finally:
        stranger.close()


def test_a_proxyless_client_gets_only_what_its_service_may_call(acl_mesh: AclMesh) -> None:
    m = acl_mesh
    meta = {"waypost.kind": "grpc", "waypost.service": "web"}
    pair = {"source": "web", "destination": "db"}
    client = AdsClient(m.agent.grpc_address, "grpc-web", meta, token=m.web_token)
    try:
        client.send(r.LISTENER, ["db"])
        assert names_of(client.next()) == []  # default deny: db is not web's to call
        assert (
            m.admin.put(
                "/v1/connect/intentions/exact", params=pair, json={"Action": "allow"}
            ).json()
            is True
        )
        assert names_of(client.next(timeout=2)) == ["db"]
    finally:
        m.admin.delete("/v1/connect/intentions/exact", params=pair)
        client.close()
    undeclared = AdsClient(
        m.agent.grpc_address, "grpc-anyone", {"waypost.kind": "grpc"}, token=m.web_token
    )
    try:
        undeclared.send(r.LISTENER, ["db"])
        assert "must declare the service it calls as" in (undeclared.refusal().details() or "")
    finally:
        undeclared.close()


def test_envoy_with_the_wrong_token_is_refused_and_says_why(acl_mesh: AclMesh) -> None:
    m = acl_mesh
    envoy = EnvoyProcess(
        "connect",
        "envoy",
        "-sidecar-for",
        "db",
        "-token",
        m.web_token,
        "-ca-file",
        m.ca_file,
        http_url=m.agent.http_url,
        grpc_address=f"https://{m.agent.grpc_tls_address}",
    )
    try:
        within(
            10.0,
            lambda: "lacks permission 'service:write' on \"db\"" in envoy.output(),
            "Envoy's log of the refusal",
        )
        assert "7," in envoy.output() or "PERMISSION_DENIED" in envoy.output()
        assert any("xDS stream of db-sidecar-proxy refused" in line for line in m.agent.output)
    finally:
        envoy.stop()


def test_envoys_command_line_holds_no_token(acl_mesh: AclMesh) -> None:
    """The bootstrap (with `x-consul-token`) reaches the running Envoy as an
    inherited, unlinked file, as Consul's does: not in its argv, which any
    local user reads in /proc/PID/cmdline."""
    assert acl_mesh.envoy is not None, "the ACL mesh fixture starts an Envoy"
    pid = acl_mesh.envoy.proc.pid
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert acl_mesh.db_token.encode() not in b" ".join(argv)
    path = argv[argv.index(b"--config-path") + 1].decode()
    assert path.startswith("/dev/fd/")
    held = os.readlink(f"/proc/{pid}/fd/{path.removeprefix('/dev/fd/')}")
    assert held.endswith(" (deleted)"), held  # no file left behind, none to open by name


def _serves_with(m: AclMesh, ca: bytes) -> bool:
    """Whether the TLS port answers a client that trusts `ca`: False as soon
    as the stream ends (a refused handshake), so a retry comes at once."""
    client = AdsClient(m.agent.grpc_tls_address, "db-sidecar-proxy", token=m.db_token, ca=ca)
    try:
        client.send(r.CLUSTER)
        deadline = time.monotonic() + 10  # ends at the first answer or error
        while client.error is None and time.monotonic() < deadline:
            try:
                return bool(client.next(timeout=0.05).resources)
            except queue.Empty:
                continue
        return False
    finally:
        client.close()


def _sighup(m: AclMesh) -> str:
    """SIGHUP, and the agent's line saying what its xDS port made of it.

    Waits for that line: the signal is handled asynchronously, and a
    connection the port accepts before the reload is done gets the old
    certificate (grpcio asks for it once per accepted connection). Probing
    right after `send_signal` raced the reload and lost whenever the agent
    was slower to run its handler than the client to connect: seen as "the
    first certificate back: not within 3.0s", the lost probe then waiting
    out its 3 s."""
    assert m.agent.proc is not None
    seen = len(m.agent.output)
    m.agent.proc.send_signal(signal.SIGHUP)
    lines: list[str] = []

    def reported() -> bool:
        lines[:] = [x for x in m.agent.output[seen:] if "SIGHUP:" in x and "xDS TLS" in x]
        return bool(lines)

    within(5.0, reported, "the agent's SIGHUP line")
    return lines[0]


def test_sighup_reloads_the_tls_port_certificate(acl_mesh: AclMesh) -> None:
    m, files = acl_mesh, (acl_mesh.folder / "agent.pem", acl_mesh.folder / "agent-key.pem")
    kept = [f.read_bytes() for f in files]
    fresh = trustme.CA()
    leaf = fresh.issue_cert("127.0.0.1")
    try:
        files[0].write_bytes(leaf.cert_chain_pems[0].bytes())
        files[1].write_bytes(leaf.private_key_pem.bytes())
        assert "reloaded the xDS TLS certificate" in _sighup(m)
        within(3.0, lambda: _serves_with(m, fresh.cert_pem.bytes()), "the new certificate served")
        assert not _serves_with(m, _ca(m))  # the old CA no longer verifies it
    finally:
        for f, content in zip(files, kept, strict=True):
            f.write_bytes(content)
        assert "reloaded the xDS TLS certificate" in _sighup(m)
    within(3.0, lambda: _serves_with(m, _ca(m)), "the first certificate back")


def _bad_files(case: str, folder: Path) -> tuple[bytes | None, bytes | None, str]:
    """New contents for (cert, key) (None: leave it; b"": remove it), the reason expected."""
    other = trustme.CA().issue_cert("127.0.0.1")
    cert = str(folder / "agent.pem")
    key = str(folder / "agent-key.pem")
    return {
        "a key from another pair": (
            None,
            other.private_key_pem.bytes(),
            f"{key} is not the key of the certificate in {cert}",
        ),
        "a certificate that is garbage": (b"garbage\n", None, f"{cert} holds no PEM certificate"),
        "a key file that is gone": (None, b"", f"cannot read {key}: No such file or directory"),
    }[case]


@pytest.mark.parametrize(
    "case", ["a key from another pair", "a certificate that is garbage", "a key file that is gone"]
)
def test_sighup_with_a_bad_pair_keeps_the_old_certificate_and_says_why(
    acl_mesh: AclMesh, case: str
) -> None:
    m, files = acl_mesh, (acl_mesh.folder / "agent.pem", acl_mesh.folder / "agent-key.pem")
    kept = [f.read_bytes() for f in files]
    *contents, reason = _bad_files(case, m.folder)
    try:
        for f, content in zip(files, contents, strict=True):
            if content == b"":
                f.unlink()
            elif content is not None:
                f.write_bytes(content)
        line = _sighup(m)
        assert "the xDS TLS port kept the old certificate: " + reason in line, line
        assert _serves_with(m, _ca(m))  # still the first certificate, for new connections too
    finally:
        for f, content in zip(files, kept, strict=True):
            f.write_bytes(content)


def test_connect_envoy_writes_the_token_from_the_environment_and_tls_into_the_bootstrap(
    acl_mesh: AclMesh, tmp_path: Path
) -> None:
    m = acl_mesh
    env = {**os.environ, "CONSUL_HTTP_TOKEN": m.db_token, "CONSUL_GRPC_CACERT": m.ca_file}
    command = [
        sys.executable,
        "-m",
        "waypost.cli.main",
        "connect",
        "envoy",
        "-sidecar-for",
        "db",
        "-bootstrap",
        "-http-addr",
        m.agent.http_url,
        "-grpc-addr",
        f"https://{m.agent.grpc_tls_address}",
    ]
    boot = json.loads(
        subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    )
    ads = boot["dynamicResources"]["adsConfig"]["grpcServices"][0]
    assert ads["initialMetadata"] == [{"key": "x-consul-token", "value": m.db_token}]
    # A management token exported in the shell loses to -token-file, as in Consul.
    held = tmp_path / "db-token"
    held.write_text(m.db_token)
    filed = subprocess.run(
        [*command, "-token-file", str(held)],
        env={**env, "CONSUL_HTTP_TOKEN": MGMT},
        capture_output=True,
        text=True,
        check=True,
    )
    metadata = json.loads(filed.stdout)["dynamicResources"]["adsConfig"]["grpcServices"][0]
    assert metadata["initialMetadata"] == [{"key": "x-consul-token", "value": m.db_token}]
    tls = boot["staticResources"]["clusters"][0]["transportSocket"]["typedConfig"][
        "commonTlsContext"
    ]
    assert tls["validationContext"] == {"trustedCa": {"filename": m.ca_file}} and tls[
        "alpnProtocols"
    ] == ["h2"]
    env.pop("CONSUL_GRPC_CACERT")
    env.pop("CONSUL_CACERT", None)
    missing = subprocess.run(command, env=env, capture_output=True, text=True)
    assert (
        missing.returncode != 0
        and "needs the CA that signed the agent's certificate" in missing.stderr
    )
    env["CONSUL_HTTP_TOKEN"] = ""
    anonymous = subprocess.run(
        command[:-2], env=env, capture_output=True, text=True
    )  # no token: the look-up is refused
    assert anonymous.returncode != 0 and "no sidecar" in anonymous.stderr
    assert "left out services this token may not read" in anonymous.stderr


def test_deleting_its_token_closes_an_open_stream(acl_mesh: AclMesh) -> None:
    m = acl_mesh
    made = m.admin.put("/v1/acl/token", json={"ServiceIdentities": [{"ServiceName": "db"}]}).json()
    client = AdsClient(m.agent.grpc_address, "db-sidecar-proxy", token=made["SecretID"])
    try:
        client.send(r.CLUSTER)
        assert names_of(client.next()) == ["local_app"]
        assert m.admin.delete(f"/v1/acl/token/{made['AccessorID']}").status_code == 200
        error = client.refusal(timeout=2)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED and "ACL not found" in (
            error.details() or ""
        )
    finally:
        client.close()


def test_a_stream_without_a_token_uses_the_agents_default_token_as_it_is_now(
    acl_mesh: AclMesh,
) -> None:
    m = acl_mesh
    assert m.admin.put("/v1/agent/token/default", json={"Token": m.db_token}).status_code == 200
    try:
        client = AdsClient(m.agent.grpc_address, "db-sidecar-proxy")  # no token of its own
        try:
            client.send(r.CLUSTER)
            assert names_of(client.next()) == ["local_app"]
        finally:
            client.close()
    finally:  # back to a token that may not run db (as the anonymous one)
        assert (
            m.admin.put("/v1/agent/token/default", json={"Token": m.web_token}).status_code == 200
        )


def test_the_gateway_needs_service_write_on_waypost_gateway(acl_mesh: AclMesh) -> None:
    m = acl_mesh
    meta = {"waypost.kind": "gateway", "waypost.listen": "127.0.0.1:1"}
    refused = AdsClient(m.agent.grpc_address, "waypost-gateway-127.0.0.1-1", meta, token=m.db_token)
    try:
        refused.send(r.CLUSTER)
        assert "lacks permission 'service:write' on \"waypost-gateway\"" in (
            refused.refusal().details() or ""
        )
    finally:
        refused.close()
    served = AdsClient(
        m.agent.grpc_address,
        "waypost-gateway-127.0.0.1-1",
        meta,
        token=_token(m.admin, "waypost-gateway"),
    )
    try:
        served.send(r.LISTENER)
        assert names_of(served.next()) != []
    finally:
        served.close()
