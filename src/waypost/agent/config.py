"""The agent's settings: defaults, then a TOML config file, then flags.

A setting is checked the same way wherever it comes from (`validate`); only
the name in the message differs: `--node 'a b': ...` for a flag,
`setting 'node' in agent.toml: ...` for the file.

Secrets (ACL tokens) never come from a flag, where `ps` would show them: from
the file (`[acl.tokens] initial_management = "..."`, or `..._file = PATH` to
read them from a file of their own), or from the environment
(`WAYPOST_ACL_TOKEN_INITIAL_MANAGEMENT`, `_AGENT`, `_DEFAULT`), which wins.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import platformdirs

from .. import _duration
from .._address import split_address
from .._exceptions import ConfigError, ValidationError

LOG_LEVELS = ("trace", "debug", "info", "warn", "warning", "error")
# Consul's rules: a node name must be a DNS label to be found as <node>.node.consul,
# a datacenter lowercase letters, digits, - and _.
_NODE_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_DATACENTER = re.compile(r"[a-z0-9_-]{1,64}")
_DOMAIN = re.compile(
    r"(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
    r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?"
)

Namer = Callable[[str], str]


class AclTokens(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    initial_management: str = ""  # created at start-up as a management token
    agent: str = ""  # what the agent's own writes (its node, reaping) are authorized as
    default: str = ""  # for requests that send no token, and for DNS
    initial_management_file: str = ""
    agent_file: str = ""
    default_file: str = ""

    def resolved(self) -> AclTokens:
        """Each token from its environment variable, else its file, else the value."""
        values = {}
        for name in ("initial_management", "agent", "default"):
            env = os.environ.get(f"WAYPOST_ACL_TOKEN_{name.upper()}", "")
            path = getattr(self, f"{name}_file")
            values[name] = env or (_read_secret(path) if path else getattr(self, name))
        return AclTokens(**values)


class AclSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    enabled: bool = False
    default_policy: str = "allow"
    tokens: AclTokens = AclTokens()


class AgentConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    http: str = "127.0.0.1:8500"  # "off": no plain HTTP listener (with --https)
    dns: str = "127.0.0.1:8600"
    data_dir: str = ""
    store: str = ""
    dev: bool = False
    node: str = ""
    datacenter: str = "dc1"
    advertise: str = "127.0.0.1"
    log_level: str = "info"
    log_json: bool = False
    http_read_timeout: float = 10.0  # seconds a client has to send a whole request
    enable_script_checks: bool = False
    domain: str = "consul."
    alt_domain: str = ""
    dns_only_passing: bool = False
    dns_service_ttl: dict[str, str] = {}
    dns_node_ttl: str = "0s"
    recursors: list[str] = []
    session_ttl_min: str = "10s"  # Consul's: the shortest session TTL accepted
    check_update_interval: str = "5m"  # Consul's: how often a changed output alone is stored
    grpc: str = "127.0.0.1:8502"  # the xDS (ADS) server for Envoy and gRPC; "off" disables
    grpc_tls: str = ""  # the xDS server over TLS (Consul's grpc_tls), with the tls_* files
    leaf_cert_ttl: str = "72h"  # lifetime of the mesh's leaf certificates
    sidecar_min_port: int = 21000
    sidecar_max_port: int = 21255
    dns_udp_max_size: int = 1232  # bytes (the DNS flag day size), whatever EDNS asks
    dns_udp_answer_limit: int = 0  # records in a UDP answer (Consul's udp_answer_limit); 0: all
    dns_a_record_limit: int = 0  # A/AAAA records in any answer (Consul's a_record_limit); 0: all
    dns_tcp_max_conns_per_client: int = 32  # 0: no limit
    # security (docs/security.md)
    https: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_ca_file: str = ""
    tls_verify_incoming: bool = False
    http_max_conns_per_client: int = 200  # Consul's default; 0: no limit
    acl: AclSettings = AclSettings()

    def session_ttl_min_seconds(self) -> float:
        """Raises ConfigError for a value that is not a positive Go duration."""
        try:
            seconds = _duration.parse(self.session_ttl_min, "session_ttl_min")
        except ValidationError as exc:
            raise ConfigError(str(exc)) from exc
        if seconds <= 0:
            raise ConfigError("session_ttl_min must be a positive duration, such as 10s")
        return seconds

    def check_update_seconds(self) -> float:
        """Raises ConfigError for a value that is not a Go duration of 0s or more."""
        _interval(self.check_update_interval, "check_update_interval")
        return _duration.parse(self.check_update_interval, "check_update_interval")

    def check_security(self) -> None:
        """Raise ConfigError for security settings that cannot work together."""
        if self.acl.default_policy not in ("allow", "deny"):
            raise ConfigError(
                f'acl default_policy "{self.acl.default_policy}": use "allow" or "deny"'
            )
        if self.http == "off" and not self.https:
            raise ConfigError("--http off needs --https: the agent would serve no API")
        for flag, value in (("--https", self.https), ("--grpc-tls", self.grpc_tls)):
            if value and not (self.tls_cert_file and self.tls_key_file):
                raise ConfigError(f"{flag} needs --tls-cert-file and --tls-key-file")
        if self.tls_verify_incoming and not self.tls_ca_file:
            raise ConfigError("--tls-verify-incoming needs --tls-ca-file to verify clients with")
        for name in ("http_max_conns_per_client", "dns_tcp_max_conns_per_client"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 (no limit) or more")
        if self.dns_udp_max_size < 512:
            raise ConfigError("dns_udp_max_size must be at least 512 bytes")

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
    """Read a TOML config file into flag-named settings, each checked as its flag is.

    Raises:
        ConfigError: the file is missing or not TOML, or a setting is unknown,
            of the wrong type or invalid; the message names the setting and the file.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = msgspec.toml.decode(raw)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    settings = {str(k).replace("-", "_"): v for k, v in data.items()}
    fields = {f.name: f.type for f in msgspec.structs.fields(AgentConfig)}
    for key, value in settings.items():
        if key not in fields:
            raise ConfigError(f"unknown setting '{key}' in {path}{_did_you_mean(key, fields)}")
        try:
            settings[key] = msgspec.convert(value, fields[key])
        except msgspec.ValidationError as exc:
            raise ConfigError(f"setting '{key}' in {path}: {exc}") from exc
    validate(settings, lambda key: f"setting '{key}' in {path}:")
    return settings


