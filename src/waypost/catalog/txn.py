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
"""

from __future__ import annotations

from typing import TypeVar

from ..storage import Condition, Entry, prefix_end
from . import codec
from .model import Check, Node, Record, Service
from .state import State

R = TypeVar("R", Node, Service, Check)


class Txn:
    """Reads that record conditions, and the entries a plan stages."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.ops: dict[str, Entry] = {}
        self.conditions: dict[str, Condition] = {}
        self._staged: dict[str, Record | None] = {}  # reads see the plan's own writes

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

    def whole_node(self, name: str) -> None:
        """Guard every service and check of a node: none may change before the commit."""
        for kind in ("s", "c", "g"):
            start = f"{kind}/{codec.esc(name)}/"
            self.conditions[start] = Condition(start, self.state.index, prefix_end(start))

    def _read(self, key: str, record: R | None) -> R | None:
        if key in self._staged:
            return self._staged[key]  # type: ignore[return-value]
        if key not in self.conditions:
            self.conditions[key] = Condition(key, record.modify_index if record else 0)
        return record

    # -- writes ------------------------------------------------------------

    def put(self, record: Record, *, ephemeral: bool = False) -> None:
        entry = codec.put(record, ephemeral=ephemeral)
        self.ops[entry.key] = entry
        self._staged[entry.key] = record

    def delete(self, key: str) -> None:
        self.ops[key] = codec.delete(key)
        self._staged[key] = None

    def stage(self, entry: Entry) -> None:
        self.ops[entry.key] = entry

    def touch(self, service: Service) -> None:
        """Rewrite an instance's guard: its set of checks changed (see above)."""
        self.stage(codec.guard(service.node, service.id))
