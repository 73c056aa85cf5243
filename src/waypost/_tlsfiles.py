"""The agent's own TLS files (`--tls-cert-file`, `--tls-key-file`,
`--tls-ca-file`), read and checked in one place for both of its TLS
listeners: the HTTPS listener (Python's ssl, inside uvicorn) and the xDS TLS
port (grpcio, which has its own BoringSSL and takes the files' bytes). Both
check at start-up (a bad file fails the start) and on SIGHUP (a bad file
keeps the old certificate), with the same messages.

What is checked, with Python's ssl (OpenSSL): the certificate file holds a
PEM certificate that parses, the key file an unencrypted private key, the
key is the certificate's, and the CA file holds PEM certificates. Each
refusal names the file and the reason. Not checked: expiry (the HTTPS
listener never refused an expired certificate, and grpcio serves one too;
clients refuse it) and whether the name matches (the clients' check).

Python's ssl loads a key pair only from paths, grpcio only from bytes, so
the bytes are read before the check and again after it: a file replaced in
between is refused (the next SIGHUP loads it), never handed to grpcio
unchecked. A top-level private module: the agent and the mesh both use it.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from pathlib import Path

from ._exceptions import ConfigError

# A PEM certificate block: what both OpenSSL and BoringSSL read out of a file,
# skipping anything around it (a key in the same file, `openssl x509 -text` output).
_CERT_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----[^-]*-----END CERTIFICATE-----")


@dataclass(frozen=True)
class TlsFiles:
    """The files' checked contents, as grpcio takes them."""

    cert_chain: bytes  # the certificate blocks of the certificate file, in order
    key: bytes
    ca: bytes | None  # the CA file's certificate blocks; None without one


class _Encrypted(Exception):
    """Raised from ssl's password callback: the key needs a passphrase."""


def load(cert_file: str, key_file: str, ca_file: str = "") -> TlsFiles:
    """Read the certificate, key and CA files and check them (see above).

    Raises:
        ConfigError: a file cannot be read, holds no certificate or key, the
            key is not the certificate's or is encrypted; the message names
            the file and the reason.
    """
    cert, key = _read(cert_file), _read(key_file)
    chain = _certificates(cert, cert_file, "certificate")
    ca = _certificates(_read(ca_file), ca_file, "CA certificate") if ca_file else None
    _check_pair(cert_file, key_file)
    for path, content in ((cert_file, cert), (key_file, key)):
        if _read(path) != content:
            raise ConfigError(f"{path} changed while it was being read; send SIGHUP again")
    return TlsFiles(chain, key, ca)


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc


def _certificates(content: bytes, path: str, what: str) -> bytes:
    """The PEM certificate blocks of a file, each checked to parse."""
    blocks = _CERT_BLOCK.findall(content)
    if not blocks:
        raise ConfigError(f"{path} holds no PEM {what} (no BEGIN CERTIFICATE block)")
    try:  # parses every block: a truncated or corrupted one fails here
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(
            cadata=b"\n".join(blocks).decode("ascii")
        )
    except (ssl.SSLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: its {what} does not parse: {exc}") from exc
    return b"\n".join(blocks) + b"\n"


def _check_pair(cert_file: str, key_file: str) -> None:
    """The key parses, is not encrypted, and is the certificate's. The
    certificate itself parsed already: an error here is about the key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_file, key_file, password=_no_passphrase)
    except _Encrypted:
        raise ConfigError(f"{key_file} is an encrypted key: waypost needs it unencrypted") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                f"{key_file} is not the key of the certificate in {cert_file}"
            ) from exc
        raise ConfigError(f"{key_file} holds no PEM private key") from exc
    except OSError as exc:  # removed since it was read
        raise ConfigError(f"cannot read {exc.filename}: {exc.strerror}") from exc


def _no_passphrase() -> str:
    raise _Encrypted()
