"""Consul's registration definitions, and the rules that turn them into records.

These are the shapes Consul's API takes (a service definition with its
checks, a catalog registration) with keys already folded to lower case by
the adapter that parsed them (`api/decode.py`). Every writer builds its
records here: the HTTP API, and any sync or CLI that registers services. All
validation that does not depend on the catalog's state happens here, before
anything is written; what depends on the state happens in `writes.py`.
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec

from .. import _duration
from .._exceptions import ValidationError
from . import proxyconfig
from .model import Check, CheckDefinition, Proxy, Service, ServiceAddress, Upstream, Weights

# Consul runs no check more often than once a second: `"Interval": "1ns"` would
# otherwise run 19,000 probes a second and take a core. Shorter intervals and
# timeouts are raised to it, as Consul does (docs/http-api.md says so).
MIN_INTERVAL: Final = 1.0
# RFC 9110 tokens: what an HTTP method and a header name may be made of. A CR
# or LF in either, or in a header value, would split the probe's request.
_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", re.ASCII)
_BAD_VALUE: Final = re.compile(r"[\r\n\x00]")


class CheckRegistration(msgspec.Struct):
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
    aliasservice: str = ""
    tlsskipverify: bool = False
    interval: str | int = ""
    timeout: str | int = ""
    ttl: str | int = ""
    deregistercriticalserviceafter: str | int = ""
    successbeforepassing: int = 0
    failuresbeforewarning: int = 0
    failuresbeforecritical: int = 0
    output: str = ""


class WeightsDefinition(msgspec.Struct):
    passing: int = 1
    warning: int = 1


class AddressDefinition(msgspec.Struct):
    address: str = ""
    port: int = 0


class UpstreamDefinition(msgspec.Struct):
    destinationname: str = ""
    destinationtype: str = "service"
    datacenter: str = ""
    localbindaddress: str = ""
    localbindport: int = 0
    config: dict[str, Any] = {}


class ProxyDefinition(msgspec.Struct):
    destinationservicename: str = ""
    destinationserviceid: str = ""
    localserviceaddress: str = ""
    localserviceport: int = 0
    upstreams: list[UpstreamDefinition] = []
    config: dict[str, Any] = {}


class ConnectDefinition(msgspec.Struct):
    native: bool = False
    sidecarservice: ServiceRegistration | None = None


class ServiceRegistration(msgspec.Struct):
    id: str = ""
    name: str = ""
    service: str = ""  # the catalog endpoint's spelling of Name
    tags: list[str] = []
    address: str = ""
    port: int = 0
    meta: dict[str, str] = {}
    weights: WeightsDefinition | None = None
    taggedaddresses: dict[str, AddressDefinition] = {}
    enabletagoverride: bool = False
    kind: str = ""
    proxy: ProxyDefinition | None = None
    connect: ConnectDefinition | None = None
    check: CheckRegistration | None = None
    checks: list[CheckRegistration] = []

    def all_checks(self) -> list[CheckRegistration]:
        """`Check` and `Checks` together, in the order given."""
        return ([self.check] if self.check else []) + self.checks

    @property
    def sidecar(self) -> ServiceRegistration | None:
        return self.connect.sidecarservice if self.connect else None


class CatalogRegistration(msgspec.Struct):
    node: str = ""
    id: str = ""
    address: str = ""
    datacenter: str = ""
    taggedaddresses: dict[str, str] = {}
    nodemeta: dict[str, str] = {}
    service: ServiceRegistration | None = None
    check: CheckRegistration | None = None
    checks: list[CheckRegistration] = []
    skipnodeupdate: bool = False

    def all_checks(self) -> list[CheckRegistration]:
        """`Check` and `Checks` together, in the order given."""
        return ([self.check] if self.check else []) + self.checks


class CatalogDeregistration(msgspec.Struct):
    node: str = ""
    datacenter: str = ""
    serviceid: str = ""
    checkid: str = ""


class CheckUpdate(msgspec.Struct):
    status: str = ""
    output: str = ""


def validate_service(reg: ServiceRegistration, field: str = "") -> None:
    """A service definition's own rules. Raises ValidationError."""
    if not (reg.name or reg.service):
        raise ValidationError(
            "Must provide service name with ID" if field else "Missing service name"
        )
    validate_port(reg.port, f"{field}Port")
    for label, addr in reg.taggedaddresses.items():
        validate_port(addr.port, f"{field}TaggedAddresses.{label}.Port")
    if reg.weights is not None and reg.weights.passing < 1:
        raise ValidationError("Passing must be greater than 0")
    if reg.weights is not None and reg.weights.warning < 0:
        raise ValidationError("Warning must not be negative")
    if reg.kind not in KINDS:
        raise ValidationError(f'Kind "{reg.kind}" is not supported (use "" or "connect-proxy")')
    if reg.kind == "connect-proxy":
        validate_proxy(reg.proxy, f"{field}Proxy")
        if not reg.port:
            raise ValidationError(f"{field}Port must be set for a connect-proxy")


KINDS = ("", "connect-proxy")


