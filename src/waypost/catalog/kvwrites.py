"""KV, session and event changes, as plans over a Txn (see writes.py, txn.py).

Compare-and-swap costs nothing extra here: a plan that reads a key through the
Txn records "its modify index is still N" as a condition, and the backend
checks it atomically with the write. `?cas=N` only adds "N is what the caller
saw"; `acquire` adds "no other session holds it". Plans return Consul's
answers (True/False) and raise ValidationError for what Consul refuses with
an error (an unknown session: Patroni matches on "invalid session").

A lock taken by a session re-puts the session record: "the keys a session
holds" is a set, guarded through its parent as the catalog's sets are
(txn.py), so invalidating a session can never miss a key acquired meanwhile.
"""

from __future__ import annotations

import re
import uuid

import msgspec

from .. import _duration
from .._exceptions import NotFoundError, RefusedError, ValidationError
from ..storage import Condition
from .kv import KvEntry
from .model import SERF_CHECK_ID
from .sessions import Event, Session, encode_event
from .txn import Txn

MAX_VALUE = 512 * 1024  # Consul's kv_max_value_size


def validate_key(key: str) -> None:
    if not key:
        raise ValidationError("Missing key name")
    if key.startswith("/"):
        raise ValidationError(f'Invalid key "{key}": a key may not start with "/"')


def kv_set(txn: Txn, key: str, value: bytes, flags: int | None = None) -> bool:
    """An unconditional write; an existing entry keeps its session and create
    index, and its LockIndex goes to 0, as in Consul."""
    validate_key(key)
    old = txn.kv(key)
    txn.put_kv(_updated(old, key, value, flags, unlocked=True))
    return True


def kv_cas(txn: Txn, key: str, value: bytes, cas: int, flags: int | None = None) -> bool:
    """Write only if the key's modify index is `cas` (0: only if it is absent)."""
    validate_key(key)
    old = txn.kv(key)
    if (old.modify_index if old else 0) != cas or txn.kv_rewritten(key):
        return False
    txn.put_kv(_updated(old, key, value, flags, unlocked=True))
    return True


def kv_acquire(txn: Txn, key: str, value: bytes, session_id: str, flags: int | None = None) -> bool:
    """Take the lock for `session_id` (and write the value). False if another
    session holds it, or its lock delay has not passed."""
    validate_key(key)
    session = _live_session(txn, session_id)
    old = txn.kv(key)
    if old is not None and old.session == session_id:
        txn.put_kv(_updated(old, key, value, flags))  # the holder updates: LockIndex stays
        return True
    if old is not None and old.session:
        return False
    if txn.state.kv.lock_delay_left(key) > 0:
        return False
    base = _updated(old, key, value, flags)
    lock_index = (old.lock_index if old else 0) + 1
    txn.put_kv(msgspec.structs.replace(base, session=session_id, lock_index=lock_index))
    txn.put_session(session)  # the set of keys it holds changed (see above)
    return True


def kv_release(txn: Txn, key: str, value: bytes, session_id: str, flags: int | None = None) -> bool:
    """Let go of the lock if `session_id` holds it (and write the value).
    A session that is gone holds nothing: False, not an error, as in Consul
    (a client's `finally: release` after its session expired)."""
    validate_key(key)
    if not session_id:
        raise ValidationError("Missing session")
    old = txn.kv(key)
    if old is None or old.session != session_id:
        return False
    txn.put_kv(msgspec.structs.replace(_updated(old, key, value, flags), session=""))
    return True


def kv_delete(txn: Txn, key: str) -> bool:
    validate_key(key)
    if txn.kv(key) is not None:
        txn.delete_kv(key)
    return True


def kv_delete_cas(txn: Txn, key: str, cas: int) -> bool:
    """Delete only if the key's modify index is `cas`; Consul never deletes for 0.
    A key that is not there is deleted already: True, whatever `cas` (Consul's
    kvsDeleteCASTxn), e.g. a leader key its Behavior=delete session removed."""
    validate_key(key)
    old = txn.kv(key)
    if old is None:
        return True
    if cas == 0 or old.modify_index != cas or txn.kv_rewritten(key):
        return False
    txn.delete_kv(key)
    return True


def kv_delete_tree(txn: Txn, prefix: str) -> bool:
    for entry in txn.kv_under(prefix):
        txn.delete_kv(entry.key)
    return True


def _updated(
    old: KvEntry | None, key: str, value: bytes, flags: int | None, unlocked: bool = False
) -> KvEntry:
    """`old` with the new value and flags. `unlocked`: a set or cas, which in
    Consul stores the request's LockIndex, 0 (kvsSetTxn keeps only the
    session); only acquire and release carry it on."""
    if len(value) > MAX_VALUE:
        raise ValidationError(
            f"Value for key {key!r} too large ({len(value)} bytes), max size: {MAX_VALUE} bytes"
        )
    # Flags are the request's, 0 when it sends none, as Consul stores them
    # on every set, cas, acquire and release (a session's end keeps them).
    if old is None:
        return KvEntry(key, value, flags or 0)
    lock_index = 0 if unlocked else old.lock_index
    return msgspec.structs.replace(old, value=value, flags=flags or 0, lock_index=lock_index)


def _live_session(txn: Txn, session_id: str) -> Session:
    if not session_id:
        raise ValidationError("Missing session")
    session = txn.session(session_id)
    if session is None:
        raise RefusedError(f'invalid session "{session_id}"')
    return session


# -- sessions -------------------------------------------------------------------


