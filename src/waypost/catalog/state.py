"""The in-memory state store: tables, the indexes reads need, and per-topic indexes.

This is Consul's memdb idea in plain dicts. `apply()` is the only way state
changes (besides check output, see `set_output`); it is fed by the storage
backend, so local writes, replays at start-up and changes made by other agents
all take the same path. Every read is synchronous and returns data that can be
encoded as is; the index a read reports comes from `index_of(topics)`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import NamedTuple

import msgspec

from ..storage import Entry
from . import codec
from .acl import ACL_PREFIX, AclTable
from .kv import KV_PREFIX, KvTable
from .model import (
    SERF_CHECK_ID,
    CARoot,
    Check,
    Intention,
    Node,
    Record,
    Service,
    carries,
    worst_status,
)
from .sessions import EVENT_PREFIX, SESSION_PREFIX, EventRing, SessionTable
from .watch import (
    CHECKS,
    INTENTIONS,
    NODES,
    ROOTS,
    SERVICES,
    Topic,
    connect_topic,
    node_topic,
    service_topic,
)

log = logging.getLogger("waypost.catalog")

ServiceKey = tuple[str, str]  # (node, service id)


class Change(NamedTuple):
    """One record as it was before an applied entry and as it is after (None:
    absent), both as stored: a held check shows its stored status here, and
    serfHealth its derived one. A liveness key reports the serfHealth it moved."""

    old: Record | None
    new: Record | None


ALIVE_OUTPUT = "Agent alive and reachable"
DEAD_OUTPUT = "Agent not live or unreachable"


# A tuple, not `CARoot | Intention`: the union would be built at every insert.
_MESH_KINDS = (CARoot, Intention)

# A Change made as NamedTuple's own __new__ makes it, without that
# Python-level frame (~190 ns of every applied record the timeline hears of).
_change = tuple.__new__


class State:
    def __init__(self) -> None:
        self.index = 0
        self.nodes: dict[str, Node] = {}
        self.services: dict[ServiceKey, Service] = {}
        self.checks: dict[tuple[str, str], Check] = {}
        self.by_name: dict[str, dict[ServiceKey, Service]] = {}
        self.node_services: dict[str, dict[str, Service]] = {}
        self.node_checks: dict[str, dict[str, Check]] = {}  # node-level checks only
        self.service_checks: dict[ServiceKey, dict[str, Check]] = {}
        self.live: dict[str, int] = {}  # node -> modify index of its agent's liveness key
        # Modify index of each instance's check-set guard key (see txn.py): it
        # moves whenever a check joins or leaves the instance.
        self.guards: dict[ServiceKey, int] = {}
        self.proxies_of: dict[str, dict[ServiceKey, Service]] = {}  # destination -> sidecars
        self.ca_roots: dict[str, CARoot] = {}
        self.intentions: dict[tuple[str, str], Intention] = {}  # (source, destination)
        self.topic_index: dict[Topic, int] = {}
        self.base_index = 1
        self._highest = 0  # the highest topic index so far (holds may run it past `index`)
        # Checks shown critical because their agent could not store a result
        # (see hold()): key -> the output shown, and the stored record behind it.
        self.held: dict[tuple[str, str], str] = {}
        self._stored: dict[tuple[str, str], Check] = {}
        # Output-only check updates so far (set_output): a change readers see
        # at the same index, so every cache of encoded answers keys on it too.
        self.outputs = 0
        # KV, sessions and events: tables of their own (catalog/kv.py, sessions.py).
        self.kv = KvTable()
        self.sessions = SessionTable()
        self.events = EventRing()
        self.acl = AclTable()  # policies, roles, tokens (catalog/acl.py)

    # -- writes ------------------------------------------------------------

    def apply(
        self,
        index: int,
        entries: list[Entry],
        snapshot: bool = False,
        changes: list[Change] | None = None,
        replay: bool = False,
    ) -> set[Topic]:
        """Apply a committed batch at `index`; return the topics it changed.

        With `snapshot`, `entries` is the whole store: keys it lacks are removed.
        With `changes`, each entry's record before and after is appended to it
        (the health timeline needs the old status; only its listeners pay for it).
        With `replay` (the store's contents at start-up, before anyone read an
        index, possibly in several chunks at the same `index`), topics are set
        to `index` rather than moved past it: nobody can have seen it yet.
        """
        touched: set[Topic] = set()
        woken: set[Topic] = set()  # KV topics: their index is computed (kv.py), not recorded
        if snapshot:
            entries = self._deletions_for(entries) + entries
        self._start_lock_delays(entries)
        report = changes is not None  # nobody listens (a replay, no timeline): no Change built
        for entry in entries:
            try:  # an unreadable entry is skipped, not the rest of the batch
                change = self._apply_one(index, entry, touched, woken, report)
            except (msgspec.DecodeError, KeyError, ValueError, IndexError) as exc:
                log.error("skipping unreadable stored entry %r: %s", entry.key, exc)
                continue
            if changes is not None and change is not None:
                changes.append(change)
        if index > self.index:  # max(), without the builtin's call (every commit)
            self.index = index
        self._advance(touched, index, replay)
        return touched | woken if woken else touched

    def _advance(self, topics: set[Topic], index: int, replay: bool = False) -> None:
        """Move the topics' index to `index`, or one past where a hold put it:
        a topic's index never stands still across a change, nor goes back
        (in a replay it may stand still: no reader has seen it)."""
        topic_index = self.topic_index
        highest = self._highest
        for topic in topics:
            old = topic_index.get(topic, 0)
            new = index if index > old or (replay and index == old) else old + 1
            topic_index[topic] = new
            if new > highest:
                highest = new
        self._highest = highest

    def _start_lock_delays(self, entries: list[Entry]) -> None:
        """A batch that deletes a session starts the lock delay of the keys it
        held, before the same batch releases them (whatever their order)."""
        for entry in entries:
            if entry.value is None and entry.key.startswith(SESSION_PREFIX):
                session = self.sessions.get(entry.key[len(SESSION_PREFIX) :])
                if session is not None:
                    self.kv.start_lock_delay(session.id, session.lock_delay)

    def _apply_one(
        self, index: int, entry: Entry, touched: set[Topic], woken: set[Topic], report: bool
    ) -> Change | None:
        """Apply one entry; the record it changed as it was and is (None for
        KV, sessions, events, ACLs, guards, and for a delete of nothing; for
        a stored record, None unless `report`)."""
        kind = entry.key[0]
        if kind == "k" and entry.key.startswith(KV_PREFIX):
            self.kv.apply(index, entry, woken)
            return None
        if kind == "x" and entry.key.startswith(SESSION_PREFIX):
            self.sessions.apply(index, entry, touched)
            return None
        if kind == "e" and entry.key.startswith(EVENT_PREFIX):
            self.events.apply(index, entry, touched)
            return None
        if kind == "a" and entry.key.startswith(ACL_PREFIX):
            self.acl.apply(index, entry, touched)
            return None
        if kind in "lg" and entry.key[1] == "/":
            return self._apply_marker(kind, index, entry, touched)
        if entry.value is None:
            old = self._lookup(entry.key)
            if old is None:
                return None
            change = _change(Change, (self._stored_of(old), None)) if report else None
            self._remove(old, touched)
            if isinstance(old, Check):  # gone for good: nothing left to hold
                self.held.pop((old.node, old.check_id), None)
            return change
        record = codec.decode_stored(entry.key, entry.value)
        old = self._lookup_record(record)  # the decoded record names its own key
        created = entry.create_index or (old.create_index if old is not None else index)
        codec.stamp(record, created, entry.modify_index or index)
        if old is None:
            inserted = self._insert(record, touched)
            return _change(Change, (None, self._stored_of(inserted))) if report else None
        replaced = self._stored_of(old) if report else None
        shown = self._replace(old, record, touched)
        if shown is None:
            self._remove(old, touched)
            shown = self._insert(record, touched)
        return _change(Change, (replaced, self._stored_of(shown))) if replaced is not None else None

    def _deletions_for(self, snapshot: list[Entry]) -> list[Entry]:
        keep = {e.key for e in snapshot}
        present = [codec.node_key(n) for n in self.nodes]
        present += [codec.service_key(*k) for k in self.services]
        present += [codec.check_key(*k) for k in self.checks]
        present += [codec.live_key(n) for n in self.live]
        present += [codec.guard_key(*k) for k in self.guards]
        present += list(self.kv.storage_keys())
        present += [f"{SESSION_PREFIX}{sid}" for sid in self.sessions.sessions]
        present += list(self.events.slots)
        present += [codec.root_key(r) for r in self.ca_roots]
        present += [codec.intention_key(*k) for k in self.intentions]
        present += self.acl.storage_keys()
        return [codec.delete(k) for k in present if k not in keep]

    def _apply_marker(
        self, kind: str, index: int, entry: Entry, touched: set[Topic]
    ) -> Change | None:
        """Valueless keys that hold no record: a liveness key, a check-set guard."""
        parts = codec.split_key(entry.key)[1]
        modified = entry.modify_index or index
        if kind == "g":
            if entry.value is None:
                self.guards.pop((parts[0], parts[1]), None)
            else:
                self.guards[(parts[0], parts[1])] = modified
            return None
        if entry.value is None:
            self.live.pop(parts[0], None)
        else:
            self.live[parts[0]] = modified
        return self._apply_live(parts[0], touched)

    def _apply_live(self, node: str, touched: set[Topic]) -> Change | None:
        """A liveness key came or went: the node's serfHealth check follows it
        (the change reported is that check's)."""
        check = self.checks.get((node, SERF_CHECK_ID))
        if check is None:
            return None
        before = self._stored_of(check)
        shown = self._replace(check, before, touched)  # same check: always in place
        assert shown is not None
        return Change(before, self._stored_of(shown))

    def _stored_of(self, record: Record) -> Record:
        """A record as stored (a held check unheld)."""
        if isinstance(record, Check):
            return self._stored.get((record.node, record.check_id), record)
        return record

    def _lookup_record(self, record: Record) -> Record | None:
        """The record now under the key of `record` (without parsing that key)."""
        if isinstance(record, Service):
            return self.services.get((record.node, record.id))
        if isinstance(record, Check):
            return self.checks.get((record.node, record.check_id))
        if isinstance(record, Node):
            return self.nodes.get(record.name)
        if isinstance(record, CARoot):
            return self.ca_roots.get(record.id)
        return self.intentions.get((record.source, record.destination))

    def _lookup(self, key: str) -> Record | None:
        kind, parts = codec.split_key(key)
        if kind == "n":
            return self.nodes.get(parts[0])
        if kind == "s":
            return self.services.get((parts[0], parts[1]))
        if kind == "r":
            return self.ca_roots.get(parts[0])
        if kind == "i":
            return self.intentions.get((parts[0], parts[1]))
        return self.checks.get((parts[0], parts[1]))

    def _insert(self, record: Record, touched: set[Topic]) -> Record:
        """Insert `record`; returns it as shown (serfHealth derived, a held check critical)."""
        if isinstance(record, _MESH_KINDS):
            self._insert_mesh(record, touched)
        elif isinstance(record, Node):
            self.nodes[record.name] = record
            touched.update((NODES, node_topic(record.name)))
            self._touch_node_services(record.name, touched)
        elif isinstance(record, Service):
            key = (record.node, record.id)
            self.services[key] = record
            self.by_name.setdefault(record.name, {})[key] = record
            self.node_services.setdefault(record.node, {})[record.id] = record
            touched.update((SERVICES, service_topic(record.name), node_topic(record.node)))
            if record.proxy is not None:
                dest = record.proxy.destination_service_name
                self.proxies_of.setdefault(dest, {})[key] = record
                touched.add(connect_topic(dest))
        else:
            record = self._shown(record)
            self.checks[(record.node, record.check_id)] = record
            self._check_table(record).setdefault(self._check_owner(record), {})[record.check_id] = (
                record
            )
            self._touch_check(record, touched)
        return record

    def _replace(self, old: Record, new: Record, touched: set[Topic]) -> Record | None:
        """Overwrite an instance or check where it stands in every index, if
        it stays in the same places (same name, owner, proxy destination);
        None if not (then it is removed and inserted).

        Why not always remove and insert: the indexes are keyed by tuples, and
        a removal drops the old key tuple, which the replay left in the
        collector's permanent generation, while the insert adds a new one to
        the young generation. Freeing a frozen object lowers the young
        generation's count as much as the new one raised it, so at 1,000
        re-registrations/s of a replayed catalog the young generation grew by
        ~3 tuples a write without a collection being due, and the first one
        then walked 112k objects (157 ms, docs/benchmarks.md 5b). An
        assignment to a key already there keeps the key object it has."""
        if isinstance(new, Service) and isinstance(old, Service):
            if new.name != old.name or _proxy_dest(new) != _proxy_dest(old):
                return None
            key = (new.node, new.id)
            self.services[key] = new
            self.by_name[new.name][key] = new
            self.node_services[new.node][new.id] = new
            touched.update((SERVICES, service_topic(new.name), node_topic(new.node)))
            if new.proxy is not None:
                self.proxies_of[new.proxy.destination_service_name][key] = new
                touched.add(connect_topic(new.proxy.destination_service_name))
            return new
        if isinstance(new, Check) and isinstance(old, Check) and new.service_id == old.service_id:
            self._stored.pop((new.node, new.check_id), None)
            shown = self._shown(new)
            self.checks[(new.node, new.check_id)] = shown
            self._check_table(shown)[self._check_owner(shown)][new.check_id] = shown
            self._touch_check(shown, touched)
            return shown
        return None

    def _remove(self, record: Record, touched: set[Topic]) -> None:
        if isinstance(record, _MESH_KINDS):
            self._remove_mesh(record, touched)
        elif isinstance(record, Node):
            self.nodes.pop(record.name, None)
            touched.update((NODES, node_topic(record.name)))
            self._touch_node_services(record.name, touched)
        elif isinstance(record, Service):
            key = (record.node, record.id)
            self.services.pop(key, None)
            _discard(self.by_name, record.name, key)
            _discard(self.node_services, record.node, record.id)
            touched.update((SERVICES, service_topic(record.name), node_topic(record.node)))
            if record.proxy is not None:
                _discard(self.proxies_of, record.proxy.destination_service_name, key)
                touched.add(connect_topic(record.proxy.destination_service_name))
        else:
            self.checks.pop((record.node, record.check_id), None)
            self._stored.pop((record.node, record.check_id), None)
            _discard(self._check_table(record), self._check_owner(record), record.check_id)
            self._touch_check(record, touched)

    def _insert_mesh(self, record: CARoot | Intention, touched: set[Topic]) -> None:
        if isinstance(record, CARoot):
            self.ca_roots[record.id] = record
            touched.add(ROOTS)
        else:
            self.intentions[(record.source, record.destination)] = record
            touched.add(INTENTIONS)

    def _remove_mesh(self, record: CARoot | Intention, touched: set[Topic]) -> None:
        if isinstance(record, CARoot):
            self.ca_roots.pop(record.id, None)
            touched.add(ROOTS)
        else:
            self.intentions.pop((record.source, record.destination), None)
            touched.add(INTENTIONS)

    def _shown(self, check: Check) -> Check:
        """A check as the state holds it: serfHealth derived, a held check
        critical (the stored one kept aside in `_stored`)."""
        if check.check_id == SERF_CHECK_ID and not check.service_id:
            check = self._with_liveness(check)
        held = self.held.get((check.node, check.check_id))
        if held is not None:
            self._stored[(check.node, check.check_id)] = check
            check = msgspec.structs.replace(check, status="critical", output=held)
        return check

    def _with_liveness(self, check: Check) -> Check:
        """serfHealth is derived: passing while the node's liveness key exists.

        In a cluster the key lives under the agent's etcd lease, so when an
        agent dies every other agent sees its node turn critical, however the
        keys arrive (replay, watch or re-list)."""
        if check.node in self.live:
            if check.status == "passing":
                return check
            return msgspec.structs.replace(check, status="passing", output=ALIVE_OUTPUT)
        return msgspec.structs.replace(check, status="critical", output=DEAD_OUTPUT)

    def _check_table(self, check: Check) -> dict:  # type: ignore[type-arg]
        return self.service_checks if check.service_id else self.node_checks

    @staticmethod
    def _check_owner(check: Check) -> ServiceKey | str:
        return (check.node, check.service_id) if check.service_id else check.node

    def _touch_check(self, check: Check, touched: set[Topic]) -> None:
        touched.update((CHECKS, node_topic(check.node)))
        if check.service_id:
            service = self.services.get((check.node, check.service_id))
            touched.add(service_topic(service.name if service else check.service_name))
            if service is not None and service.proxy is not None:
                touched.add(connect_topic(service.proxy.destination_service_name))
        else:
            self._touch_node_services(check.node, touched)

    def _touch_node_services(self, node: str, touched: set[Topic]) -> None:
        for service in self.node_services.get(node, {}).values():
            touched.add(service_topic(service.name))
            if service.proxy is not None:
                touched.add(connect_topic(service.proxy.destination_service_name))

    def set_output(self, node: str, check_id: str, output: str) -> bool:
        """Replace a check's output in memory only, without a new index.

        Output-only changes are not written to the store (Consul rate-limits
        them the same way): they would cost a durable write and wake every
        watcher for no change in health. The next status change persists them.
        """
        key = (node, check_id)
        check = self.stored_check(node, check_id)
        if check is None or check.output == output:
            return False
        updated = msgspec.structs.replace(check, output=output)
        if key in self.held:  # shown critical with the hold's output: no change to see
            self._stored[key] = updated
            return True
        self.outputs += 1
        self.checks[key] = updated
        self._check_table(updated)[self._check_owner(updated)][check_id] = updated
        return True

    # -- results this agent could not store --------------------------------

    def hold(self, node: str, check_id: str, output: str) -> set[Topic]:
        """Show a check as critical, with `output`, until `release()`.

        The agent that runs a check calls this when the store refused its
        result (disk full, etcd unreachable): its own answers (HTTP, DNS, the
        UI) must not go on calling the instance healthy meanwhile. Writers
        still see the stored record (`stored_check`). The topics it touches
        move one index past where they were (and the next commit one past
        that), so blocking queries and answer caches see the hold like any
        change; an index may then run ahead of the store's by the number of
        holds. Returns the topics to wake.
        """
        self.held[(node, check_id)] = output
        return self._reinsert(node, check_id)

    def release(self, node: str, check_id: str) -> set[Topic]:
        """Show the stored record again (the result was stored, or superseded)."""
        if self.held.pop((node, check_id), None) is None:
            return set()
        return self._reinsert(node, check_id)

    def _reinsert(self, node: str, check_id: str) -> set[Topic]:
        """Show the check as it is held (or stored) now; the topics it touches
        get a new index so that every reader, blocking ones included, sees it."""
        shown = self.checks.get((node, check_id))
        touched: set[Topic] = set()
        if shown is not None:  # the same check again: in place, where it stands
            self._replace(shown, self._stored_of(shown), touched)
        self._advance(touched, 0)
        return touched

    def stored_check(self, node: str, check_id: str) -> Check | None:
        """A check as the store has it, whether or not it is held."""
        return self._stored.get((node, check_id)) or self.checks.get((node, check_id))

    def stored_record(self, record: Record) -> Record | None:
        """The record under the key of `record` now (a check as stored, held or not)."""
        if isinstance(record, Check):
            return self.stored_check(record.node, record.check_id)
        return self._lookup_record(record)

    # -- reads -------------------------------------------------------------
    # Named queries: code outside catalog/ reads through these, never the dicts.

    def node(self, name: str) -> Node | None:
        return self.nodes.get(name)

    def all_nodes(self) -> list[Node]:
        """Every node, sorted by name."""
        return [self.nodes[name] for name in sorted(self.nodes)]

    def instance(self, node: str, service_id: str) -> Service | None:
        return self.services.get((node, service_id))

    def all_instances(self) -> Iterable[Service]:
        return self.services.values()

    def services_on(self, node: str) -> dict[str, Service]:
        """The instances on a node, by service ID (do not modify)."""
        return self.node_services.get(node, {})

    def service_names(self) -> Iterable[str]:
        return self.by_name.keys()

    def has_service(self, name: str) -> bool:
        return name in self.by_name

    def check(self, node: str, check_id: str) -> Check | None:
        """A check as this agent answers with it (critical while held)."""
        return self.checks.get((node, check_id))

    def check_ids_on(self, node: str) -> list[str]:
        """Every check ID on a node: node-level ones and its instances'."""
        return [check_id for (n, check_id) in self.checks if n == node]

    def check_ids_of(self, node: str, service_id: str) -> list[str]:
        return list(self.service_checks.get((node, service_id), {}))

    def is_live(self, node: str) -> bool:
        """Whether the node's agent holds its liveness key."""
        return node in self.live

    def instances_of(self, name: str) -> Iterable[Service]:
        """The instances of a service, unsorted and uncopied (the DNS hot path)."""
        return self.by_name.get(name, {}).values()

    def node_names(self) -> Iterable[str]:
        return self.nodes.keys()

    def agents(self) -> list[Node]:
        """Nodes that belong to a waypost agent (they have serfHealth), by name."""
        return [n for n in self.all_nodes() if (n.name, SERF_CHECK_ID) in self.checks]

    def highest_index(self) -> int:
        """No read has reported an index above this one (in this history)."""
        return max(self.index, self.base_index, self._highest)

    def index_of(self, topics: Iterable[Topic]) -> int:
        """The index a read over `topics` reports: never below 1, never moving
        unless one of them changed."""
        best = self.base_index
        for topic in topics:
            kind = topic[0]
            if kind == "kv":
                best = max(best, self.kv.key_index(topic[1]))
            elif kind == "kvp":
                best = max(best, self.kv.prefix_index(topic[1]))
            else:
                best = max(best, self.topic_index.get(topic, 0))
        return best

    def checks_of(self, service: Service) -> list[Check]:
        """Node-level checks of the instance's node, then its own checks."""
        node_level = self.node_checks.get(service.node)
        own = self.service_checks.get((service.node, service.id))
        result = list(node_level.values()) if node_level else []
        if own:
            result.extend(own.values())
        return result

    def instances(self, name: str, tags: Iterable[str] = ()) -> list[Service]:
        """The instances of `name` that carry every one of `tags` (`?tag=` on
        catalog and health reads)."""
        wanted = {t.lower() for t in tags}
        found = self.by_name.get(name, {}).values()
        if len(wanted) == 1:  # the usual question: no generator per instance
            (tag,) = wanted
            return [s for s in found if carries(s, tag)]
        if wanted:
            return [s for s in found if all(carries(s, tag) for tag in wanted)]
        return list(found)

    def health(
        self, name: str, tags: Iterable[str] = (), passing: bool = False
    ) -> list[tuple[Node | None, Service, list[Check]]]:
        """Rows of `/v1/health/service/<name>`, sorted by node then service ID."""
        rows = []
        for service in sorted(self.instances(name, tags), key=_instance_order):
            checks = self.checks_of(service)
            if passing and any(c.status != "passing" for c in checks):
                continue
            rows.append((self.nodes.get(service.node), service, checks))
        return rows

    def aggregate_status(self, service: Service) -> str:
        """The worst status among an instance's checks; passing when it has none."""
        return worst_status(self.checks_of(service))

    def instance_status(self, service: Service) -> str:
        """The status an operator reads for an instance: "maintenance" while a
        maintenance check is on (its own or its node's), else the worst check."""
        checks = self.checks_of(service)
        if any(c.type == "maintenance" for c in checks):
            return "maintenance"
        return worst_status(checks)

    def service_tags(self) -> dict[str, list[str]]:
        """`/v1/catalog/services`: every service name with the union of its tags."""
        result: dict[str, list[str]] = {}
        for name in sorted(self.by_name):
            tags: set[str] = set()
            for service in self.by_name[name].values():
                tags.update(service.tags)
            result[name] = sorted(tags)
        return result

    def checks_in_state(self, state: str) -> list[Check]:
        found = self.checks.values()
        if state != "any":
            found = [c for c in found if c.status == state]  # type: ignore[assignment]
        return sorted(found, key=lambda c: (c.node, c.check_id))

    def checks_for_service(self, name: str) -> list[Check]:
        result: list[Check] = []
        for service in sorted(self.by_name.get(name, {}).values(), key=_instance_order):
            result.extend(self.service_checks.get((service.node, service.id), {}).values())
        return result

    def checks_on_node(self, node: str) -> list[Check]:
        result = list(self.node_checks.get(node, {}).values())
        for service in self.node_services.get(node, {}).values():
            result.extend(self.service_checks.get((node, service.id), {}).values())
        return result

    # -- the mesh's reads ----------------------------------------------------

    def roots(self) -> list[CARoot]:
        """The CA's roots, the active one first."""
        return sorted(self.ca_roots.values(), key=lambda r: (not r.active, r.create_index))

    def active_root(self) -> CARoot | None:
        return next((r for r in self.ca_roots.values() if r.active), None)

    def all_intentions(self) -> list[Intention]:
        return list(self.intentions.values())

    def intention(self, source: str, destination: str) -> Intention | None:
        return self.intentions.get((source, destination))

    def proxies_for(self, name: str) -> list[Service]:
        """The connect-proxy instances fronting service `name`, by node then ID."""
        return sorted(self.proxies_of.get(name, {}).values(), key=_instance_order)

    def connect_health(
        self, name: str, passing: bool = False
    ) -> list[tuple[Node | None, Service, list[Check]]]:
        """Rows of `/v1/health/connect/<name>`: its sidecars, as `health()` has them."""
        rows = []
        for service in self.proxies_for(name):
            checks = self.checks_of(service)
            if passing and any(c.status != "passing" for c in checks):
                continue
            rows.append((self.nodes.get(service.node), service, checks))
        return rows

    def statistics(self) -> dict[str, float]:
        return {
            "index": self.index,
            "nodes": len(self.nodes),
            "services": len(self.by_name),
            "instances": len(self.services),
            "checks": len(self.checks),
            **self.kv.statistics(),
            **self.sessions.statistics(),
            **self.acl.statistics(),
        }


def _instance_order(service: Service) -> tuple[str, str]:
    return (service.node, service.id)


def _proxy_dest(service: Service) -> str | None:
    return service.proxy.destination_service_name if service.proxy is not None else None


def _discard(table: dict, outer: object, inner: object) -> None:  # type: ignore[type-arg]
    bucket = table.get(outer)
    if bucket is None:
        return
    bucket.pop(inner, None)
    if not bucket:
        del table[outer]
