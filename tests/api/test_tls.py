"""TLS end to end: a certificate authority made here (trustme), a real agent on
--https, py-consul, the client library and the CLI, client certificates, and
the certificate reloaded on SIGHUP."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import consul
import httpx
import pytest
import requests
import trustme

from waypost import Discovery, Registration, _tls, _tlsfiles
from waypost._exceptions import ConfigError
from waypost.agent.config import AgentConfig
from waypost.agent.security import HttpsTls

from ..agentproc import AgentProcess
from ..wait import until


class Pki:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = trustme.CA()
        self.ca_file = root / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.cert_file, self.key_file = root / "agent.pem", root / "agent-key.pem"
        self.issue(self.ca)
        client = self.ca.issue_cert("client.example")
        self.client_cert, self.client_key = root / "client.pem", root / "client-key.pem"
        client.cert_chain_pems[0].write_to_path(str(self.client_cert))
        client.private_key_pem.write_to_path(str(self.client_key))

    def issue(self, ca: trustme.CA) -> None:
        cert = ca.issue_cert("127.0.0.1", "localhost")
        cert.private_key_and_cert_chain_pem.write_to_path(str(self.cert_file))
        cert.private_key_pem.write_to_path(str(self.key_file))

    def flags(self) -> list[str]:
        return ["--tls-cert-file", str(self.cert_file), "--tls-key-file", str(self.key_file)]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_agent(pki: Pki) -> Iterator[AgentProcess]:
    proc = AgentProcess(
        "--dev", "--http", "off", "--https", "127.0.0.1:0", "--dns", "off", *pki.flags()
    ).start()
    yield proc
    assert proc.stop() == 0, "".join(proc.output)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_py_consul_over_https_with_the_tests_ca(
    tls_agent: AgentProcess, pki: Pki, unique: str
) -> None:
    assert tls_agent.http_url == "" and tls_agent.https_url.startswith("https://127.0.0.1:")
    port = port_of(tls_agent.https_url)
    c = consul.Consul(host="127.0.0.1", port=port, scheme="https", verify=str(pki.ca_file))
    untrusting = consul.Consul(host="127.0.0.1", port=port, scheme="https")
    plain = consul.Consul(host="127.0.0.1", port=port, scheme="http")
    try:
        assert c.agent.service.register(unique, service_id=unique, port=80)
        assert [r["Service"]["ID"] for r in c.health.service(unique)[1]] == [unique]
        with pytest.raises(requests.exceptions.SSLError):
            untrusting.agent.services()  # the system's CAs do not know the tests' CA
        with pytest.raises(requests.exceptions.ConnectionError):
            plain.agent.services()
    finally:
        for client in (c, untrusting, plain):  # before the agent stops: see below
            client.http.session.close()


def test_client_library_and_cli_honour_consul_cacert(
    tls_agent: AgentProcess, pki: Pki, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSUL_CACERT", str(pki.ca_file))
    with Registration(
        unique, port=4000, address="127.0.0.1", agent=tls_agent.https_url, handle_signals=False
    ):
        with Discovery(tls_agent.https_url) as d:
            assert [i.port for i in d.instances(unique)] == [4000]
        env = {
            **os.environ,
            "CONSUL_HTTP_ADDR": tls_agent.https_url.removeprefix("https://"),
            "CONSUL_HTTP_SSL": "true",
        }
        cli = subprocess.run(
            [sys.executable, "-m", "waypost.cli.main", "services"],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )
        assert cli.returncode == 0, cli.stderr
        assert unique in cli.stdout
        env.pop("CONSUL_CACERT")
        refused = subprocess.run(
            [sys.executable, "-m", "waypost.cli.main", "services"],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )
        assert refused.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr
        env["CONSUL_HTTP_SSL_VERIFY"] = "false"
        unverified = subprocess.run(
            [sys.executable, "-m", "waypost.cli.main", "services"],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )
        assert unverified.returncode == 0 and unique in unverified.stdout


def test_a_ca_file_takes_precedence_over_a_ca_path(
    tls_agent: AgentProcess, pki: Pki, tmp_path: Path
) -> None:
    """As in Consul: with CONSUL_CACERT (or -ca-file) set, CONSUL_CAPATH is not
    also trusted; alone, the path is used."""
    hashed = subprocess.run(
        ["openssl", "x509", "-hash", "-noout", "-in", str(pki.ca_file)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (tmp_path / f"{hashed}.0").write_bytes(pki.ca_file.read_bytes())  # OpenSSL's lookup name
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    url = f"{tls_agent.https_url}/v1/agent/self"
    by_path = _tls.verify({"CONSUL_CAPATH": str(tmp_path)})
    assert httpx.get(url, verify=by_path).status_code == 200
    both = _tls.verify({"CONSUL_CAPATH": str(tmp_path), "CONSUL_CACERT": str(other)})
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(url, verify=both)


def _trusting(pki: Pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca_file))


def test_connect_envoy_reaches_an_https_agent_as_every_command_does(
    tls_agent: AgentProcess, pki: Pki, unique: str
) -> None:
    """`waypost connect envoy` looks its sidecar up with the CLI's one agent
    client: host:port with CONSUL_HTTP_SSL=true means https://, verified with
    CONSUL_CACERT, or with -ca-file instead."""
    body = {"Name": unique, "Port": 4100, "Connect": {"SidecarService": {}}}
    with httpx.Client(base_url=tls_agent.https_url, verify=_trusting(pki)) as http:
        http.put("/v1/agent/service/register", json=body).raise_for_status()
    env = {
        **os.environ,
        "CONSUL_HTTP_ADDR": tls_agent.https_url.removeprefix("https://"),
        "CONSUL_HTTP_SSL": "true",
        "CONSUL_CACERT": str(pki.ca_file),
    }
    command = [sys.executable, "-m", "waypost.cli.main", "connect", "envoy", "-bootstrap"]
    command += ["-sidecar-for", unique]

    def bootstrap(*extra: str) -> dict[str, Any]:
        done = subprocess.run(
            command + list(extra), capture_output=True, text=True, timeout=30, env=env
        )
        assert done.returncode == 0, done.stderr
        found: dict[str, Any] = json.loads(done.stdout)
        return found

    assert bootstrap()["node"]["id"] == f"{unique}-sidecar-proxy"
    env.pop("CONSUL_CACERT")
    assert bootstrap("-ca-file", str(pki.ca_file))["node"]["id"] == f"{unique}-sidecar-proxy"
    with httpx.Client(base_url=tls_agent.https_url, verify=_trusting(pki)) as http:
        http.put(f"/v1/agent/service/deregister/{unique}-sidecar-proxy").raise_for_status()
        http.put(f"/v1/agent/service/deregister/{unique}").raise_for_status()


def test_client_certificates_when_the_agent_verifies_incoming(pki: Pki) -> None:
    proc = AgentProcess(
        "--dev", "--http", "off", "--https", "127.0.0.1:0", "--dns", "off", *pki.flags(),
        "--tls-ca-file", str(pki.ca_file), "--tls-verify-incoming",
    ).start()  # fmt: skip
    port = port_of(proc.https_url)
    with_cert = consul.Consul(
        host="127.0.0.1", port=port, scheme="https", verify=str(pki.ca_file),
        cert=(str(pki.client_cert), str(pki.client_key)),
    )  # fmt: skip
    without = consul.Consul(host="127.0.0.1", port=port, scheme="https", verify=str(pki.ca_file))
    try:
        assert with_cert.status.leader()
        with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
            without.status.leader()
    finally:
        # Closed before the agent stops: at SIGTERM an idle keep-alive TLS
        # connection held open gets 1 s for its close_notify (protocol.py;
        # 10 s before that bound), which is not what these tests check.
        with_cert.http.session.close()
        without.http.session.close()
        proc.stop()


def _served_issuer(url: str, ca_file: Path) -> str:
    context = ssl.create_default_context(cafile=str(ca_file))
    host, port = "127.0.0.1", port_of(url)
    import socket

    with (
        socket.create_connection((host, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        cert = tls.getpeercert()
    return str(dict(x[0] for x in cert["issuer"]))


def test_certificates_reload_on_sighup(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    proc = AgentProcess(
        "--dev", "--http", "off", "--https", "127.0.0.1:0", "--dns", "off", *pki.flags()
    ).start()
    try:
        before = _served_issuer(proc.https_url, pki.ca_file)
        new_ca = trustme.CA()
        new_ca_file = tmp_path / "new-ca.pem"
        new_ca.cert_pem.write_to_path(str(new_ca_file))
        pki.issue(new_ca)
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGHUP)
        after = until(lambda: _try_issuer(proc.https_url, new_ca_file))
        assert after != before
        pki.key_file.write_text("not a key")  # a bad file on the next SIGHUP keeps the certificate
        proc.proc.send_signal(signal.SIGHUP)
        refused = (
            f"HTTPS listener kept the old certificate: {pki.key_file} holds no PEM private key"
        )
        until(lambda: any(refused in line for line in proc.output))
        assert _served_issuer(proc.https_url, new_ca_file) == after
        # Consul's PUT /v1/agent/reload answers its reload's error: 500 with the reason
        trusting = ssl.create_default_context(cafile=str(new_ca_file))
        answer = httpx.put(f"{proc.https_url}/v1/agent/reload", verify=trusting)
        assert answer.status_code == 500 and refused in answer.text, answer.text
    finally:
        assert proc.stop() == 0


def _try_issuer(url: str, ca_file: Path) -> str:
    try:
        return _served_issuer(url, ca_file)
    except ssl.SSLError:
        return ""


def test_the_fast_path_serves_and_parks_over_https(
    tls_agent: AgentProcess, pki: Pki, unique: str
) -> None:
    """Discovery reads and blocking queries take the protocol's fast path
    (api/fastpath.py) on the TLS listener too, and a change wakes them."""
    base = tls_agent.https_url

    def fast_answered(http: httpx.Client) -> float:
        found = re.search(r"(?m)^waypost_http_fast_answered (\S+)$", http.get("/metrics").text)
        assert found is not None
        return float(found.group(1))

    with httpx.Client(base_url=base, verify=str(pki.ca_file), timeout=30) as http:
        http.put("/v1/agent/service/register", json={"Name": unique, "Port": 80})
        before = fast_answered(http)
        first = http.get(f"/v1/health/service/{unique}")
        index = int(first.headers["x-consul-index"])
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            parked = pool.submit(http.get, f"/v1/health/service/{unique}?index={index}&wait=1m")
            time.sleep(0.3)
            assert not parked.done()
            body = {"Name": unique, "ID": f"{unique}-2", "Port": 81}
            http.put("/v1/agent/service/register", json=body).raise_for_status()
            woken = parked.result(timeout=10)
        assert int(woken.headers["x-consul-index"]) > index
        assert len(woken.json()) == 2
        assert fast_answered(http) == before + 2


def _handshake_issuer(server: ssl.SSLContext, ca_file: Path) -> str:
    """One TLS handshake in memory against the listener's context: the issuer it served."""
    client = ssl.create_default_context(cafile=str(ca_file))
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    conn = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    serv = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side, out, peer_in in ((conn, c_out, s_in), (serv, s_out, c_in)):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
            peer_in.write(out.read())
    cert = conn.getpeercert()
    return str(dict(x[0] for x in cert["issuer"]))