class SessionRequest(msgspec.Struct, kw_only=True):
    """`/v1/session/create`, its durations already in seconds."""

    name: str = ""
    node: str = ""
    checks: list[str] | None = None
    node_checks: list[str] | None = None
    service_checks: list[str] = []
    lock_delay: float = 15.0
    behavior: str = "release"
    ttl: float = 0.0


def session_create(txn: Txn, req: SessionRequest, ttl_min: float, ttl_max: float) -> str:
    """Validate and store a new session; returns its ID."""
    if req.behavior not in ("release", "delete"):
        raise RefusedError(f"Invalid session behavior setting '{req.behavior}'")
    if req.ttl and not ttl_min <= req.ttl <= ttl_max:
        # Consul prints the TTL in nanoseconds; Patroni matches the start of it.
        raise RefusedError(
            f"Invalid Session TTL '{round(req.ttl * 1e9)}', must be between "
            f"[{_duration.format(ttl_min)}={_duration.format(ttl_max)}]"
        )
    if req.lock_delay < 0:
        raise ValidationError("Invalid LockDelay: it may not be negative")
    if txn.node(req.node) is None:
        raise RefusedError(f'Missing node registration: node "{req.node}" is not in the catalog')
    node_checks = tuple(_node_checks(req))
    for check_id in (*node_checks, *req.service_checks):
        _usable_check(txn, req.node, check_id)
    session = Session(
        id=str(uuid.uuid4()),
        node=req.node,
        name=req.name,
        node_checks=node_checks,
        service_checks=tuple(req.service_checks),
        lock_delay=req.lock_delay,
        behavior=req.behavior,
        ttl=req.ttl,
    )
    txn.put_session(session)
    return session.id


def _node_checks(req: SessionRequest) -> list[str]:
    """Consul's defaults: serfHealth unless `Checks` or `NodeChecks` say otherwise."""
    if req.node_checks is not None:
        return list(dict.fromkeys(req.node_checks))
    if req.checks is not None:
        return list(dict.fromkeys(req.checks))
    return [SERF_CHECK_ID]


def _usable_check(txn: Txn, node: str, check_id: str) -> None:
    check = txn.check(node, check_id)
    if check is None:
        raise RefusedError(f"Missing check '{check_id}' registration")
    if check.status == "critical":
        raise RefusedError(f"Check '{check_id}' is in critical state")


def session_renew(txn: Txn, session_id: str) -> Session:
    """Restart a TTL session's clock: re-put with one more renewal, which every
    agent's session timers follow. Raises NotFoundError."""
    session = txn.session(session_id)
    if session is None:
        raise NotFoundError(f"Session id '{session_id}' not found")
    renewed = msgspec.structs.replace(session, renewals=session.renewals + 1)
    txn.put_session(renewed)
    return renewed


def session_destroy(txn: Txn, session_id: str) -> bool:
    """Remove a session: its locks are released (or its keys deleted, with
    Behavior delete), and lock delay starts on them (kv.py)."""
    session = txn.session(session_id)
    if session is None:
        return True
    for key in txn.state.kv.held_by(session_id):
        entry = txn.kv(key)
        if entry is None or entry.session != session_id:
            continue
        if session.behavior == "delete":
            txn.delete_kv(key)
        else:
            txn.put_kv(msgspec.structs.replace(entry, session=""))
    txn.delete_session(session_id)
    return True


def session_invalidate(txn: Txn, session_id: str, renewals: int | None = None) -> bool:
    """Destroy a session unless it was renewed since the caller decided (its
    TTL timer saw `renewals`). False when there was nothing to do."""
    session = txn.session(session_id)
    if session is None or (renewals is not None and session.renewals != renewals):
        return False
    return session_destroy(txn, session_id)


# -- events ------------------------------------------------------------------------


class EventRequest(msgspec.Struct, kw_only=True):
    name: str
    payload: bytes | None = None
    node_filter: str = ""
    service_filter: str = ""
    tag_filter: str = ""


def event_fire(txn: Txn, req: EventRequest) -> Event:
    """Store an event in the next slot of the ring (sessions.py)."""
    if not req.name:
        raise ValidationError("Missing name")
    if req.name.startswith("_"):
        raise ValidationError("Event names starting with '_' are reserved for internal use")
    for pattern in (req.node_filter, req.service_filter, req.tag_filter):
        _compile(pattern)
    if req.tag_filter and not req.service_filter:
        raise ValidationError("Cannot provide tag filter without service filter")
    if req.payload is not None and len(req.payload) > 512:
        raise ValidationError(f"User event exceeds limit of 512 bytes ({len(req.payload)})")
    ltime = txn.state.events.last_ltime + 1
    slot = encode_event(Event(id="", name="", ltime=ltime)).key
    txn.conditions.setdefault(slot, _slot_condition(txn, slot))
    event = Event(
        id=str(uuid.uuid4()),
        name=req.name,
        ltime=ltime,
        payload=req.payload,
        node_filter=req.node_filter,
        service_filter=req.service_filter,
        tag_filter=req.tag_filter,
    )
    txn.stage(encode_event(event))
    return event


def _slot_condition(txn: Txn, slot: str) -> Condition:
    """The slot must still hold what this agent saw (two agents firing at
    once pick the same slot: one of them conflicts and takes the next)."""
    return Condition(slot, txn.state.events.slot_index.get(slot, 0))


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValidationError(f"Invalid filter regular expression {pattern!r}: {exc}") from exc
