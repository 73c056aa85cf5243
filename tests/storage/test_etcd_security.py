"""The etcd backend against etcd with TLS (client certificates) and with user/password auth.

Each module run makes a throwaway PKI with openssl and starts single-member etcd
servers of its own on loopback (127.0.0.x5-x9, never the shared cluster's addresses
or data), each killed by PID in teardown:

- `secure`: HTTPS only, `--client-cert-auth`, and etcd authentication on;
- `plain_auth`: plain HTTP with etcd authentication on, and a short token TTL;
- `jwt_auth`: plain HTTP with authentication on and JWT tokens.

Each gets a `root` user (to administer it) and a `waypost` user with read-write
on `/waypost/` only, as docs/etcd.md tells operators to set up.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from waypost._exceptions import ConfigError, StorageError, StoreUnavailable
from waypost.storage import Entry
from waypost.storage.etcd import EtcdStorage

from ..agentproc import AgentProcess
from ..etcd_cluster import CLIENT_PORT, ETCD, PEER_PORT, START_TIMEOUT, _port_free, available
from .conftest import Mirror

pytestmark = pytest.mark.etcd

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
ETCDCTL = os.environ.get("WAYPOST_ETCDCTL", str(Path(ETCD).with_name("etcdctl")))
ROOT_PASSWORD = "r00t-pw"
PASSWORD = "s3cret/pa:ss"  # a '/' and a ':' to test the URL encoding
PASSWORD_Q = "s3cret%2Fpa%3Ass"
TOKEN_TTL = 2  # seconds, on plain_auth: tokens expire between some test steps
FAIL_FAST = 4.0  # a refused connection or a bad certificate must fail within this


# -- a throwaway PKI ---------------------------------------------------------


class Pki:
    """A CA, a server certificate for one IP, a client certificate, and an unrelated CA."""

    def __init__(self, directory: Path, server_ip: str) -> None:
        self.dir = directory
        self.ca = self._ca("ca", "waypost test CA")
        self.other_ca = self._ca("other-ca", "unrelated CA")
        self.server_cert, self.server_key = self._leaf(
            "server",
            "etcd-test",
            f"subjectAltName=IP:{server_ip},IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        # CN is the etcd user a client certificate logs in as when no token is sent
        self.client_cert, self.client_key = self._leaf(
            "client", "waypost", "extendedKeyUsage=clientAuth\n"
        )

    def _ca(self, name: str, cn: str) -> Path:
        key, cert = self.dir / f"{name}.key", self.dir / f"{name}.pem"
        _openssl("req", "-x509", *_EC, "-nodes", "-days", "2", "-subj", f"/CN={cn}",
                 "-keyout", key, "-out", cert)  # fmt: skip
        return cert

    def _leaf(self, name: str, cn: str, extensions: str) -> tuple[Path, Path]:
        key, csr, cert = (self.dir / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
        ext_file = self.dir / f"{name}.ext"
        ext_file.write_text("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n" + extensions)
        _openssl("req", "-new", *_EC, "-nodes", "-subj", f"/CN={cn}", "-keyout", key, "-out", csr)
        _openssl("x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.dir / "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", ext_file, "-out", cert)  # fmt: skip
        return cert, key

    def query(self, ca: Path | None = None, client: bool = True) -> str:
        parts = [f"ca={ca or self.ca}"]
        if client:
            parts += [f"cert={self.client_cert}", f"key={self.client_key}"]
        return "&".join(parts)


_EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")


def _openssl(*args: object) -> None:
    result = subprocess.run(
        [OPENSSL, *map(str, args)], capture_output=True, text=True, timeout=20, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr}")


# -- one etcd member of our own ------------------------------------------------

_claimed: set[str] = set()


def _free_host() -> str:
    """A loopback address with etcd's ports free, outside the shared cluster's blocks.

    The shared cluster takes 127.0.0.x1-x3 blocks; these members take x5-x9.
    """
    for last in range(5, 10):
        for tens in range(10, 250, 10):
            host = f"127.0.0.{tens + last}"
            if host not in _claimed and all(_port_free(host, p) for p in (CLIENT_PORT, PEER_PORT)):
                _claimed.add(host)
                return host
    raise RuntimeError("no free loopback address for a test etcd member")


class LoneEtcd:
    """A single-member etcd on its own loopback address, stopped by PID in teardown."""

    def __init__(self, base: Path, host: str, pki: Pki | None, token_ttl: int = 300) -> None:
        self.base, self.host, self.pki = base, host, pki
        self.log = base / "etcd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        scheme = "https" if pki else "http"
        self.client_url = f"{scheme}://{host}:{CLIENT_PORT}"
        self.endpoint = f"{host}:{CLIENT_PORT}"
        peer = f"http://{host}:{PEER_PORT}"
        self.args = [
            ETCD,
            "--name=solo",
            f"--data-dir={base / 'data'}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=solo={peer}",
            f"--initial-cluster-token={base.name}",
            f"--auth-token-ttl={token_ttl}",
            "--logger=zap",
            "--log-level=warn",
        ]
        if pki:
            self.args += [
                f"--cert-file={pki.server_cert}",
                f"--key-file={pki.server_key}",
                f"--trusted-ca-file={pki.ca}",
                "--client-cert-auth",
            ]
        self.auth = False

    def start(self) -> LoneEtcd:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        atexit.register(self.stop)  # also when a run is interrupted; stop() is idempotent
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited ({self.proc.returncode}):\n{self.tail()}")
            if self._healthy():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"etcd on {self.host} not healthy in {START_TIMEOUT}s:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL this member (by PID); start() brings it back on the same data."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.base / "data", ignore_errors=True)

    def _healthy(self) -> bool:
        verify: ssl.SSLContext | bool = False
        if self.pki:
            verify = ssl.create_default_context(cafile=str(self.pki.ca))
            verify.load_cert_chain(str(self.pki.client_cert), str(self.pki.client_key))
        try:
            response = httpx.get(f"{self.client_url}/health", verify=verify, timeout=1)
            return response.status_code == 200 and response.json().get("health") == "true"
        except (httpx.HTTPError, ValueError):
            return False

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def etcdctl(self, *args: str) -> str:
        cmd = [ETCDCTL, f"--endpoints={self.client_url}", "--dial-timeout=3s"]
        if self.pki:
            cmd += [f"--cacert={self.pki.ca}", f"--cert={self.pki.client_cert}",
                    f"--key={self.pki.client_key}"]  # fmt: skip
        if self.auth:
            cmd.append(f"--user=root:{ROOT_PASSWORD}")
        result = subprocess.run(
            [*cmd, *args], capture_output=True, text=True, timeout=15, check=False,
            env={**os.environ, "ETCDCTL_API": "3"},
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)}: {result.stderr}")
        return result.stdout

    def enable_auth(self) -> None:
        """root, plus a `waypost` user with read-write on /waypost/ only (as in docs/etcd.md)."""
        self.etcdctl("user", "add", f"root:{ROOT_PASSWORD}")
        self.etcdctl("role", "add", "waypost")
        grant = ("role", "grant-permission", "waypost", "--prefix=true", "readwrite", "/waypost/")
        self.etcdctl(*grant)
        self.etcdctl("user", "add", f"waypost:{PASSWORD}")
        self.etcdctl("user", "grant-role", "waypost", "waypost")
        self.etcdctl("auth", "enable")
        self.auth = True


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not available():
        pytest.skip(f"etcd is not installed at {ETCD} (apt-get install etcd-server)")
    if not os.access(ETCDCTL, os.X_OK):
        pytest.skip(f"etcdctl is not installed at {ETCDCTL} (apt-get install etcd-client)")
    return tmp_path_factory.mktemp("etcd-security")


@pytest.fixture(scope="module")
def secure(base: Path) -> Iterator[LoneEtcd]:
    """HTTPS with client certificates required, and etcd authentication on."""
    if not os.access(OPENSSL, os.X_OK):
        pytest.skip("openssl is not installed: cannot make test certificates for etcd TLS")
    host = _free_host()
    (base / "secure").mkdir()
    pki = Pki(base / "secure", host)
    etcd = LoneEtcd(base / "secure", host, pki)
    try:
        etcd.start()
        etcd.enable_auth()
        yield etcd
    finally:
        etcd.stop()


@pytest.fixture(scope="module")
def plain_auth(base: Path) -> Iterator[LoneEtcd]:
    """Plain HTTP with etcd authentication on; tokens expire after TOKEN_TTL idle seconds."""
    (base / "plain").mkdir()
    etcd = LoneEtcd(base / "plain", _free_host(), None, token_ttl=TOKEN_TTL)
    try:
        etcd.start()
        etcd.enable_auth()
        yield etcd
    finally:
        etcd.stop()


@pytest.fixture(scope="module")
def jwt_auth(base: Path) -> Iterator[LoneEtcd]:
    """Plain HTTP with etcd authentication on and JWT tokens (they carry the auth revision)."""
    if not os.access(OPENSSL, os.X_OK):
        pytest.skip("openssl is not installed: cannot make a JWT signing key for etcd")
    directory = base / "jwt"
    directory.mkdir()
    key, pub = directory / "jwt.key", directory / "jwt.pub"
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key)
    _openssl("pkey", "-in", key, "-pubout", "-out", pub)
    etcd = LoneEtcd(directory, _free_host(), None)
    etcd.args.append(f"--auth-token=jwt,pub-key={pub},priv-key={key},sign-method=RS256,ttl=5m")
    try:
        etcd.start()
        etcd.enable_auth()
        yield etcd
    finally:
        etcd.stop()


# -- helpers -----------------------------------------------------------------


def _prefix() -> str:
    return f"/waypost/sec-{uuid.uuid4().hex[:10]}/"


async def _round_trip(url: str) -> EtcdStorage:
    """Open a store, commit, and check the watch applied the commit; the caller closes it."""
    mirror = Mirror()
    store = EtcdStorage(url)
    await asyncio.wait_for(store.open(mirror), 10)
    index = await store.commit([Entry("s/n1/web", b"v1"), Entry("l/n1", b"", ephemeral=True)])
    assert mirror.keys["s/n1/web"].modify_index == index
    assert mirror.keys["l/n1"].ephemeral
    await store.confirm()
    return store


async def _open_fails(url: str) -> Exception:
    """Open must fail with a store error, within FAIL_FAST seconds."""
    store = EtcdStorage(url)
    started = time.monotonic()
    try:
        with pytest.raises((StoreUnavailable, StorageError, ConfigError)) as info:
            await asyncio.wait_for(store.open(Mirror()), 15)
    finally:
        await store.close()
    elapsed = time.monotonic() - started
    assert elapsed < FAIL_FAST, f"took {elapsed:.1f}s to fail: {info.value}"
    return info.value


# -- TLS ---------------------------------------------------------------------


async def test_tls_with_client_cert_and_password_round_trip(secure: LoneEtcd) -> None:
    pki = secure.pki
    assert pki is not None
    url = f"etcds://waypost:{PASSWORD_Q}@{secure.endpoint}?prefix={_prefix()}&{pki.query()}"
    store = await _round_trip(url)
    try:
        assert store.health().known_leader
        await asyncio.sleep(1.2)  # one health probe over TLS with the token
        assert store.health().known_leader
    finally:
        await store.close()


async def test_tls_client_cert_alone_logs_in_as_its_common_name(secure: LoneEtcd) -> None:
    pki = secure.pki
    assert pki is not None
    store = await _round_trip(f"etcds://{secure.endpoint}?prefix={_prefix()}&{pki.query()}")
    await store.close()


async def test_tls_wrong_ca_fails_fast_and_says_why(secure: LoneEtcd) -> None:
    pki = secure.pki
    assert pki is not None
    query = pki.query(ca=pki.other_ca)
    error = await _open_fails(f"etcds://{secure.endpoint}?prefix={_prefix()}&{query}&timeout=3s")
    message = str(error)
    assert secure.endpoint in message and "TLS handshake" in message and "ca=" in message
    assert "CERTIFICATE_VERIFY_FAILED" in message, message  # gRPC's reason, not cut off


async def test_tls_without_client_cert_fails_fast_and_says_why(secure: LoneEtcd) -> None:
    pki = secure.pki
    assert pki is not None
    query = pki.query(client=False)
    error = await _open_fails(f"etcds://{secure.endpoint}?prefix={_prefix()}&{query}&timeout=3s")
    assert secure.endpoint in str(error) and "TLS handshake" in str(error)
    assert "cert= and key=" in str(error)


async def test_plain_text_to_a_tls_member_fails_fast(secure: LoneEtcd) -> None:
    error = await _open_fails(f"etcd://{secure.endpoint}?prefix={_prefix()}&timeout=3s")
    assert secure.endpoint in str(error)


# -- user / password ---------------------------------------------------------


async def test_user_and_password_in_the_url(plain_auth: LoneEtcd) -> None:
    url = f"etcd://waypost:{PASSWORD_Q}@{plain_auth.endpoint}?prefix={_prefix()}"
    store = await _round_trip(url)
    await store.close()


async def test_password_file(plain_auth: LoneEtcd, tmp_path: Path) -> None:
    secret = tmp_path / "etcd-password"
    secret.write_text(PASSWORD + "\n")
    url = f"etcd://{plain_auth.endpoint}?prefix={_prefix()}&user=waypost&password_file={secret}"
    store = await _round_trip(url)
    await store.close()


async def test_wrong_password_fails_fast_and_names_the_user(plain_auth: LoneEtcd) -> None:
    url = f"etcd://waypost:nope@{plain_auth.endpoint}?prefix={_prefix()}&timeout=3s"
    error = await _open_fails(url)
    assert not isinstance(error, StoreUnavailable)
    assert "'waypost'" in str(error) and "nope" not in str(error)
    assert "password" in str(error).lower()


async def test_no_credentials_on_an_auth_etcd_says_so(plain_auth: LoneEtcd) -> None:
    error = await _open_fails(f"etcd://{plain_auth.endpoint}?prefix={_prefix()}&timeout=3s")
    assert not isinstance(error, StoreUnavailable)
    assert "user name is empty" in str(error) and "password_file=" in str(error)


async def test_outside_the_granted_prefix_is_permission_denied(plain_auth: LoneEtcd) -> None:
    url = f"etcd://waypost:{PASSWORD_Q}@{plain_auth.endpoint}?prefix=/elsewhere/&timeout=3s"
    error = await _open_fails(url)
    assert "permission denied" in str(error) and "grant" in str(error)


async def test_expired_token_and_auth_changes_are_ridden_out(plain_auth: LoneEtcd) -> None:
    """Tokens expire when idle, and any change to etcd's users or roles invalidates them."""
    url = f"etcd://waypost:{PASSWORD_Q}@{plain_auth.endpoint}?prefix={_prefix()}&timeout=3s"
    mirror = Mirror()
    store = EtcdStorage(url)
    await store.open(mirror)
    try:
        await store.commit([Entry("s/a/1", b"")])
        await asyncio.sleep(TOKEN_TTL + 1.5)  # no calls that check the token
        index = await store.commit([Entry("s/a/2", b"")])
        assert mirror.keys["s/a/2"].modify_index == index

        name = f"u{uuid.uuid4().hex[:8]}"
        await asyncio.to_thread(plain_auth.etcdctl, "user", "add", f"{name}:x")
        index = await store.commit([Entry("s/a/3", b"")])
        assert mirror.keys["s/a/3"].modify_index == index
        await store.confirm()
        assert store.health().known_leader
    finally:
        await store.close()


