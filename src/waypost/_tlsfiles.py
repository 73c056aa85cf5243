"""The agent's own TLS files (`--tls-cert-file`, `--tls-key-file`,
`--tls-ca-file`), read and checked in one place for both of its TLS
listeners: the HTTPS listener (Python's ssl, inside uvicorn) and the xDS TLS
port (grpcio, which has its own BoringSSL and takes the files' bytes). Both
check at start-up (a bad file fails the start) and on SIGHUP (a bad file
keeps the old certificate), with the same messages.

What is checked, with Python's ssl (OpenSSL): the certificate file holds a
PEM certificate that parses, the key file an unencrypted private key, the
key is the certificate's, and the CA file holds PEM certificates; a
`-----BEGIN` line that opens no complete block (a file cut short by a copy
or a renewal half written) is refused too, where OpenSSL would skip it or
fail later naming no file. Each refusal names the file and the reason. Not
checked: expiry (the HTTPS listener never refused an expired certificate,
and grpcio serves one too; clients refuse it) and whether the name matches
(the clients' check).

Each file is read once, and both listeners get exactly the bytes that were
checked: grpcio takes bytes, and Python's ssl, which loads a key pair only
from paths, gets them from copies in a private temporary directory
(`install`). Loading from the original paths again would race a renewal:
a certificate written after the check but before the key makes OpenSSL
install the new certificate, fail at the key and keep neither pair.
A top-level private module: the agent and the mesh both use it.
"""

from __future__ import annotations

import base64
import os
import re
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ._exceptions import ConfigError

# A PEM certificate block: what both OpenSSL and BoringSSL read out of a file,
# skipping anything around it (a key in the same file, `openssl x509 -text` output).
# TRUSTED CERTIFICATE is OpenSSL's form with trust settings (`openssl x509 -trustout`).
_CERT_BLOCK = re.compile(
    rb"-----BEGIN (?P<kind>(?:TRUSTED )?CERTIFICATE)-----[^-]*-----END (?P=kind)-----"
)
# Any complete PEM block (a key's legacy headers hold '-': matched lazily).
_ANY_BLOCK = re.compile(rb"-----BEGIN (?P<kind>[^-\n]+)-----.*?-----END (?P=kind)-----", re.DOTALL)

# OpenSSL's reasons that the key is not the certificate's (another key, another type).
_NOT_ITS_KEY = frozenset({"KEY_VALUES_MISMATCH", "KEY_TYPE_MISMATCH", "NO_CERTIFICATE_ASSIGNED"})
# Its reasons that the certificate itself is too weak for its security level.
_WEAK = frozenset({"EE_KEY_TOO_SMALL", "CA_KEY_TOO_SMALL", "CA_MD_TOO_WEAK", "KEY_TOO_SMALL"})
# Its reasons that the key file holds no key it can read.
_NO_KEY = frozenset({"NO_START_LINE", "PEM_LIB", "BAD_BASE64_DECODE", "UNSUPPORTED"})


@dataclass(frozen=True)
class TlsFiles:
    """The files' checked contents, as grpcio takes them."""

    cert_chain: bytes  # the certificate blocks of the certificate file, in order
    key: bytes
    ca: bytes | None  # the CA file's certificate blocks; None without one
    # (certificate, key, CA) file names, for messages
    paths: tuple[str, str, str] = field(default=("", "", ""), compare=False)


class _Encrypted(Exception):
    """Raised from ssl's password callback: the key needs a passphrase."""


def load(cert_file: str, key_file: str, ca_file: str = "") -> TlsFiles:
    """Read the certificate, key and CA files once and check them (see above).

    Raises:
        ConfigError: a file cannot be read, holds no certificate or key, the
            key is not the certificate's or is encrypted; the message names
            the file and the reason.
    """
    chain = _join([_plain(b) for b in _certificates(_read(cert_file), cert_file, "certificate")])
    key = _read(key_file)
    ca = _join(_certificates(_read(ca_file), ca_file, "CA certificate")) if ca_file else None
    files = TlsFiles(chain, key, ca, (cert_file, key_file, ca_file))
    install(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), files)  # the check: these very bytes
    return files


def install(context: ssl.SSLContext, files: TlsFiles) -> None:
    """Load the key pair (and the CA certificates) of `files` into `context`,
    from 0600 copies in a private temporary directory removed right after.

    Raises:
        ConfigError: OpenSSL refuses them, naming the file and the reason.
            The context may then hold the new certificate without its key:
            install good files again (the HTTPS listener's last pair).
    """
    with tempfile.TemporaryDirectory(prefix="waypost-tls-") as private:  # mode 0700
        chain = _private(Path(private, "chain.pem"), files.cert_chain)
        key = _private(Path(private, "key.pem"), files.key)
        _load_pair(context, chain, key, files.paths)
        if files.ca is not None:
            _load_ca(context, _private(Path(private, "ca.pem"), files.ca), files.paths[2])


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc


