"""A read-modify-write of the catalog that validates against what it lands on.

Every write in waypost is a *plan*: a function that reads the state through a
`Txn`, decides (or refuses with a ValidationError / NotFoundError), and stages
puts and deletes. `Catalog.write()` commits the staged entries together with
one condition per record the plan read: "this key still has the modify index
I saw" (0: "it is still absent"). The storage backend checks those conditions
atomically with the write, in commit order, against what is stored. If another
write got there first, the commit fails with Conflict, nothing is written, and
the plan runs again on the newer state. This is etcd's STM, or Consul's
check-and-set, applied to every writer (HTTP, the health runner, the reaper,
syncs): validation can no longer race the commit.

Sets of records need one more rule. "The checks of service X" is not one key,
so a plan that relies on that set (deregistering X must delete every check of
X) reads X's *guard*, a valueless key `g/<node>/<X>` that every change to the
set (a check added to or removed from X) rewrites. A concurrent change to the
set therefore moves the guard's modify index and breaks the other plan's
condition, while X's own record and ModifyIndex stay as Consul keeps them. For
a whole node (rare: catalog deregistration of a node) the plan guards the
node's key ranges instead: nothing under them may have changed since the
state's index. Liveness keys are read the same way (`live()`), so a decision
that an agent is gone cannot race that agent's return.

A put of what the key already holds (indexes aside) is dropped, as Consul's
state store drops it (ensureNodeTxn, ensureServiceTxn and ensureCheckTxn
compare with IsSame, kvsSetTxn with DirEntry.Equal): a re-registration that
changes nothing moves no index and wakes no blocking query. The comparison
is with this agent's copy; on a shared store `Catalog.write` then has the
store confirm the plan's conditions (`unchanged`), so a record another agent
changed meanwhile is written after all.
"""

from __future__ import annotations

from typing import TypeVar

import msgspec

from ..storage import Condition, Entry, prefix_end
from . import codec, kv
from .kv import KvEntry
from .model import CARoot, Check, Intention, Node, Record, Service
from .sessions import Session, encode_session, session_key
from .state import State

R = TypeVar("R", Node, Service, Check, Intention)