async def test_jwt_tokens_are_renewed_after_auth_changes(jwt_auth: LoneEtcd) -> None:
    """A JWT token is refused for good once users or roles change; the store gets a new one.

    The member is then restarted so that the watch, too, must come back with a new token.
    """
    url = f"etcd://waypost:{PASSWORD_Q}@{jwt_auth.endpoint}?prefix={_prefix()}&timeout=5s"
    mirror = Mirror()
    store = EtcdStorage(url)
    await store.open(mirror)
    try:
        await store.commit([Entry("s/a/1", b"")])
        await asyncio.to_thread(jwt_auth.etcdctl, "user", "add", f"u{uuid.uuid4().hex[:8]}:x")
        index = await store.commit([Entry("s/a/2", b"")])
        assert mirror.keys["s/a/2"].modify_index == index

        await asyncio.to_thread(jwt_auth.etcdctl, "user", "add", f"u{uuid.uuid4().hex[:8]}:x")
        await asyncio.to_thread(jwt_auth.kill)
        await asyncio.to_thread(jwt_auth.start)
        index = await store.commit([Entry("s/a/3", b"")])
        assert mirror.keys["s/a/3"].modify_index == index
        await store.confirm()
    finally:
        await store.close()


# -- a real agent ------------------------------------------------------------


def test_agent_registers_over_tls_and_keeps_the_password_out_of_its_banner(
    secure: LoneEtcd,
) -> None:
    pki = secure.pki
    assert pki is not None
    prefix = _prefix()
    url = f"etcds://waypost:{PASSWORD_Q}@{secure.endpoint}?prefix={prefix}&{pki.query()}"
    agent = AgentProcess("--store", url, "--node", "n1", "--http", "127.0.0.1:0", "--dns", "off")
    agent.start()
    try:
        with agent.client() as http:
            body = {"Name": "secure-web", "ID": "secure-web-1", "Port": 8080}
            assert http.put("/v1/agent/service/register", json=body).status_code == 200
            services = http.get("/v1/catalog/service/secure-web").json()
            assert [s["ServiceID"] for s in services] == ["secure-web-1"]
        keys = secure.etcdctl("get", "--prefix", "--keys-only", prefix)
        assert "secure-web-1" in keys
    finally:
        assert agent.stop() == 0, "".join(agent.output)
    banner = "".join(agent.output)
    assert f"etcds://***@{secure.endpoint}" in banner, banner
    for secret in (PASSWORD, PASSWORD_Q, "s3cret"):
        assert secret not in banner, banner
