"""Parse an `etcd://` / `etcds://` store URL into the settings of the etcd backend.

    etcd://h1:2379,h2:2379,h3:2379?prefix=/waypost/&lease_ttl=10s&timeout=5s
    etcds://user:secret@h1:2379?ca=/etc/waypost/ca.pem&cert=client.pem&key=client.key
    etcd://h1:2379?user=waypost&password_file=/run/secrets/etcd

`etcds://` turns TLS on (system roots unless `ca=` is given); `ca`, `cert` or
`key` on an `etcd://` URL turn it on too. Credentials come from the URL's user
info, or `user=` with `password_file=` so that no secret shows in a process list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from .. import _duration
from .._exceptions import ConfigError, ValidationError

DEFAULT_PORT = 2379
DEFAULT_PREFIX = "/waypost/"
DEFAULT_LEASE_TTL = 10
DEFAULT_TIMEOUT = 5.0

_KNOWN = {"prefix", "lease_ttl", "timeout", "ca", "cert", "key", "user", "password_file"}


@dataclass(frozen=True)
class EtcdConfig:
    """Everything the etcd backend needs to connect, as parsed from the store URL."""

    endpoints: tuple[str, ...]
    prefix: str = DEFAULT_PREFIX
    lease_ttl: int = DEFAULT_LEASE_TTL
    timeout: float = DEFAULT_TIMEOUT
    tls: bool = False
    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = field(default=None, repr=False)
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def display(self) -> str:
        """The endpoints as operators wrote them, for error messages."""
        return ",".join(self.endpoints)


def parse_url(url: str) -> EtcdConfig:
    """Build an EtcdConfig from a store URL.

    Raises:
        ConfigError: a part of the URL cannot be used (no endpoint, unknown option,
            bad duration, unreadable certificate file...).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("etcd", "etcds"):
        raise ConfigError(f"store URL {url!r} is not an etcd:// or etcds:// URL")
    query = _query(url, parts.query)
    user, password = _credentials(parts.netloc, query)
    ca, cert, key = (_read_file(query.get(name), name) for name in ("ca", "cert", "key"))
    if (cert is None) != (key is None):
        raise ConfigError("the etcd store URL needs both cert= and key= for a client certificate")
    return EtcdConfig(
        endpoints=_endpoints(url, parts.netloc),
        prefix=_prefix(query.get("prefix", DEFAULT_PREFIX)),
        lease_ttl=_lease_ttl(query.get("lease_ttl")),
        timeout=parse_duration(query.get("timeout", str(DEFAULT_TIMEOUT)), "timeout"),
        tls=parts.scheme == "etcds" or any(v is not None for v in (ca, cert, key)),
        ca=ca,
        cert=cert,
        key=key,
        user=user,
        password=password,
    )


def parse_duration(text: str, name: str) -> float:
    """A positive Go duration ("10s", "1m30s", "500ms") or a bare number of seconds.

    Raises:
        ConfigError: the text is not a positive duration.
    """
    message = f"etcd store option {name}={text!r} is not a duration such as 10s or 500ms"
    try:
        seconds = _duration.parse(text, name, unitless="s")
    except ValidationError as exc:
        raise ConfigError(message) from exc
    if seconds <= 0:
        raise ConfigError(message)
    return seconds


def _query(url: str, raw: str) -> dict[str, str]:
    query = {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}
    unknown = sorted(set(query) - _KNOWN)
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} in store URL {url!r}; "
            f"known: {', '.join(sorted(_KNOWN))}"
        )
    return query


def _endpoints(url: str, netloc: str) -> tuple[str, ...]:
    hosts = netloc.rpartition("@")[2]
    endpoints = tuple(_endpoint(url, item.strip()) for item in hosts.split(",") if item.strip())
    if not endpoints:
        raise ConfigError(
            f"store URL {url!r} names no etcd endpoint: use etcd://host:2379[,host:2379]"
        )
    return endpoints


def _endpoint(url: str, item: str) -> str:
    """`h` -> `h:2379`; `h:p`, `[::1]:p` kept; a bare IPv6 address gets brackets."""
    if item.startswith("["):
        return item if "]:" in item else f"{item}:{DEFAULT_PORT}"
    if item.count(":") > 1:
        return f"[{item}]:{DEFAULT_PORT}"
    host, _, port = item.partition(":")
    if port and not port.isdigit():
        raise ConfigError(f"bad port in etcd endpoint {item!r} of store URL {url!r}")
    return f"{host}:{port or DEFAULT_PORT}"


def _credentials(netloc: str, query: dict[str, str]) -> tuple[str | None, str | None]:
    userinfo, at, _ = netloc.rpartition("@")
    user: str | None = None
    password: str | None = None
    if at:
        raw_user, _, raw_password = userinfo.partition(":")
        user, password = unquote(raw_user), unquote(raw_password)
    user = query.get("user", user)
    secret = _read_file(query.get("password_file"), "password_file")
    if secret is not None:
        password = secret.decode().strip()
    if user and not password:
        raise ConfigError(f"etcd user {user!r} has no password: give user:pass@ or password_file=")
    return (user or None), (password or None)


def _prefix(raw: str) -> str:
    prefix = raw if raw.endswith("/") else raw + "/"
    return prefix if prefix.startswith("/") else "/" + prefix


def _lease_ttl(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LEASE_TTL
    seconds = parse_duration(raw, "lease_ttl")
    if seconds < 2:
        raise ConfigError(f"etcd store option lease_ttl={raw!r} is below etcd's minimum of 2s")
    return round(seconds)


def _read_file(path: str | None, name: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the etcd {name} file {path!r}: {exc.strerror}") from exc