def validate_proxy(proxy: ProxyDefinition | None, field: str) -> None:
    """A connect-proxy's Proxy block. Raises ValidationError."""
    if proxy is None or not proxy.destinationservicename:
        raise ValidationError(f"{field}.DestinationServiceName must be set for a connect-proxy")
    validate_port(proxy.localserviceport, f"{field}.LocalServicePort")
    proxyconfig.parse(proxy.config, field=f"{field}.Config")
    seen: set[tuple[str, int]] = set()
    for n, up in enumerate(proxy.upstreams):
        where = f"{field}.Upstreams[{n}]"
        if not up.destinationname:
            raise ValidationError(f"{where}.DestinationName must be set")
        if up.destinationtype not in ("", "service"):
            raise ValidationError(
                f'{where}.DestinationType "{up.destinationtype}" is not supported'
            )
        if not 1 <= up.localbindport <= 65535:
            raise ValidationError(f"{where}.LocalBindPort must be between 1 and 65535")
        proxyconfig.parse(proxy.config, up.config, field=f"{where}.Config")
        bind = (up.localbindaddress or "127.0.0.1", up.localbindport)
        if bind in seen:
            raise ValidationError(f"{where}: another upstream already binds {bind[0]}:{bind[1]}")
        seen.add(bind)


def validate_catalog(reg: CatalogRegistration) -> None:
    if not reg.node:
        raise ValidationError("Must provide node")
    if not reg.address and not reg.skipnodeupdate:
        raise ValidationError("Must provide address if SkipNodeUpdate is not set")
    if reg.service is not None:
        validate_service(reg.service, "Service.")


def validate_port(port: int, field: str) -> None:
    if not 0 <= port <= 65535:
        raise ValidationError(f"{field} must be between 0 and 65535, got {port}")


def validate_status(status: str, prefix: str) -> None:
    if status not in ("passing", "warning", "critical"):
        raise ValidationError(f'{prefix}: "{status}" (expected passing, warning or critical)')


def build_service(body: ServiceRegistration, node: str) -> Service:
    """A Service record from a validated body (agent or catalog registration)."""
    name = body.name or body.service  # the catalog endpoint's spelling of Name
    return Service(
        node=node,
        id=body.id or name,
        name=name,
        tags=tuple(body.tags),
        address=body.address,
        port=body.port,
        meta=body.meta,
        weights=_weights_of(body),
        tagged_addresses=_tagged_of(body),
        enable_tag_override=body.enabletagoverride,
        kind=body.kind,
        proxy=build_proxy(body.proxy) if body.kind == "connect-proxy" and body.proxy else None,
    )


def build_proxy(body: ProxyDefinition) -> Proxy:
    return Proxy(
        destination_service_name=body.destinationservicename,
        destination_service_id=body.destinationserviceid,
        local_service_address=body.localserviceaddress or "127.0.0.1",
        local_service_port=body.localserviceport,
        upstreams=tuple(
            Upstream(
                destination_name=u.destinationname,
                local_bind_port=u.localbindport,
                local_bind_address=u.localbindaddress or "127.0.0.1",
                destination_type=u.destinationtype or "service",
                datacenter=u.datacenter,
                config=u.config,
            )
            for u in body.upstreams
        ),
        config=body.config,
    )


_DEFAULT_WEIGHTS = Weights()  # frozen: one shared by every body without Weights


def _weights_of(body: ServiceRegistration) -> Weights:
    if body.weights is None:
        return _DEFAULT_WEIGHTS
    return Weights(body.weights.passing, body.weights.warning)


def _tagged_of(body: ServiceRegistration) -> dict[str, ServiceAddress]:
    if not body.taggedaddresses:  # most bodies: no comprehension frame for nothing
        return {}
    return {k: ServiceAddress(v.address, v.port) for k, v in body.taggedaddresses.items()}


def check_definition(body: CheckRegistration) -> CheckDefinition:
    """Validate a check's type and timing and build its definition.

    Raises:
        ValidationError: Interval and TTL both set, no type, bad duration...
    """
    interval = _at_least_a_second(_duration.parse(body.interval, "Interval"))
    ttl = _duration.parse(body.ttl, "TTL")
    _validate_http_request(body)
    defn = CheckDefinition(
        interval=interval,
        timeout=_at_least_a_second(_duration.parse(body.timeout, "Timeout")),
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
        alias_service=body.aliasservice,
        deregister_critical_after=_duration.parse(
            body.deregistercriticalserviceafter, "DeregisterCriticalServiceAfter"
        ),
        success_before_passing=body.successbeforepassing,
        failures_before_warning=body.failuresbeforewarning,
        failures_before_critical=body.failuresbeforecritical,
    )
    _validate_definition(defn)
    return defn


def _at_least_a_second(seconds: float) -> float:
    """Raise a positive duration under MIN_INTERVAL to it (0 and negatives are left
    for the rules below: unset, and refused)."""
    return MIN_INTERVAL if 0 < seconds < MIN_INTERVAL else seconds


def _validate_http_request(body: CheckRegistration) -> None:
    """What an HTTP check sends must not be able to split its request."""
    if body.method and not _TOKEN.fullmatch(body.method):
        raise ValidationError(f"Method {body.method!r} is not a valid HTTP method")
    for name, values in body.header.items():
        if not _TOKEN.fullmatch(name):
            raise ValidationError(f"Header name {name!r} is not a valid HTTP header name")
        for value in values:
            if _BAD_VALUE.search(value):
                raise ValidationError(f"Header {name!r} has a CR, LF or NUL in its value")
    if body.http and any(c in body.http for c in " \r\n\t\x00"):
        raise ValidationError("HTTP must be a URL without spaces or control characters")


def _validate_definition(defn: CheckDefinition) -> None:
    kinds = [k for k in ("http", "tcp", "grpc", "alias_service") if getattr(defn, k)] + (
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
            "Invalid check: one of TTL, HTTP, TCP, GRPC, AliasService or Args (with Interval) "
            "is required"
        )
    if kinds and kinds != ["alias_service"] and defn.interval <= 0:
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
    body: CheckRegistration,
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
