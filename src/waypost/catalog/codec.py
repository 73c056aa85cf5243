"""Records to storage entries and back.

Keys are `l/<node>` (liveness, valueless), `n/<node>`, `s/<node>/<service-id>`,
`c/<node>/<check-id>`, `g/<node>/<service-id>` (the instance's check-set
guard, valueless: see txn.py), and for the mesh `r/<root-id>` (CA roots) and
`i/<source>/<destination>` (intentions), and the ACL records under `a/`
(at the end). In each part `%` and `/` are escaped (`%25`, `%2F`),
so that IDs holding `/` stay one part; nothing else needs it, and two string
replacements are far cheaper than urllib's quoting on the write path.
Values are msgpack.
"""

from __future__ import annotations

import sys
from typing import Any, Final

import msgspec

from ..storage import Entry
from .model import (
    AclRecord,
    Bootstrap,
    CARoot,
    Check,
    Intention,
    Node,
    Policy,
    Record,
    Role,
    Service,
    Token,
)

_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODERS: Final[dict[str, msgspec.msgpack.Decoder[Any]]] = {
    "n": msgspec.msgpack.Decoder(Node),
    "s": msgspec.msgpack.Decoder(Service),
    "c": msgspec.msgpack.Decoder(Check),
    "r": msgspec.msgpack.Decoder(CARoot),
    "i": msgspec.msgpack.Decoder(Intention),
}


def esc(part: str) -> str:
    return part.replace("%", "%25").replace("/", "%2F") if "%" in part or "/" in part else part


def _unesc(part: str) -> str:
    return part.replace("%2F", "/").replace("%25", "%") if "%" in part else part


def node_key(node: str) -> str:
    return f"n/{esc(node)}"


# The two-part keys of every registration and check update test for escapes
# themselves: most names have none, and `esc` is a call per part.
def service_key(node: str, service_id: str) -> str:
    if "%" in node or "/" in node or "%" in service_id or "/" in service_id:
        return f"s/{esc(node)}/{esc(service_id)}"
    return f"s/{node}/{service_id}"


def check_key(node: str, check_id: str) -> str:
    if "%" in node or "/" in node or "%" in check_id or "/" in check_id:
        return f"c/{esc(node)}/{esc(check_id)}"
    return f"c/{node}/{check_id}"


def root_key(root_id: str) -> str:
    return f"r/{esc(root_id)}"


def intention_key(source: str, destination: str) -> str:
    return f"i/{esc(source)}/{esc(destination)}"


def live_key(node: str) -> str:
    """The key whose presence says a node's agent is alive (leased in etcd)."""
    return f"l/{esc(node)}"


def guard_key(node: str, service_id: str) -> str:
    """A valueless key rewritten whenever an instance's set of checks changes (txn.py)."""
    return f"g/{esc(node)}/{esc(service_id)}"


def guard(node: str, service_id: str) -> Entry:
    return Entry(guard_key(node, service_id), b"")


def live(node: str) -> Entry:
    """The liveness entry of a node: valueless, and ephemeral (on the agent's lease)."""
    return Entry(live_key(node), b"", ephemeral=True)


def key_of(record: Record) -> str:
    if isinstance(record, Service):  # the most common first: the kinds are disjoint
        return service_key(record.node, record.id)
    if isinstance(record, Node):
        return node_key(record.name)
    if isinstance(record, CARoot):
        return root_key(record.id)
    if isinstance(record, Intention):
        return intention_key(record.source, record.destination)
    return check_key(record.node, record.check_id)


def put(record: Record, *, ephemeral: bool = False, key: str = "") -> Entry:
    """An entry that stores `record` (its indexes are set when it is applied);
    `key`: its key, when the caller has it already (Txn.put)."""
    plain = record  # a record a plan built has no indexes yet: nothing to reset
    if record.create_index or record.modify_index:
        plain = msgspec.structs.replace(record, create_index=0, modify_index=0)
    return Entry(key or key_of(record), _ENCODER.encode(plain), ephemeral=ephemeral)


def delete(key: str) -> Entry:
    return Entry(key, None)


def split_key(key: str) -> tuple[str, list[str]]:
    """`s/web%2F1/x` -> ("s", ["web/1", "x"])."""
    kind, _, rest = key.partition("/")
    return kind, [_unesc(part) for part in rest.split("/")]


# A tuple, not `Service | Check`: the union is built anew at every call
# (~300 instructions each time, on every applied record).
_SHARED_KINDS: Final = (Service, Check)


