"""The xDS server's TLS port (`--grpc-tls`, Consul's `grpc_tls`): the agent's
certificate and key (`--tls-cert-file`, `--tls-key-file`), client
certificates required when `--tls-verify-incoming` is set, reloaded on
SIGHUP like the HTTPS listener's and checked by the same function
(`waypost/_tlsfiles.py`): a bad file fails the start, and on SIGHUP keeps the
old certificate with a line naming the file and the reason.

grpcio takes a *fetcher* for this (`dynamic_ssl_server_credentials`). Its
C core calls it once per accepted connection, before that connection's
handshake (`add_handshakers` in ssl_security_connector.cc), under the
port's lock, from one of its threads: `None` means "unchanged", a
configuration means "build a new handshaker factory from it and use it from
now on". The first call (when the port is added) is answered by grpcio
itself with the initial configuration, without calling the fetcher. So the
fetcher hands over a reloaded configuration once and answers None after
that: returning the same configuration on every call would also work, but
rebuilds an SSL context for every connection. Open connections keep the
certificate they began with.

grpcio checks nothing when it is given a configuration: a key that is not
the certificate's only fails when its core builds the factory, at the next
connection, which then keeps the old one (and says so only on stderr). Hence the check here, before
the configuration is handed over, and the "reloaded" line only after it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import grpc  # type: ignore[import-untyped]

from .. import _tlsfiles
from .._exceptions import ConfigError

log = logging.getLogger("waypost.mesh")


class GrpcTls:
    KEPT = "the xDS TLS port kept the old certificate"

    def __init__(self, cert_file: str, key_file: str, ca_file: str, verify: bool) -> None:
        """Raises ConfigError naming the file that does not load and why."""
        self.files = (cert_file, key_file, ca_file)
        self.verify = verify
        try:
            self._initial = self._load()
        except ConfigError as exc:
            raise ConfigError(f"--grpc-tls: {exc}") from exc
        self._pending: Any = None
        self._lock = threading.Lock()  # the fetcher runs on grpc's own threads

    def _load(self) -> Any:
        return self._configuration(_tlsfiles.load(*self.files))

    def _configuration(self, files: _tlsfiles.TlsFiles) -> Any:
        if files.ca is not None and b"TRUSTED CERTIFICATE" in files.ca:
            # BoringSSL does not read it, and dropping its trust settings would widen them
            raise ConfigError(
                f"{self.files[2]} holds a TRUSTED CERTIFICATE, which grpcio does not read: "
                f"write it as a plain one (openssl x509 -in {self.files[2]} -out ca.pem)"
            )
        return grpc.ssl_server_certificate_configuration([(files.key, files.cert_chain)], files.ca)

    def credentials(self) -> Any:
        return grpc.dynamic_ssl_server_credentials(
            self._initial, self._fetch, require_client_authentication=self.verify
        )

    def _fetch(self) -> Any:
        with self._lock:
            pending, self._pending = self._pending, None
        return pending  # None: keep the current one

    def use(self, files: _tlsfiles.TlsFiles) -> None:
        """Serve `files` (checked by `_tlsfiles.load`) from the next handshake on.

        Raises:
            ConfigError: grpcio cannot take them; the port keeps the old ones.
        """
        try:
            fresh = self._configuration(files)
        except ConfigError as exc:
            raise ConfigError(f"{self.KEPT}: {exc}") from exc
        with self._lock:
            self._pending = fresh
        log.info("SIGHUP: reloaded the xDS TLS certificate %s", self.files[0])
