"""The agent's settings: defaults, then a TOML config file, then flags."""

from __future__ import annotations

import socket
from pathlib import Path

import msgspec
import platformdirs

from .. import _duration
from .._exceptions import ConfigError, ValidationError


class AgentConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    http: str = "127.0.0.1:8500"
    dns: str = "127.0.0.1:8600"
    data_dir: str = ""
    store: str = ""
    dev: bool = False
    node: str = ""
    datacenter: str = "dc1"
    advertise: str = "127.0.0.1"
    log_level: str = "info"
    http_read_timeout: float = 10.0  # seconds a client has to send a whole request
    enable_script_checks: bool = False
    domain: str = "consul."
    alt_domain: str = ""
    dns_only_passing: bool = False
    dns_service_ttl: dict[str, str] = {}
    dns_node_ttl: str = "0s"
    recursors: list[str] = []
    session_ttl_min: str = "10s"  # Consul's: the shortest session TTL accepted
    grpc: str = "127.0.0.1:8502"  # the xDS (ADS) server for Envoy and gRPC; "off" disables
    leaf_cert_ttl: str = "72h"  # lifetime of the mesh's leaf certificates
    sidecar_min_port: int = 21000
    sidecar_max_port: int = 21255

    def session_ttl_min_seconds(self) -> float:
        """Raises ConfigError for a value that is not a positive Go duration."""
        try:
            seconds = _duration.parse(self.session_ttl_min, "session_ttl_min")
        except ValidationError as exc:
            raise ConfigError(str(exc)) from exc
        if seconds <= 0:
            raise ConfigError("session_ttl_min must be a positive duration, such as 10s")
        return seconds

    def store_url(self) -> str:
        """--store, else memory for --dev, else sqlite in the data dir."""
        if self.store:
            return self.store
        if self.dev:
            return "memory://"
        data_dir = self.data_path()
        assert data_dir is not None
        return f"sqlite://{(data_dir / 'catalog.db').absolute()}"

    def data_path(self) -> Path | None:
        """The data dir (node ID, lock, default store): --data-dir, else the
        user's data dir; none for an agent whose store is in memory."""
        if self.data_dir:
            return Path(self.data_dir).absolute()
        if self.dev or self.store.startswith("memory:"):
            return None
        return Path(platformdirs.user_data_dir("waypost"))

    def display_store(self) -> str:
        """The store URL with any user:password@ removed, for logs and banners."""
        scheme, sep, rest = self.store_url().partition("://")
        hosts, slash, path = rest.partition("/")
        if "@" in hosts:
            hosts = "***@" + hosts.rpartition("@")[2]
        return f"{scheme}{sep}{hosts}{slash}{path}"

    def node_name(self) -> str:
        return self.node or socket.gethostname()


def load_config_file(path: str) -> dict[str, object]:
    """Read a TOML config file into flag-named settings.

    Raises:
        ConfigError: the file is missing, not TOML, or has an unknown or mistyped key.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = msgspec.toml.decode(raw)
        settings = {str(k).replace("-", "_"): v for k, v in data.items()}
        msgspec.convert(settings, AgentConfig)  # validate names and types now
    except msgspec.DecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    except msgspec.ValidationError as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc
    return settings