def decode_stored(key: str, value: bytes) -> Record:
    """Decode a stored value into a record the state can keep: its repeated
    values shared (see `_share`), its indexes still to be set with `stamp`.
    Raises msgspec.DecodeError for a corrupt value."""
    record: Record = _DECODERS[key[0]].decode(value)
    if isinstance(record, _SHARED_KINDS):
        _share(record)
    return record


def stamp(record: Record, create_index: int, modify_index: int) -> None:
    """Set the indexes of a record fresh from `decode_stored`, in place.

    Only for a record nobody else holds yet: records are immutable once in
    the state. In place rather than `structs.replace`, which made a second
    record per entry (on the replay of a million, a second of work and a
    copy's worth of garbage)."""
    msgspec.structs.force_setattr(record, "create_index", create_index)
    msgspec.structs.force_setattr(record, "modify_index", modify_index)


# -- shared values ------------------------------------------------------------
# A million instances repeat a few thousand node names, service names, tag
# lists, check names and meta maps: each decoded copy costs 50-250 bytes, so
# records point at one shared copy instead. Strings go through sys.intern
# (CPython drops an interned string once nothing uses it); tuples and maps
# through a table of their own, emptied when it outgrows `_SHARED_MAX` so
# that values seen once (unique meta, say) cannot grow it without bound.
# Records are immutable (model.py): nothing writes into a shared map.

_SHARED_MAX: Final = 65_536
_shared: dict[object, Any] = {}
_EMPTY_MAP: Final[dict[str, Any]] = {}


def _shared_value(key: object, value: Any) -> Any:
    found = _shared.get(key)
    if found is not None:
        return found
    if len(_shared) >= _SHARED_MAX:
        _shared.clear()
    _shared[key] = value
    return value


def _shared_tuple(value: tuple[str, ...]) -> tuple[str, ...]:
    if not value:
        return ()
    shared: tuple[str, ...] = _shared_value(value, value)
    return shared


def _shared_map(value: dict[str, Any]) -> dict[str, Any]:
    if not value:
        return _EMPTY_MAP
    try:
        key = ("map", *value.items())
        shared: dict[str, Any] = _shared_value(key, value)
    except TypeError:  # an unhashable value (a proxy's config): keep its own
        return value
    return shared


def _share(record: Service | Check) -> None:
    force = msgspec.structs.force_setattr
    force(record, "node", sys.intern(record.node))
    if isinstance(record, Service):
        force(record, "name", sys.intern(record.name))
        force(record, "tags", _shared_tuple(record.tags))
        force(record, "meta", _shared_map(record.meta))
        force(record, "tagged_addresses", _shared_map(record.tagged_addresses))
        return
    force(record, "name", sys.intern(record.name))
    force(record, "status", sys.intern(record.status))
    force(record, "service_name", sys.intern(record.service_name))
    force(record, "service_tags", _shared_tuple(record.service_tags))


# -- ACL records: a/p/<id> policies, a/r/<id> roles, a/t/<accessor> tokens, a/bootstrap

ACL_PREFIX: Final = "a/"
BOOTSTRAP_KEY: Final = "a/bootstrap"
_ACL_DECODERS: Final[dict[str, msgspec.msgpack.Decoder[Any]]] = {
    "p": msgspec.msgpack.Decoder(Policy),
    "r": msgspec.msgpack.Decoder(Role),
    "t": msgspec.msgpack.Decoder(Token),
}
_BOOTSTRAP_DECODER: Final = msgspec.msgpack.Decoder(Bootstrap)


def policy_key(policy_id: str) -> str:
    return f"a/p/{esc(policy_id)}"


def role_key(role_id: str) -> str:
    return f"a/r/{esc(role_id)}"


def token_key(accessor_id: str) -> str:
    return f"a/t/{esc(accessor_id)}"


def acl_key_of(record: AclRecord) -> str:
    if isinstance(record, Policy):
        return policy_key(record.id)
    if isinstance(record, Role):
        return role_key(record.id)
    if isinstance(record, Token):
        return token_key(record.accessor_id)
    return BOOTSTRAP_KEY


def put_acl(record: AclRecord) -> Entry:
    plain = msgspec.structs.replace(record, create_index=0, modify_index=0)
    return Entry(acl_key_of(plain), _ENCODER.encode(plain))


def decode_acl(key: str, value: bytes) -> AclRecord:
    """Decode a stored `a/` value; raises msgspec.DecodeError for a corrupt one."""
    if key == BOOTSTRAP_KEY:
        return _BOOTSTRAP_DECODER.decode(value)
    record: AclRecord = _ACL_DECODERS[key[2]].decode(value)
    return record