def _https_tls(pki: Pki) -> tuple[HttpsTls, ssl.SSLContext]:
    config = AgentConfig(tls_cert_file=str(pki.cert_file), tls_key_file=str(pki.key_file))
    https = HttpsTls(config)
    return https, https.options()["ssl_context_factory"](SimpleNamespace(ssl_ciphers=""), None)


def test_a_renewal_between_the_check_and_the_load_serves_a_consistent_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The certificate rewritten after the check, before the key: the listener
    loads the bytes it checked, never the half-renewed files."""
    pki = Pki(tmp_path)
    https, context = _https_tls(pki)
    new_ca, newer_ca = trustme.CA(), trustme.CA()
    pki.issue(new_ca)
    load = _tlsfiles.load

    def load_then_renew_the_certificate(*paths: str) -> _tlsfiles.TlsFiles:
        files = load(*paths)
        newer_ca.issue_cert("localhost").cert_chain_pems[0].write_to_path(str(pki.cert_file))
        return files

    monkeypatch.setattr(_tlsfiles, "load", load_then_renew_the_certificate)
    https.use(_tlsfiles.load(str(pki.cert_file), str(pki.key_file), None))
    new_ca.cert_pem.write_to_path(str(tmp_path / "new-ca.pem"))
    assert _handshake_issuer(context, tmp_path / "new-ca.pem")  # the checked new pair


def test_a_reload_failing_half_way_puts_the_old_pair_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenSSL installs a new certificate (dropping the old key) before it
    fails at the key: the listener loads its last pair again, and handshakes
    keep working. The live context gets the new certificate with a key not
    its own."""
    pki = Pki(tmp_path)
    https, context = _https_tls(pki)
    old = https.files
    pki.issue(trustme.CA())
    install = _tlsfiles.install

    def install_with_the_old_key(ctx: ssl.SSLContext, files: _tlsfiles.TlsFiles) -> None:
        if ctx is context and files.cert_chain != old.cert_chain:  # not load()'s own check
            files = _tlsfiles.TlsFiles(files.cert_chain, old.key, None, files.paths)
        install(ctx, files)

    monkeypatch.setattr(_tlsfiles, "install", install_with_the_old_key)
    with pytest.raises(
        ConfigError, match=r"HTTPS listener kept the old certificate: .* not the key"
    ):
        https.use(_tlsfiles.load(str(pki.cert_file), str(pki.key_file), None))
    assert _handshake_issuer(context, pki.ca_file)
    assert https.files is old