class Txn:
    """Reads that record conditions, and the entries a plan stages."""

    # One Txn per write: slots spare it an instance dict to build and free.
    __slots__ = (
        "_staged",
        "_staged_kv",
        "_staged_sessions",
        "conditions",
        "ops",
        "state",
        "unchanged",
    )

    def __init__(self, state: State) -> None:
        self.state = state
        self.ops: dict[str, Entry] = {}
        self.conditions: dict[str, Condition] = {}
        self._staged: dict[str, Record | None] = {}  # reads see the plan's own writes
        self._staged_kv: dict[str, KvEntry | None] = {}
        self._staged_sessions: dict[str, Session | None] = {}
        self.unchanged = False  # a put was dropped: the key holds it already (see above)

    # -- reads -------------------------------------------------------------

    def node(self, name: str) -> Node | None:
        return self._read(codec.node_key(name), self.state.nodes.get(name))

    def service(self, node: str, service_id: str) -> Service | None:
        return self._read(
            codec.service_key(node, service_id), self.state.services.get((node, service_id))
        )

    def check(self, node: str, check_id: str) -> Check | None:
        # The stored record, not one shown critical by hold(): writers decide on what is stored.
        return self._read(codec.check_key(node, check_id), self.state.stored_check(node, check_id))

    def service_checks(self, service: Service) -> list[Check]:
        """The checks of an instance (its guard's condition guards the set;
        each check's condition guards its status)."""
        return [
            c
            for cid in self.check_ids_of(service)
            if (c := self.check(service.node, cid)) is not None
        ]

    def check_ids_of(self, service: Service) -> list[str]:
        """The IDs of an instance's checks, guarded as a set only (for removing them)."""
        key = codec.guard_key(service.node, service.id)
        if key not in self.conditions and key not in self.ops:
            index = self.state.guards.get((service.node, service.id), 0)
            self.conditions[key] = Condition(key, index)
        return self.state.check_ids_of(service.node, service.id)

    def live(self, name: str) -> bool:
        """Whether a node's agent holds its liveness key (recorded as a condition)."""
        key = codec.live_key(name)
        if key not in self.conditions:
            self.conditions[key] = Condition(key, self.state.live.get(name, 0))
        return name in self.state.live

    def intention(self, source: str, destination: str) -> Intention | None:
        key = codec.intention_key(source, destination)
        return self._read(key, self.state.intention(source, destination))

    def roots(self) -> list[CARoot]:
        """The CA's roots, guarded as a set: none may come or change before the commit."""
        self._guard_range("r/")
        return self.state.roots()

    def services_on(self, node: str) -> dict[str, Service]:
        """The instances of a node, guarded as a set (a sidecar port picked among them)."""
        self._guard_range(f"s/{codec.esc(node)}/")
        return self.state.services_on(node)

    def _guard_range(self, start: str) -> None:
        self.conditions[start] = Condition(start, self.state.index, prefix_end(start))

    def whole_node(self, name: str) -> None:
        """Guard every service and check of a node: none may change before the commit."""
        for kind in ("s", "c", "g"):
            self._guard_range(f"{kind}/{codec.esc(name)}/")

    def kv(self, key: str) -> KvEntry | None:
        """A KV entry, as this plan has left it so far."""
        if key in self._staged_kv:
            return self._staged_kv[key]
        entry = self.state.kv.get(key)
        self._guard(kv.storage_key(key), entry.modify_index if entry else 0)
        return entry

    def kv_rewritten(self, key: str) -> bool:
        """True if this plan has written `key`: its modify index will be the
        commit's, which no request can name yet (Consul's txn gives every
        write the transaction's index, so a later cas or index check in the
        same transaction fails)."""
        return self._staged_kv.get(key) is not None

    def kv_under(self, prefix: str) -> list[KvEntry]:
        """Every entry under `prefix` (this plan's writes included); nothing
        under it may change before the commit."""
        start = kv.storage_key(prefix)
        end = prefix_end(start) if prefix else prefix_end(kv.KV_PREFIX)
        self.conditions.setdefault(f"range:{start}", Condition(start, self.state.index, end))
        found = {e.key: e for e in self.state.kv.under(prefix)}
        for key, staged in self._staged_kv.items():
            if key.startswith(prefix):
                if staged is None:
                    found.pop(key, None)
                else:
                    found[key] = staged
        return [found[k] for k in sorted(found)]

    def session(self, session_id: str) -> Session | None:
        if session_id in self._staged_sessions:
            return self._staged_sessions[session_id]
        session = self.state.sessions.get(session_id)
        self._guard(session_key(session_id), session.modify_index if session else 0)
        return session

    def _guard(self, key: str, modify_index: int) -> None:
        if key not in self.conditions:
            self.conditions[key] = Condition(key, modify_index)

    def _read(self, key: str, record: R | None) -> R | None:
        if key in self._staged:
            return self._staged[key]  # type: ignore[return-value]
        if key not in self.conditions:
            self.conditions[key] = Condition(key, record.modify_index if record else 0)
        return record

    # -- writes ------------------------------------------------------------

    def put(self, record: Record, *, ephemeral: bool = False, always: bool = False) -> bool:
        """Stage `record`; False, staging nothing, if the state holds it under
        its key already and this plan has not staged that key (see above).
        `always`: stage it all the same (store_output: the state shows an
        output the store does not have yet)."""
        key = codec.key_of(record)
        if not always and key not in self._staged:
            # Looked up only here, and compared only when the key holds a record
            # (a new instance costs one dict lookup): registration is the hot path.
            current = self.state.stored_record(record)
            if current is not None and same(current, record):
                self._guard(key, current.modify_index)
                self.unchanged = True
                return False
        self.ops[key] = codec.put(record, ephemeral=ephemeral, key=key)
        self._staged[key] = record
        return True

    def delete(self, key: str) -> None:
        self.ops[key] = codec.delete(key)
        self._staged[key] = None

    def put_kv(self, entry: KvEntry) -> bool:
        """Stage a KV entry; False, staging nothing, if the key holds it already
        (Consul's kvsSetTxn: the same value, flags, session and lock index)."""
        if entry.key not in self._staged_kv:
            current = self.state.kv.get(entry.key)
            if current is not None and _same_kv(current, entry):
                self._guard(kv.storage_key(entry.key), current.modify_index)
                self.unchanged = True
                return False
        self.stage(kv.encode(entry))
        self._staged_kv[entry.key] = entry
        return True

    def delete_kv(self, key: str) -> None:
        self.ops[kv.storage_key(key)] = codec.delete(kv.storage_key(key))
        self._staged_kv[key] = None

    def put_session(self, session: Session) -> None:
        self.stage(encode_session(session))
        self._staged_sessions[session.id] = session

    def delete_session(self, session_id: str) -> None:
        self.ops[session_key(session_id)] = codec.delete(session_key(session_id))
        self._staged_sessions[session_id] = None

    def stage(self, entry: Entry) -> None:
        self.ops[entry.key] = entry

    def touch(self, service: Service) -> None:
        """Rewrite an instance's guard: its set of checks changed (see above)."""
        self.stage(codec.guard(service.node, service.id))


def same(current: Record | None, wanted: Record, ignore: tuple[str, ...] = ()) -> bool:
    """Whether `current` is `wanted` but for the indexes (Consul's IsSame
    ignores the RaftIndex) and the fields named in `ignore`: the rule Txn.put
    drops a put by, and writes.join asks before it puts at all."""
    if current is None:
        return False
    reset = {"create_index": wanted.create_index, "modify_index": wanted.modify_index}
    for name in ignore:
        reset[name] = getattr(wanted, name)
    return msgspec.structs.replace(current, **reset) == wanted


def _same_kv(current: KvEntry, wanted: KvEntry) -> bool:
    """Consul's DirEntry.Equal: the indexes aside (the key is the same)."""
    return (
        current.value == wanted.value
        and current.flags == wanted.flags
        and current.session == wanted.session
        and current.lock_index == wanted.lock_index
    )