def flag_name(key: str) -> str:
    """The flag that sets `key`: `dns_node_ttl` -> `--dns-node-ttl`."""
    return "--recursor" if key == "recursors" else "--" + key.replace("_", "-")


def validate(settings: dict[str, Any], name: Namer) -> None:
    """Check the values that types alone do not (`name(key)` starts each message).

    Raises:
        ConfigError: naming the setting, the value and what would be valid.
    """
    for key, value in settings.items():
        check = _CHECKS.get(key)
        if check is not None and value is not None:
            check(value, f"{name(key)} {value!r}")


def _did_you_mean(key: str, known: dict[str, object]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else f" (settings: {', '.join(known)})"


def _address(value: str, what: str) -> None:
    try:
        split_address(value, what)
    except ConfigError:
        raise ConfigError(f"{what}: expected ADDRESS:PORT, e.g. 127.0.0.1:8500") from None


def _dns_address(value: str, what: str) -> None:
    if value != "off":
        _address(value, what)


def _node(value: str, what: str) -> None:
    if not _NODE_NAME.fullmatch(value):
        raise ConfigError(
            f"{what}: a node name is letters, digits and dashes (at most 63), "
            "so that it can be looked up as <node>.node.consul"
        )


def _datacenter(value: str, what: str) -> None:
    if not _DATACENTER.fullmatch(value):
        raise ConfigError(f"{what}: a datacenter is lowercase letters, digits, - and _")


def _advertise(value: str, what: str) -> None:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(f"{what}: expected an IP address, e.g. 10.0.0.5") from None
    if address.is_unspecified:
        raise ConfigError(f"{what}: others cannot reach {value}: give this host's address")


def _domain(value: str, what: str, required: bool = True) -> None:
    if not value and not required:
        return
    if not value or not _DOMAIN.fullmatch(value):
        raise ConfigError(f"{what}: expected a DNS domain, e.g. consul.")


def _log_level(value: str, what: str) -> None:
    if value not in LOG_LEVELS:
        raise ConfigError(f"{what}: expected one of {', '.join(LOG_LEVELS)}")


def _duration_setting(value: str, what: str, *, example: str, zero_ok: bool, below: str) -> None:
    try:
        seconds = _duration.parse(value, what)
    except ValidationError:
        raise ConfigError(f"{what}: expected a duration, e.g. {example}") from None
    if seconds < 0 or (seconds == 0 and not zero_ok):
        raise ConfigError(f"{what}: {below}")


def _ttl(value: str, what: str) -> None:
    _duration_setting(
        value, what, example="10s or 1m", zero_ok=True, below="a TTL cannot be negative"
    )


def _positive_duration(value: str, what: str) -> None:
    _duration_setting(value, what, example="10s", zero_ok=False, below="must be more than 0s")


def _interval(value: str, what: str) -> None:
    _duration_setting(
        value, what, example="5m or 0s", zero_ok=True, below="cannot be negative (0s: no delay)"
    )


def _ttls(value: dict[str, str], what: str) -> None:
    for service, ttl in value.items():
        _ttl(ttl, f"{what} ({service})")


def _port(value: int, what: str) -> None:
    if not 1 <= value <= 65535:
        raise ConfigError(f"{what}: expected a port, 1 to 65535")


def _positive(value: float, what: str) -> None:
    if value <= 0:
        raise ConfigError(f"{what}: must be more than 0")


def _recursors(value: list[str], what: str) -> None:
    for recursor in value:
        bare = ":" not in recursor.strip("[]") or recursor.endswith("]")  # port 53
        try:
            host = recursor if bare else split_address(recursor, what)[0]
            ipaddress.ip_address(host.strip("[]"))
        except (ValueError, ConfigError):
            raise ConfigError(f"{what}: {recursor!r} is not IP[:PORT], e.g. 127.0.0.1:53") from None


_CHECKS: dict[str, Callable[[Any, str], None]] = {
    "http": _dns_address,  # "off" (with --https) or ADDRESS:PORT
    "dns": _dns_address,
    "node": _node,
    "datacenter": _datacenter,
    "advertise": _advertise,
    "domain": _domain,
    "alt_domain": lambda v, what: _domain(v, what, required=False),
    "log_level": _log_level,
    "dns_node_ttl": _ttl,
    "dns_service_ttl": _ttls,
    "http_read_timeout": _positive,
    "recursors": _recursors,
    "session_ttl_min": _positive_duration,
    "check_update_interval": _interval,
    "grpc": _dns_address,  # "off" or ADDRESS:PORT, like --dns
    "leaf_cert_ttl": _positive_duration,
    "sidecar_min_port": _port,
    "sidecar_max_port": _port,
    "https": _address,
    "grpc_tls": _address,
}


def _read_secret(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the secret file {path}: {exc.strerror}") from exc
