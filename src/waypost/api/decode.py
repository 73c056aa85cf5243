"""Request bodies, decoded as Consul decodes them.

Consul accepts keys in any case and with snake_case aliases (`Name`, `name`,
`deregister_critical_service_after`), and durations as Go strings ("10s",
"1m30s") or integer nanoseconds. We fold every key to lower case without `_`
or `-`, except inside user maps (Meta, Header...), then convert with msgspec,
which reports the path of a wrong value. Everything that can be wrong is
checked here, before anything is written.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Final

import msgspec

from .._exceptions import ValidationError
from ..catalog.model import Check, CheckDefinition, Service, ServiceAddress, Weights

# Maps whose keys belong to the user and are kept as sent.
_OPAQUE: Final = frozenset({"meta", "nodemeta", "servicemeta", "header"})
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS: Final = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_WAIT: Final = 600.0
_FOLDED: dict[str, str] = {}  # key as sent -> folded key


def fold(value: Any) -> Any:
    """Fold keys to Consul's case-insensitive form, recursively; drop nulls."""
    if isinstance(value, list):
        return [fold(v) if isinstance(v, dict | list) else v for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        if item is None:
            continue
        name = _fold_key(key)
        if name in _OPAQUE or not isinstance(item, dict | list):
            out[name] = item
        elif name == "taggedaddresses" and isinstance(item, dict):
            out[name] = {k: fold(v) for k, v in item.items()}
        else:
            out[name] = fold(item)
    return out


def _fold_key(key: str) -> str:
    name = _FOLDED.get(key)
    if name is None:
        name = key.lower().replace("_", "").replace("-", "")
        if len(_FOLDED) < 1024:  # clients use few spellings; a hostile one cannot grow this
            _FOLDED[key] = name
    return name


def parse_duration(value: object, field: str) -> float:
    """A Go duration string or integer nanoseconds, in seconds.

    Raises:
        ValidationError: naming the field and the bad value.
    """
    if isinstance(value, bool):
        raise ValidationError(f"{field}: invalid duration {value!r}")
    if isinstance(value, int | float):
        return float(value) / 1e9
    if not isinstance(value, str):
        raise ValidationError(f"{field}: invalid duration {value!r}")
    text = value.strip()
    if text in ("", "0"):
        return 0.0
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    parts = _DURATION.findall(body)
    if not parts or "".join(n + u for n, u in parts) != body:
        raise ValidationError(
            f'{field}: invalid duration "{value}" '
            '(expected a number with a unit, e.g. "10s" or "1m30s")'
        )
    return sign * sum(float(n) * _UNITS[u] for n, u in parts)


class CheckBody(msgspec.Struct):
    checkid: str = ""
    id: str = ""
    name: str = ""
    status: str = ""
    notes: str = ""
    serviceid: str = ""
    node: str = ""
    args: list[str] = []
    scriptargs: list[str] = []
    http: str = ""
    header: dict[str, list[str]] = {}
    method: str = ""
    body: str = ""
    tcp: str = ""
    grpc: str = ""
    grpcusetls: bool = False
    tlsskipverify: bool = False
    interval: str | int = ""
    timeout: str | int = ""
    ttl: str | int = ""
    deregistercriticalserviceafter: str | int = ""
    successbeforepassing: int = 0
    failuresbeforewarning: int = 0
    failuresbeforecritical: int = 0
    output: str = ""


class WeightsBody(msgspec.Struct):
    passing: int = 1
    warning: int = 1


class AddressBody(msgspec.Struct):
    address: str = ""
    port: int = 0


class ServiceBody(msgspec.Struct):
    id: str = ""
    name: str = ""
    service: str = ""  # the catalog endpoint's spelling of Name
    tags: list[str] = []
    address: str = ""
    port: int = 0
    meta: dict[str, str] = {}
    weights: WeightsBody | None = None
    taggedaddresses: dict[str, AddressBody] = {}
    enabletagoverride: bool = False
    kind: str = ""
    check: CheckBody | None = None
    checks: list[CheckBody] = []

    def all_checks(self) -> list[CheckBody]:
        """`Check` and `Checks` together, in the order given."""
        return ([self.check] if self.check else []) + self.checks


class CatalogBody(msgspec.Struct):
    node: str = ""
    id: str = ""
    address: str = ""
    datacenter: str = ""
    taggedaddresses: dict[str, str] = {}
    nodemeta: dict[str, str] = {}
    service: ServiceBody | None = None
    check: CheckBody | None = None
    checks: list[CheckBody] = []
    skipnodeupdate: bool = False

    def all_checks(self) -> list[CheckBody]:
        """`Check` and `Checks` together, in the order given."""
        return ([self.check] if self.check else []) + self.checks


class CatalogDeregisterBody(msgspec.Struct):
    node: str = ""
    serviceid: str = ""
    checkid: str = ""


class UpdateBody(msgspec.Struct):
    status: str = ""
    output: str = ""


def _convert(raw: bytes, kind: type[Any]) -> Any:
    try:
        data = msgspec.json.decode(raw) if raw.strip() else {}
    except msgspec.DecodeError as exc:
        raise ValidationError(f"Request decode failed: invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValidationError("Request decode failed: expected a JSON object")
    try:
        return msgspec.convert(fold(data), kind)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"Request decode failed: {_consul_path(str(exc))}") from exc


def _consul_path(message: str) -> str:
    """msgspec says `$.checks[0].interval`; say it with the field names users wrote."""
    return message.replace("`$.", "`").replace("`$`", "the body")


def decode_service(raw: bytes) -> ServiceBody:
    body: ServiceBody = _convert(raw, ServiceBody)
    body.name = body.name or body.service
    if not body.name:
        raise ValidationError("Missing service name")
    validate_port(body.port, "Port")
    for label, addr in body.taggedaddresses.items():
        validate_port(addr.port, f"TaggedAddresses.{label}.Port")
    if body.weights is not None and body.weights.passing < 1:
        raise ValidationError("Passing must be greater than 0")
    if body.weights is not None and body.weights.warning < 0:
        raise ValidationError("Warning must not be negative")
    return body


def decode_check(raw: bytes) -> CheckBody:
    body: CheckBody = _convert(raw, CheckBody)
    if not body.name:
        raise ValidationError("Missing check name")
    return body


def decode_catalog_register(raw: bytes) -> CatalogBody:
    body: CatalogBody = _convert(raw, CatalogBody)
    if not body.node:
        raise ValidationError("Must provide node")
    if not body.address and not body.skipnodeupdate:
        raise ValidationError("Must provide address if SkipNodeUpdate is not set")
    if body.service is not None:
        body.service.name = body.service.name or body.service.service
        if not body.service.name:
            raise ValidationError("Must provide service name with ID")
        validate_port(body.service.port, "Service.Port")
    return body


def decode_catalog_deregister(raw: bytes) -> CatalogDeregisterBody:
    body: CatalogDeregisterBody = _convert(raw, CatalogDeregisterBody)
    if not body.node:
        raise ValidationError("Must provide node")
    return body


def decode_update(raw: bytes) -> UpdateBody:
    body: UpdateBody = _convert(raw, UpdateBody)
    validate_status(body.status, "Invalid check status")
    return body


def validate_port(port: int, field: str) -> None:
    if not 0 <= port <= 65535:
        raise ValidationError(f"{field} must be between 0 and 65535, got {port}")


def validate_status(status: str, prefix: str) -> None:
    if status not in ("passing", "warning", "critical"):
        raise ValidationError(f'{prefix}: "{status}" (expected passing, warning or critical)')


def build_service(body: ServiceBody, node: str) -> Service:
    """A Service record from a validated body (agent or catalog registration)."""
    return Service(
        node=node,
        id=body.id or body.name,
        name=body.name,
        tags=tuple(body.tags),
        address=body.address,
        port=body.port,
        meta=body.meta,
        weights=_weights_of(body),
        tagged_addresses=_tagged_of(body),
        enable_tag_override=body.enabletagoverride,
        kind=body.kind,
    )


def _weights_of(body: ServiceBody) -> Weights:
    if body.weights is None:
        return Weights()
    return Weights(body.weights.passing, body.weights.warning)


def _tagged_of(body: ServiceBody) -> dict[str, ServiceAddress]:
    return {k: ServiceAddress(v.address, v.port) for k, v in body.taggedaddresses.items()}


def check_definition(body: CheckBody) -> CheckDefinition:
    """Validate a check's type and timing and build its definition.

    Raises:
        ValidationError: Interval and TTL both set, no type, bad duration...
    """
    interval = parse_duration(body.interval, "Interval")
    ttl = parse_duration(body.ttl, "TTL")
    defn = CheckDefinition(
        interval=interval,
        timeout=parse_duration(body.timeout, "Timeout"),
        ttl=ttl,
        http=body.http,
        method=body.method.upper(),
        header=body.header,
        body=body.body,
        tls_skip_verify=body.tlsskipverify,
        tcp=body.tcp,
        grpc=body.grpc,
        grpc_use_tls=body.grpcusetls,
        args=tuple(body.args or body.scriptargs),
        deregister_critical_after=parse_duration(
            body.deregistercriticalserviceafter, "DeregisterCriticalServiceAfter"
        ),
        success_before_passing=body.successbeforepassing,
        failures_before_warning=body.failuresbeforewarning,
        failures_before_critical=body.failuresbeforecritical,
    )
    _validate_definition(defn)
    return defn


def _validate_definition(defn: CheckDefinition) -> None:
    kinds = [k for k in ("http", "tcp", "grpc") if getattr(defn, k)] + (
        ["args"] if defn.args else []
    )
    if len(kinds) > 1:
        raise ValidationError(f"A check has one type; got {' and '.join(kinds).upper()}")
    if defn.ttl < 0 or defn.interval < 0 or defn.timeout < 0:
        raise ValidationError("Interval, TTL and Timeout must not be negative")
    if defn.ttl and defn.interval:
        raise ValidationError("Interval and TTL cannot both be set on a check")
    if defn.ttl and kinds:
        raise ValidationError(f"A TTL check cannot also have {kinds[0].upper()}")
    if not defn.ttl and not kinds:
        raise ValidationError(
            "Invalid check: one of TTL, HTTP, TCP, GRPC or Args (with Interval) is required"
        )
    if kinds and defn.interval <= 0:
        raise ValidationError("Interval must be > 0 for Script, HTTP, gRPC or TCP checks")
    if defn.http and not defn.http.startswith(("http://", "https://")):
        raise ValidationError(f'HTTP must be an http:// or https:// URL, got "{defn.http}"')
    for kind, target in (("TCP", defn.tcp), ("GRPC", defn.grpc.partition("/")[0])):
        if target and not _is_host_port(target):
            raise ValidationError(
                f'{kind} must be host:port with a port up to 65535, got "{target}"'
            )
    if (
        min(
            defn.success_before_passing, defn.failures_before_warning, defn.failures_before_critical
        )
        < 0
    ):
        raise ValidationError("SuccessBeforePassing and FailuresBefore* must not be negative")


def _is_host_port(target: str) -> bool:
    host, sep, port = target.rpartition(":")
    return bool(sep and host and port.isdigit() and int(port) <= 65535)


def build_check(
    body: CheckBody,
    node: str,
    check_id: str,
    name: str,
    service: tuple[str, str, tuple[str, ...]] | None,
) -> Check:
    """A Check record from a validated body; `service` is (id, name, tags) or None."""
    status = body.status or "critical"
    validate_status(status, "Invalid check status")
    defn = check_definition(body)
    service_id, service_name, tags = service or ("", "", ())
    return Check(
        node=node,
        check_id=check_id,
        name=name,
        status=status,  # type: ignore[arg-type]
        notes=body.notes,
        output=body.output,
        service_id=service_id,
        service_name=service_name,
        service_tags=tags,
        type=defn.kind,
        definition=defn,
    )


@functools.lru_cache(maxsize=256)  # clients send the same few waits ("5m", "30s") every time
def parse_wait(text: str) -> float:
    """`?wait=`: a Go duration, clamped to ten minutes. Raises ValidationError."""
    try:
        seconds = parse_duration(text, "wait")
    except ValidationError:
        raise ValidationError("Invalid wait time") from None
    if seconds < 0:
        raise ValidationError("Invalid wait time")
    return min(seconds, MAX_WAIT)


def parse_index(text: str) -> int:
    if not text.isdigit():
        raise ValidationError("Invalid index")
    return int(text)
