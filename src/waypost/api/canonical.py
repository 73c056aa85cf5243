"""Bodies in Consul's own spelling, decoded straight into the core's structs.

Every Consul client sends the keys as Consul's API documents them (`Name`,
`ID`, `CheckID`, `DeregisterCriticalServiceAfter`). For those bodies the
fold of decode.py (a dict built key by key, then converted) is pure cost: a
struct whose fields are renamed to those spellings decodes the JSON in one
C call. It is a subclass of the core's struct with the same fields, so the
plans read it unchanged.

The fast path takes a body only whole: one unknown key (another spelling,
`name` or `service_id`; a field waypost does not know), a null, a value of
the wrong type, and `decode()` returns None, so the caller folds the body as
before and gives its error, message and path included. Bodies with a Proxy
or Connect block go that way too: their opaque `Config` maps need the
fold's depth rule.
"""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Callable
from typing import Any, Final, TypeVar

import msgspec

from ..catalog.definitions import (
    AddressDefinition,
    CheckRegistration,
    ServiceRegistration,
    WeightsDefinition,
)

T = TypeVar("T")
S = TypeVar("S", bound=msgspec.Struct)

# The folded field names of the structs below, as Consul's API docs spell them.
CONSUL_NAMES: Final = {
    "aliasservice": "AliasService",
    "args": "Args",
    "address": "Address",
    "body": "Body",
    "check": "Check",
    "checkid": "CheckID",
    "checks": "Checks",
    "connect": "Connect",
    "deregistercriticalserviceafter": "DeregisterCriticalServiceAfter",
    "enabletagoverride": "EnableTagOverride",
    "failuresbeforecritical": "FailuresBeforeCritical",
    "failuresbeforewarning": "FailuresBeforeWarning",
    "grpc": "GRPC",
    "grpcusetls": "GRPCUseTLS",
    "header": "Header",
    "http": "HTTP",
    "id": "ID",
    "interval": "Interval",
    "kind": "Kind",
    "meta": "Meta",
    "method": "Method",
    "name": "Name",
    "node": "Node",
    "notes": "Notes",
    "output": "Output",
    "passing": "Passing",
    "port": "Port",
    "proxy": "Proxy",
    "scriptargs": "ScriptArgs",
    "service": "Service",
    "serviceid": "ServiceID",
    "status": "Status",
    "successbeforepassing": "SuccessBeforePassing",
    "taggedaddresses": "TaggedAddresses",
    "tags": "Tags",
    "tcp": "TCP",
    "timeout": "Timeout",
    "tlsskipverify": "TLSSkipVerify",
    "ttl": "TTL",
    "warning": "Warning",
    "weights": "Weights",
}


def _substitute(kind: Any, nested: dict[type, type]) -> Any:
    """`kind` with every struct of `nested` replaced by its Consul-spelled twin."""
    if isinstance(kind, type) and kind in nested:
        return nested[kind]
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if not args:
        return kind
    subs = tuple(_substitute(a, nested) for a in args)
    if origin in (types.UnionType, typing.Union):
        return functools.reduce(lambda a, b: a | b, subs)
    return origin[subs]


def _twin(kind: type[S], nested: dict[type, type]) -> type[S]:
    """A subclass of `kind` whose fields carry Consul's spelling and refuse unknown keys."""
    fields = []
    for f in msgspec.structs.fields(kind):
        default = (
            f.default
            if f.default is not msgspec.NODEFAULT
            else msgspec.field(default_factory=f.default_factory)
        )
        fields.append((f.name, _substitute(f.type, nested), default))
    twin = msgspec.defstruct(
        f"Consul{kind.__name__}",
        fields,
        bases=(kind,),
        rename=CONSUL_NAMES,
        forbid_unknown_fields=True,
        module=__name__,
    )
    return typing.cast(type[S], twin)


_CHECK: Final = _twin(CheckRegistration, {})
_SERVICE: Final = _twin(
    ServiceRegistration,
    {
        CheckRegistration: _CHECK,
        WeightsDefinition: _twin(WeightsDefinition, {}),
        AddressDefinition: _twin(AddressDefinition, {}),
    },
)


def _plain_service(reg: ServiceRegistration) -> bool:
    return reg.proxy is None and reg.connect is None


_DECODERS: Final[dict[type, tuple[msgspec.json.Decoder[Any], Callable[[Any], bool]]]] = {
    ServiceRegistration: (msgspec.json.Decoder(_SERVICE), _plain_service),
    CheckRegistration: (msgspec.json.Decoder(_CHECK), lambda _: True),
}


def decode(raw: bytes, kind: type[T]) -> T | None:
    """`raw` as `kind` if it is a body in Consul's spelling this path takes whole, else None."""
    found = _DECODERS.get(kind)
    if found is None:
        return None
    decoder, whole = found
    try:
        result: T = decoder.decode(raw)
    except (msgspec.DecodeError, RecursionError):  # msgspec.ValidationError is a DecodeError
        return None
    return result if whole(result) else None
