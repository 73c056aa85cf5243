"""The registry's records: nodes, service instances and health checks.

Records are immutable msgspec Structs. A write replaces a record whole, so a
reader holding one never sees it change underneath. Field names are Python's;
the HTTP layer maps them to Consul's names on the way out.

The catalog's records (nodes, instances, checks and what they hold) are
`gc=False`: they hold only strings, numbers and containers of those, so they
can never be part of a reference cycle, and the cyclic collector need not
track them. With a million instances that is 16 bytes less per record and,
above all, millions fewer objects for every full collection to walk: before,
a full collection during churn stalled the loop for seconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final, Literal

import msgspec

Status = Literal["passing", "warning", "critical", "maintenance"]
STATUSES: Final = ("passing", "warning", "critical", "maintenance")

SERF_CHECK_ID: Final = "serfHealth"
CONSUL_SERVICE_ID: Final = "consul"  # the service a Consul server registers for itself
CONSUL_SERVER_PORT: Final = 8300
NODE_MAINT_CHECK_ID: Final = "_node_maintenance"
SERVICE_MAINT_PREFIX: Final = "_service_maintenance:"


class Node(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    name: str
    id: str = ""
    address: str = ""
    datacenter: str = "dc1"
    tagged_addresses: dict[str, str] = {}
    meta: dict[str, str] = {}
    create_index: int = 0
    modify_index: int = 0


class Weights(msgspec.Struct, frozen=True, gc=False):
    passing: int = 1
    warning: int = 1


class ServiceAddress(msgspec.Struct, frozen=True, gc=False):
    address: str
    port: int = 0


class Upstream(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """A service a sidecar's app calls through a local port (Consul's `Upstreams[]`)."""

    destination_name: str
    local_bind_port: int
    local_bind_address: str = "127.0.0.1"
    destination_type: str = "service"
    datacenter: str = ""
    config: dict[str, Any] = {}


class Proxy(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """The `Proxy` block of a `connect-proxy` instance: whom it fronts, what it calls."""

    destination_service_name: str
    destination_service_id: str = ""
    local_service_address: str = "127.0.0.1"
    local_service_port: int = 0
    upstreams: tuple[Upstream, ...] = ()
    config: dict[str, Any] = {}


class Service(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """One instance of a service, living on a node."""

    node: str
    id: str
    name: str
    tags: tuple[str, ...] = ()
    address: str = ""
    port: int = 0
    meta: dict[str, str] = {}
    weights: Weights = Weights()
    tagged_addresses: dict[str, ServiceAddress] = {}
    enable_tag_override: bool = False
    kind: str = ""
    proxy: Proxy | None = None  # set on Kind "connect-proxy"
    sidecar_of: str = ""  # the parent's ID, for a sidecar registered with it (it goes with it)
    create_index: int = 0
    modify_index: int = 0


def carries(service: Service, tag: str) -> bool:
    """Whether `service` has `tag` (given in lowercase), compared without
    case, as Consul's tag filter does (serviceTagFilter): the one rule for
    `?tag=` reads (State.instances) and DNS tag lookups (dns/answers.py)."""
    return tag in map(str.lower, service.tags)  # no Python frame per tag: the DNS answer path


class CheckDefinition(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """How the owning agent runs a check. Durations are in seconds."""

    interval: float = 0.0
    timeout: float = 0.0
    ttl: float = 0.0
    http: str = ""
    method: str = ""
    header: dict[str, list[str]] = {}
    body: str = ""
    tls_skip_verify: bool = False
    tcp: str = ""
    grpc: str = ""
    grpc_use_tls: bool = False
    args: tuple[str, ...] = ()
    alias_service: str = ""  # an alias check: the worst status of this instance's checks
    deregister_critical_after: float = 0.0
    success_before_passing: int = 0
    failures_before_warning: int = 0
    failures_before_critical: int = 0

    @property
    def kind(self) -> str:
        """The check's type as Consul names it (`Type` in the API)."""
        if self.ttl:
            return "ttl"
        for kind in ("http", "tcp", "grpc"):
            if getattr(self, kind):
                return kind
        if self.alias_service:
            return "alias"
        return "script" if self.args else ""