def test_clients_that_never_answer_close_notify_hold_nothing(tmp_path: Path, pki: Pki) -> None:
    """A TLS close waits for the peer's close_notify, which a client that has
    stopped sending (timed out by the read deadline) or sits idle on a
    keep-alive connection never sends: the agent cuts such a socket after
    CLOSE_GRACE (api/protocol.py) instead of keeping it, and its client's place
    under --http-max-conns-per-client, for asyncio's 30 s, and its graceful
    shutdown no longer waits the whole 10 s for an idle connection."""
    config = tmp_path / "agent.toml"
    config.write_text("http_read_timeout = 0.5\n")
    proc = AgentProcess(
        "--dev", "--http", "off", "--https", "127.0.0.1:0", "--dns", "off", *pki.flags(),
        "--config-file", str(config), "--http-max-conns-per-client", "1",
    ).start()  # fmt: skip
    port = port_of(proc.https_url)
    trusting = ssl.create_default_context(cafile=str(pki.ca_file))
    stalled = trusting.wrap_socket(
        socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1"
    )
    idle = httpx.Client(base_url=proc.https_url, verify=trusting, timeout=10)
    try:
        stalled.sendall(b"GET /v1/status/leader HTTP/1.1\r\nHost: x\r\n")  # never finished

        def answered() -> bool:  # a new connection each time, from the same client
            with httpx.Client(base_url=proc.https_url, verify=trusting) as fresh:
                return fresh.get("/v1/status/leader").status_code == 200

        until(answered, timeout=10, interval=0.2)  # 30 s before: the slot stayed taken
        assert idle.get("/v1/status/leader").status_code == 200  # then left idle, open
        assert proc.stop() == 0
        assert not [line for line in proc.output if "graceful shutdown exceeded" in line]
    finally:
        idle.close()
        stalled.close()
        proc.stop()
