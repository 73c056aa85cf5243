"""The agent's TLS files, checked once for the HTTPS listener and the xDS TLS
port (waypost/_tlsfiles.py): every refusal names the file and the reason.
Real certificates from a CA made here (trustme); the listeners themselves
are tested with real agents (tests/api/test_tls.py, tests/mesh/test_envoy_acl.py,
tests/agent/test_cli.py)."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import ssl
import subprocess
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from waypost import _tlsfiles
from waypost._exceptions import ConfigError


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path, trustme.LeafCert]:
    leaf = trustme.CA().issue_cert("127.0.0.1")
    cert, key = tmp_path / "agent.pem", tmp_path / "agent-key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key, leaf


def test_a_good_pair_loads_with_its_bytes(pair: tuple[Path, Path, trustme.LeafCert]) -> None:
    cert, key, leaf = pair
    files = _tlsfiles.load(str(cert), str(key))
    assert files == _tlsfiles.TlsFiles(cert.read_bytes(), key.read_bytes(), None)
    assert files.cert_chain == leaf.cert_chain_pems[0].bytes()


def test_a_file_with_key_and_certificate_gives_grpc_only_the_certificate(
    tmp_path: Path,
) -> None:
    leaf = trustme.CA().issue_cert("127.0.0.1")
    both = tmp_path / "both.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(both))
    files = _tlsfiles.load(str(both), str(both))
    assert files.cert_chain == leaf.cert_chain_pems[0].bytes()
    assert b"PRIVATE KEY" not in files.cert_chain


def _encrypted(leaf: trustme.LeafCert) -> bytes:
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )


def _truncated(leaf: trustme.LeafCert) -> bytes:
    """The certificate's PEM with half of its base64 lines gone."""
    lines = leaf.cert_chain_pems[0].bytes().splitlines()
    return b"\n".join([lines[0], *lines[1 : len(lines) // 2], lines[-1]]) + b"\n"


BAD = {
    "key of another pair": (
        "key",
        lambda leaf: trustme.CA().issue_cert("x").private_key_pem.bytes(),
        "{key} is not the key of the certificate in {cert}",
    ),
    "garbage certificate": ("cert", lambda leaf: b"garbage", "{cert} holds no PEM certificate"),
    "truncated certificate": (
        "cert",
        _truncated,
        "{cert}: its certificate does not parse",
    ),
    "a key in the certificate file": (
        "cert",
        lambda leaf: leaf.private_key_pem.bytes(),
        "{cert} holds no PEM certificate",
    ),
    "garbage key": ("key", lambda leaf: b"not a key\n", "{key} holds no PEM private key"),
    "a certificate in the key file": (
        "key",
        lambda leaf: leaf.cert_chain_pems[0].bytes(),
        "{key} holds no PEM private key",
    ),
    "encrypted key": ("key", _encrypted, "{key} is an encrypted key: waypost needs it unencrypted"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_file_is_refused_naming_it_and_why(
    pair: tuple[Path, Path, trustme.LeafCert], case: str
) -> None:
    cert, key, leaf = pair
    which, content, reason = BAD[case]
    (cert if which == "cert" else key).write_bytes(content(leaf))
    with pytest.raises(ConfigError) as raised:
        _tlsfiles.load(str(cert), str(key))
    assert reason.format(cert=cert, key=key) in str(raised.value)


def test_unreadable_files_are_refused_with_the_os_reason(
    pair: tuple[Path, Path, trustme.LeafCert], tmp_path: Path
) -> None:
    cert, key, _ = pair
    with pytest.raises(ConfigError, match=f"cannot read {tmp_path}/gone.pem: No such file"):
        _tlsfiles.load(str(cert), str(tmp_path / "gone.pem"))
    with pytest.raises(ConfigError, match=f"cannot read {tmp_path}: Is a directory"):
        _tlsfiles.load(str(tmp_path), str(key))


def test_the_ca_file_must_hold_certificates(
    pair: tuple[Path, Path, trustme.LeafCert], tmp_path: Path
) -> None:
    cert, key, _ = pair
    ca = tmp_path / "ca.pem"
    ca.write_text("garbage\n")
    with pytest.raises(ConfigError, match=f"{ca} holds no PEM CA certificate"):
        _tlsfiles.load(str(cert), str(key), str(ca))
    authority = trustme.CA()
    authority.cert_pem.write_to_path(str(ca))
    assert _tlsfiles.load(str(cert), str(key), str(ca)).ca == authority.cert_pem.bytes()


def test_the_bytes_returned_are_the_bytes_checked(
    pair: tuple[Path, Path, trustme.LeafCert], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renewal writing the key just after the check changes nothing that
    was checked: both listeners get the bytes read once, never the paths again."""
    cert, key, leaf = pair
    install = _tlsfiles.install

    def install_then_renew(context: ssl.SSLContext, files: _tlsfiles.TlsFiles) -> None:
        install(context, files)
        key.write_bytes(trustme.CA().issue_cert("x").private_key_pem.bytes())

    monkeypatch.setattr(_tlsfiles, "install", install_then_renew)
    files = _tlsfiles.load(str(cert), str(key))
    assert files.key == leaf.private_key_pem.bytes() != key.read_bytes()
    monkeypatch.undo()
    _tlsfiles.install(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), files)  # still a pair


def _cut(pem: bytes) -> bytes:
    """A PEM block cut short: its END line and the base64 before it gone."""
    return pem[: len(pem) // 2]


@pytest.mark.parametrize("where", ["last", "first"])
def test_a_cut_off_block_in_the_ca_file_is_refused_naming_it(
    pair: tuple[Path, Path, trustme.LeafCert], tmp_path: Path, where: str
) -> None:
    """OpenSSL skips or half-reads such a block and fails later naming no file."""
    cert, key, _ = pair
    good, other = trustme.CA().cert_pem.bytes(), trustme.CA().cert_pem.bytes()
    ca = tmp_path / "ca.pem"
    ca.write_bytes(good + _cut(other) if where == "last" else _cut(other) + good)
    with pytest.raises(ConfigError, match=f"{ca} holds an incomplete PEM block"):
        _tlsfiles.load(str(cert), str(key), str(ca))


def test_a_cut_off_intermediate_is_refused_naming_the_certificate_file(
    pair: tuple[Path, Path, trustme.LeafCert],
) -> None:
    cert, key, leaf = pair
    intermediate = trustme.CA().cert_pem.bytes()
    cert.write_bytes(leaf.cert_chain_pems[0].bytes() + _cut(intermediate))
    with pytest.raises(ConfigError, match=f"{cert} holds an incomplete PEM block"):
        _tlsfiles.load(str(cert), str(key))


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def test_certificate_problems_name_the_certificate_not_the_key(tmp_path: Path) -> None:
    """A 1024-bit RSA certificate (too weak for OpenSSL's level) and an RSA
    certificate with an EC key: not "holds no PEM private key"."""
    cert, key, ec = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ec.pem"
    _openssl("req", "-x509", "-newkey", "rsa:1024", "-nodes", "-subj", "/CN=x", "-days", "1",
             "-keyout", str(key), "-out", str(cert))  # fmt: skip
    with pytest.raises(ConfigError, match=f"{cert}: OpenSSL refuses the certificate as too weak"):
        _tlsfiles.load(str(cert), str(key))
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=x", "-days", "1",
             "-keyout", str(key), "-out", str(cert))  # fmt: skip
    _openssl("ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", str(ec))
    with pytest.raises(ConfigError, match=f"{ec} is not the key of the certificate in {cert}"):
        _tlsfiles.load(str(cert), str(ec))


def test_a_trusted_certificate_loads_as_pythons_ssl_takes_it(tmp_path: Path) -> None:
    """`openssl x509 -trustout` writes BEGIN TRUSTED CERTIFICATE, for the
    certificate and for CA files."""
    cert, key, ca = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=x", "-days", "1",
             "-addext", "subjectAltName=DNS:x", "-keyout", str(key), "-out", str(cert))  # fmt: skip
    _openssl("x509", "-in", str(cert), "-trustout", "-addtrust", "serverAuth", "-out", str(ca))
    files = _tlsfiles.load(str(ca), str(key), str(ca))
    assert files.ca == ca.read_bytes()  # as written: OpenSSL honours its trust settings
    assert files.cert_chain == cert.read_bytes()  # as served: the certificate alone
    _serves_over_grpc(files, cert)


def _serves_over_grpc(files: _tlsfiles.TlsFiles, ca: Path) -> None:
    """grpcio (BoringSSL) refuses a TRUSTED CERTIFICATE chain: the plain one handshakes."""
    grpc = pytest.importorskip("grpc")
    from waypost.mesh.grpctls import GrpcTls

    server = grpc.server(concurrent.futures.ThreadPoolExecutor(1))
    tls = GrpcTls(files.paths[0], files.paths[1], "", verify=False)
    port = server.add_secure_port("127.0.0.1:0", tls.credentials())
    server.start()
    try:
        options = [("grpc.ssl_target_name_override", "x")]
        creds = grpc.ssl_channel_credentials(ca.read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{port}", creds, options=options) as channel:
            grpc.channel_ready_future(channel).result(timeout=10)
    finally:
        server.stop(0)


def test_an_expired_certificate_loads_as_the_https_listener_always_took_it(
    tmp_path: Path,
) -> None:
    """Expiry is the clients' check: neither listener refuses an expired certificate."""
    past = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    leaf = trustme.CA().issue_cert("127.0.0.1", not_before=past, not_after=past.replace(month=2))
    cert, key = tmp_path / "old.pem", tmp_path / "old-key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    assert _tlsfiles.load(str(cert), str(key)).key == key.read_bytes()


def test_an_os_error_while_loading_names_the_files_not_none(
    pair: tuple[Path, Path, trustme.LeafCert], monkeypatch: pytest.MonkeyPatch
) -> None:
    """CPython's load_cert_chain raises OSError with filename None."""
    cert, key, _ = pair
    private = _tlsfiles._private

    def lose_the_key_copy(path: Path, content: bytes) -> str:
        copy = private(path, content)
        return copy + ".gone" if path.name == "key.pem" else copy

    monkeypatch.setattr(_tlsfiles, "_private", lose_the_key_copy)
    with pytest.raises(ConfigError) as raised:
        _tlsfiles.load(str(cert), str(key))
    assert str(raised.value) == f"cannot load {cert} and {key}: No such file or directory"