class Check(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    node: str
    check_id: str
    name: str
    status: Status = "critical"
    notes: str = ""
    output: str = ""
    service_id: str = ""
    service_name: str = ""
    service_tags: tuple[str, ...] = ()
    type: str = ""
    definition: CheckDefinition | None = None
    create_index: int = 0
    modify_index: int = 0


class CARoot(msgspec.Struct, frozen=True, omit_defaults=True):
    """A root of the built-in CA, private key included (shared by every agent
    on the store, as Consul keeps it in its raft state). Times are RFC 3339."""

    id: str
    name: str
    serial_number: int
    signing_key_id: str
    trust_domain: str
    not_before: str
    not_after: str
    root_cert: str
    private_key: str
    active: bool = True
    private_key_type: str = "ec"
    private_key_bits: int = 256
    create_index: int = 0
    modify_index: int = 0


IntentionAction = Literal["allow", "deny"]


class Intention(msgspec.Struct, frozen=True, omit_defaults=True):
    """Whether `source` may call `destination` (either may be the wildcard `*`)."""

    id: str
    source: str
    destination: str
    action: IntentionAction
    description: str = ""
    meta: dict[str, str] = {}
    created_at: str = ""
    updated_at: str = ""
    create_index: int = 0
    modify_index: int = 0


Record = Node | Service | Check | CARoot | Intention


_RANK: Final = {"passing": 0, "warning": 1, "critical": 2, "maintenance": 3}


def status_rank(status: str) -> int:
    """Order statuses from best to worst, for "the worst of these checks"
    (one table, not a dict built per call: it runs per check of every read)."""
    return _RANK.get(status, 2)


def worst_status(checks: Iterable[Check], none: str = "passing") -> str:
    """The worst status among `checks` (the first of equals); `none` if there are none."""
    worst, rank = none, -1
    for check in checks:
        current = status_rank(check.status)
        if current > rank:
            worst, rank = check.status, current
    return worst


# -- ACL records (catalog/acl.py holds them; codec.py stores them under a/) ---


class ServiceIdentity(msgspec.Struct, frozen=True):
    """A templated policy: write on one service (and its sidecar), read on the rest."""

    service_name: str
    datacenters: tuple[str, ...] = ()


class NodeIdentity(msgspec.Struct, frozen=True):
    """A templated policy: write on one node, read on every service."""

    node_name: str
    datacenter: str


class Policy(msgspec.Struct, frozen=True, omit_defaults=True):
    id: str
    name: str
    rules: str = ""
    description: str = ""
    datacenters: tuple[str, ...] = ()
    create_index: int = 0
    modify_index: int = 0


class Role(msgspec.Struct, frozen=True, omit_defaults=True):
    id: str
    name: str
    description: str = ""
    policies: tuple[str, ...] = ()  # policy IDs
    service_identities: tuple[ServiceIdentity, ...] = ()
    node_identities: tuple[NodeIdentity, ...] = ()
    create_index: int = 0
    modify_index: int = 0


class Token(msgspec.Struct, frozen=True, omit_defaults=True):
    accessor_id: str
    secret_id: str
    description: str = ""
    policies: tuple[str, ...] = ()  # policy IDs
    roles: tuple[str, ...] = ()  # role IDs
    service_identities: tuple[ServiceIdentity, ...] = ()
    node_identities: tuple[NodeIdentity, ...] = ()
    local: bool = False
    create_time: float = 0.0  # unix seconds
    expiration_time: float = 0.0  # unix seconds; 0: never
    create_index: int = 0
    modify_index: int = 0


class Bootstrap(msgspec.Struct, frozen=True):
    """That the ACL system was bootstrapped, and by which token."""

    accessor_id: str
    create_index: int = 0
    modify_index: int = 0


AclRecord = Policy | Role | Token | Bootstrap
