"""The shapes of the records each filterable endpoint returns: what `?filter=` may select.

Selectors are the JSON field names of the answer (Consul's are its Go field
names, which are the same). A `Record` has fixed fields, a `MapOf` any string
key (`Service.Meta.env`, `NodeMeta["os"]`), a `ListOf` elements (a list of
records is walked through: `Checks.Status` means any check's status).
tests/api/test_filter.py checks that these agree with what `encode.py` emits.
"""

from __future__ import annotations

from typing import Final


class ListOf:
    __slots__ = ("item",)

    def __init__(self, item: Field) -> None:
        self.item = item


class MapOf:
    __slots__ = ("item",)

    def __init__(self, item: Field) -> None:
        self.item = item


class Record:
    __slots__ = ("fields", "name")

    def __init__(self, name: str, **fields: Field) -> None:
        self.name = name
        self.fields = fields


Field = str | ListOf | MapOf | Record

STRING: Final = "string"
NUMBER: Final = "number"
BOOL: Final = "bool"

_STRINGS = ListOf(STRING)
_META = MapOf(STRING)
_INDEXES = {"CreateIndex": NUMBER, "ModifyIndex": NUMBER}
_WEIGHTS = Record("Weights", Passing=NUMBER, Warning=NUMBER)
_SERVICE_ADDRESSES = MapOf(Record("ServiceAddress", Address=STRING, Port=NUMBER))

# A connect-proxy's block (the mesh). `Config` holds any JSON; its values
# compare as strings here.
_UPSTREAM = Record(
    "Upstream",
    DestinationType=STRING,
    DestinationName=STRING,
    Datacenter=STRING,
    LocalBindAddress=STRING,
    LocalBindPort=NUMBER,
    Config=_META,
)
_PROXY = Record(
    "Proxy",
    DestinationServiceName=STRING,
    DestinationServiceID=STRING,
    LocalServiceAddress=STRING,
    LocalServicePort=NUMBER,
    Mode=STRING,
    Config=_META,
    Upstreams=ListOf(_UPSTREAM),
)

NODE: Final = Record(
    "Node",
    ID=STRING,
    Node=STRING,
    Address=STRING,
    Datacenter=STRING,
    TaggedAddresses=_META,
    Meta=_META,
    **_INDEXES,
)

SERVICE: Final = Record(
    "Service",
    ID=STRING,
    Service=STRING,
    Tags=_STRINGS,
    Address=STRING,
    TaggedAddresses=_SERVICE_ADDRESSES,
    Meta=_META,
    Port=NUMBER,
    Weights=_WEIGHTS,
    EnableTagOverride=BOOL,
    Kind=STRING,
    Datacenter=STRING,
    Proxy=_PROXY,
    **_INDEXES,
)

# `/v1/agent/services` leaves out the indexes (encode.agent_service).
AGENT_SERVICE: Final = Record(
    "AgentService", **{k: v for k, v in SERVICE.fields.items() if k not in _INDEXES}
)

_DEFINITION = Record(
    "Definition",
    Interval=STRING,
    Timeout=STRING,
    TTL=STRING,
    DeregisterCriticalServiceAfter=STRING,
    HTTP=STRING,
    TCP=STRING,
    GRPC=STRING,
    Method=STRING,
    Header=MapOf(_STRINGS),
    ScriptArgs=_STRINGS,
    TLSSkipVerify=BOOL,
)

CHECK: Final = Record(
    "Check",
    Node=STRING,
    CheckID=STRING,
    Name=STRING,
    Status=STRING,
    Notes=STRING,
    Output=STRING,
    ServiceID=STRING,
    ServiceName=STRING,
    ServiceTags=_STRINGS,
    Type=STRING,
    Interval=STRING,
    Timeout=STRING,
    ExposedPort=NUMBER,
    Definition=_DEFINITION,
    **_INDEXES,
)

HEALTH_ROW: Final = Record("ServiceEntry", Node=NODE, Service=SERVICE, Checks=ListOf(CHECK))

CATALOG_SERVICE: Final = Record(
    "ServiceNode",
    ID=STRING,
    Node=STRING,
    Address=STRING,
    Datacenter=STRING,
    TaggedAddresses=_META,
    NodeMeta=_META,
    ServiceKind=STRING,
    ServiceID=STRING,
    ServiceName=STRING,
    ServiceTags=_STRINGS,
    ServiceAddress=STRING,
    ServiceTaggedAddresses=_SERVICE_ADDRESSES,
    ServiceWeights=_WEIGHTS,
    ServiceMeta=_META,
    ServicePort=NUMBER,
    ServiceEnableTagOverride=BOOL,
    ServiceProxy=_PROXY,
    **_INDEXES,
)
