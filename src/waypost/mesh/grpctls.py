"""The xDS server's TLS port (`--grpc-tls`, Consul's `grpc_tls`): the agent's
certificate and key (`--tls-cert-file`, `--tls-key-file`), client
certificates required when `--tls-verify-incoming` is set, reloaded on
SIGHUP like the HTTPS listener's.

grpcio takes a *fetcher* for this: it asks before each new handshake
whether the certificate changed, so a reload needs no restart; connections
already open keep the certificate they began with.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]

from .._exceptions import ConfigError

log = logging.getLogger("waypost.mesh")


class GrpcTls:
    def __init__(self, cert_file: str, key_file: str, ca_file: str, verify: bool) -> None:
        """Raises ConfigError naming a file that cannot be read."""
        self.files = (cert_file, key_file, ca_file)
        self.verify = verify
        self._initial = self._load()
        self._pending: Any = None
        self._lock = threading.Lock()  # the fetcher runs on grpc's own threads

    def _load(self) -> Any:
        cert_file, key_file, ca_file = self.files
        try:
            cert, key = Path(cert_file).read_bytes(), Path(key_file).read_bytes()
            roots = Path(ca_file).read_bytes() if ca_file else None
        except OSError as exc:
            raise ConfigError(f"--grpc-tls: cannot read {exc.filename}: {exc.strerror}") from exc
        if b"CERTIFICATE" not in cert or b"PRIVATE KEY" not in key:
            raise ConfigError(f"--grpc-tls: {cert_file} or {key_file} is not a PEM cert and key")
        return grpc.ssl_server_certificate_configuration([(key, cert)], roots)

    def credentials(self) -> Any:
        return grpc.dynamic_ssl_server_credentials(
            self._initial, self._fetch, require_client_authentication=self.verify
        )

    def _fetch(self) -> Any:
        with self._lock:
            pending, self._pending = self._pending, None
        return pending  # None: keep the current one

    def reload(self) -> bool:
        """Read the files again for the next handshakes. A bad file keeps the old ones."""
        try:
            fresh = self._load()
        except ConfigError as exc:
            log.error("SIGHUP: the xDS TLS port kept its old certificate: %s", exc)
            return False
        with self._lock:
            self._pending = fresh
        log.info("SIGHUP: reloaded the xDS TLS certificate %s", self.files[0])
        return True