def _private(path: Path, content: bytes) -> str:
    try:  # O_EXCL in a fresh 0700 directory: no one else's file, no one else reads it
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(content)
    except OSError as exc:
        raise ConfigError(f"cannot copy the TLS files to check: {path}: {exc.strerror}") from exc
    return str(path)


def certificate_blocks(content: bytes) -> list[bytes]:
    """The PEM certificate blocks (CERTIFICATE, TRUSTED CERTIFICATE) in
    `content`, in order, without what is around them (comments, `openssl x509
    -text` output, in any encoding). Nothing checked: see `_certificates`."""
    return [match.group(0) for match in _CERT_BLOCK.finditer(content)]


def _certificates(content: bytes, path: str, what: str) -> list[bytes]:
    """The PEM certificate blocks of a file, each checked to parse."""
    _refuse_partial_blocks(content, path)
    blocks = certificate_blocks(content)
    if not blocks:
        raise ConfigError(f"{path} holds no PEM {what} (no BEGIN CERTIFICATE block)")
    _parse(_join(blocks), path, what)  # one load of them all: a corrupt block fails it
    return blocks


def _join(blocks: list[bytes]) -> bytes:
    return b"\n".join(blocks) + b"\n"


def _plain(block: bytes) -> bytes:
    """A served certificate as a plain CERTIFICATE block: grpcio (BoringSSL)
    refuses TRUSTED CERTIFICATE, whose DER is the certificate followed by
    trust settings that mean nothing to the peer it is sent to. The block
    parsed already, so its DER starts with the certificate's SEQUENCE."""
    if not block.startswith(b"-----BEGIN TRUSTED"):
        return block
    body = block.split(b"-----")[2]
    der = base64.b64decode(b"".join(body.split()))
    size, header = der[1], 2
    if size & 0x80:  # long form: the next (size & 0x7f) bytes hold the length
        header += size & 0x7F
        size = int.from_bytes(der[2:header], "big")
    return ssl.DER_cert_to_PEM_cert(der[: header + size]).encode("ascii").rstrip(b"\n")


def _refuse_partial_blocks(content: bytes, path: str) -> None:
    """Every `-----BEGIN` opens a complete block: a cut-off one is refused."""
    complete = len(_ANY_BLOCK.findall(content))
    if content.count(b"-----BEGIN ") != complete:
        raise ConfigError(
            f"{path} holds an incomplete PEM block (a -----BEGIN line without its "
            "-----END line: the file is cut short or corrupt)"
        )


def _parse(block: bytes, path: str, what: str) -> None:
    # cadata takes no TRUSTED CERTIFICATE (PEM_read_bio_X509); a file does (X509_AUX)
    with tempfile.TemporaryDirectory(prefix="waypost-tls-") as private:
        copy = _private(Path(private, "cert.pem"), block)
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(copy)
        except ssl.SSLError as exc:
            raise ConfigError(f"{path}: its {what} does not parse: {exc}") from exc


def _load_pair(context: ssl.SSLContext, chain: str, key: str, paths: tuple[str, str, str]) -> None:
    """The key parses, is not encrypted, and is the certificate's. The
    certificates parsed already: an error here is about the pair or the key."""
    cert_file, key_file, _ = paths
    try:
        context.load_cert_chain(chain, key, password=_no_passphrase)
    except _Encrypted:
        raise ConfigError(f"{key_file} is an encrypted key: waypost needs it unencrypted") from None
    except ssl.SSLError as exc:
        raise ConfigError(_pair_refusal(exc, cert_file, key_file)) from exc
    except OSError as exc:  # the private copies: filename is None here (CPython)
        raise ConfigError(f"cannot load {cert_file} and {key_file}: {exc.strerror}") from exc


def _pair_refusal(exc: ssl.SSLError, cert_file: str, key_file: str) -> str:
    if exc.reason in _NOT_ITS_KEY:
        return f"{key_file} is not the key of the certificate in {cert_file} ({exc.reason})"
    if exc.reason in _WEAK:
        return f"{cert_file}: OpenSSL refuses the certificate as too weak ({exc.reason})"
    if exc.reason is None or exc.reason in _NO_KEY:  # "PEM lib": no key block it reads
        return f"{key_file} holds no PEM private key ({exc.reason or exc.strerror})"
    return f"{cert_file} and {key_file} do not load as a key pair: {exc.reason or exc}"


def _load_ca(context: ssl.SSLContext, copy: str, ca_file: str) -> None:
    try:
        context.load_verify_locations(copy)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{ca_file}: its CA certificates do not load: {exc}") from exc


def _no_passphrase() -> str:
    raise _Encrypted()
