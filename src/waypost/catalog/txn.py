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
X) reads the service record, and every change to the set (a check added to or
removed from X) re-puts the service record. A concurrent change to the set
therefore moves X's modify index and breaks the other plan's condition. For a
whole node (rare: catalog deregistration of a node) the plan guards the node's
key ranges instead: nothing under them may have changed since the state's index.
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
        """The checks of an instance that was read through this Txn (its own
        condition guards the set); each check's condition guards its status."""
        own = self.state.service_checks.get((service.node, service.id), {})
        return [c for cid in list(own) if (c := self.check(service.node, cid)) is not None]

    def whole_node(self, name: str) -> None:
        """Guard every service and check of a node: none may change before the commit."""
        for kind in ("s", "c"):
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
        """Re-put an instance unchanged: its set of checks changed (see above)."""
        if codec.service_key(service.node, service.id) not in self._staged:
            self.put(service)
