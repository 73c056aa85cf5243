"""The health timeline: what happened to each instance in the last hour.

Consul keeps no history: its UI shows the present. An operator asking "why
did payment go down at 10:04?" needs the transitions, so the agent records
them as the catalog applies changes (`Catalog.subscribe_records`: every
record of a batch as it was and as it is). Because every change reaches the
catalog through the same `apply` (local writes, the health runner, the reaper,
and in a cluster the etcd mirror of what other agents did), each agent's
timeline covers the whole catalog, not just its own node.

What is recorded, per instance (one ring per service name):

    registered     the instance appeared (its status then)
    deregistered   it was removed
    reaped         it was removed while a check with DeregisterCriticalServiceAfter
                   had been critical at least that long (inferred from the data:
                   in a cluster the reaper is another agent)
    check          a check's status moved (passing -> warning -> critical), or a
                   check was added to or removed from a live instance
    maintenance    maintenance mode on (with its reason) or off

A node-level check (serfHealth, node maintenance) changes the health of every
instance on the node, so it is recorded once per instance there.

Bounds, so a flapping check cannot grow the agent: events older than
`retention` (an hour) are dropped, each service keeps at most `per_service`,
and all services together at most `total` (the oldest go first). Outputs are
cut to `OUTPUT_LIMIT` characters. The timeline lives in memory: a restarted
agent starts an empty one (output-only changes, which the catalog keeps in
memory too, are not transitions and are not recorded).

Eviction order: `_order` holds the same events in arrival order, so its
head is always the oldest live event; an event removed early (the per-service
cap) leaves a stale entry that is skipped when it reaches the head, and the
list is filtered (in order, O(n)) once stale entries pass a quarter of the
live ones: amortised O(1), and since a stale entry is a whole event, the
events held stay within 1.25x the live ones (+1024).
It holds the events themselves, not a (seq, time, service) tuple each, and
each service's ring is a dict of seq to event (insertion order is seq
order), not a deque: a `gc=False` event and a dict of only such events are
not tracked by the cyclic collector, while every tuple and every deque was
one more object for its collections to walk (at 1,000 changes/s over 10,000
services most of what they walked; see `agent/runtime.py`, `_tune_gc`). A
ring's oldest event is dropped by key when it is the oldest of all, and by
`next(iter(ring))` under the per-service cap.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Final

import msgspec

from .model import Check, Record, Service, status_rank, worst_status
from .state import Change, State

RETENTION: Final = 3600.0
PER_SERVICE: Final = 2000
TOTAL: Final = 100_000
#: stale entries in the eviction order may reach 1/STALE_SHARE of the live ones
STALE_SHARE: Final = 4
OUTPUT_LIMIT: Final = 512

InstanceKey = tuple[str, str]  # (node, service id)


class Transition(msgspec.Struct, frozen=True, gc=False):
    """One event of an instance. `before`/`after` are the check's statuses
    ("" where it did not exist; "maintenance" for maintenance mode); `status`
    is the instance's own status right after the change ("" once removed).
    `gc=False`: it holds only strings and numbers, and a dict holding only
    such values is not tracked by the collector either (the rings below)."""

    seq: int
    time: float  # unix seconds
    index: int  # the catalog index of the change
    kind: str
    service: str
    instance: str
    node: str
    status: str
    check_id: str = ""
    check_name: str = ""
    check_type: str = ""
    before: str = ""
    after: str = ""
    output: str = ""


class Timeline:
    """Records transitions from applied changes; answers per service and instance.

    Args:
        state: The catalog's state, read for each instance's status after a change.
        wall: The wall clock (unix seconds), injectable for tests.
        retention: Seconds an event is kept.
        per_service: Events kept per service name.
        total: Events kept over all services.
    """

    def __init__(
        self,
        state: State,
        wall: Callable[[], float] = time.time,
        retention: float = RETENTION,
        per_service: int = PER_SERVICE,
        total: int = TOTAL,
    ) -> None:
        self._state = state
        self._wall = wall
        self.started = wall()  # nothing before this is known
        self.retention = retention
        self.per_service = per_service
        self.total = total
        self._rings: dict[str, dict[int, Transition]] = {}  # service -> seq -> event
        self._order: deque[Transition] = deque()
        self._count = 0
        self._seq = itertools.count(1)
        self._critical_since: dict[tuple[str, str], float] = {}  # checks that can be reaped
        self.recorded = 0

    # -- recording ------------------------------------------------------------

    def record(self, index: int, changes: list[Change]) -> None:
        """`Catalog.subscribe_records` listener: turn one applied batch into events."""
        now = self._wall()
        if len(changes) == 1 and changes[0][0] is None and isinstance(changes[0][1], Service):
            # A registration without checks, the most common batch: its one event.
            self._append(self._registered(changes[0][1], index, now))
            self._expire(now)
            return
        batch = _Batch(changes)
        checks = False
        for old, new in changes:
            if isinstance(old, Service) or isinstance(new, Service):
                event = self._instance_event(old, new, batch, index, now)
                if event is not None:
                    self._append(event)
            elif isinstance(old, Check) or isinstance(new, Check):
                checks = True
                for event in self._check_events(old, new, batch, index, now):
                    self._append(event)
        if checks:  # after the removals read them, whatever the batch's order
            for old, new in changes:
                if isinstance(old, Check) or isinstance(new, Check):
                    self._track_critical(old, new, now)
        self._expire(now)

    def _registered(self, new: Service, index: int, now: float) -> Transition:
        """An instance appeared: its status and output from one read of its
        checks, the event built positionally (every registration makes one)."""
        status, output = _status_and_output(self._state.checks_of(new))
        return Transition(
            next(self._seq), now, index, "registered", new.name, new.id, new.node,
            status, "", "", "", "", status, output,
        )  # fmt: skip

    def _instance_event(
        self, old: Record | None, new: Record | None, batch: _Batch, index: int, now: float
    ) -> Transition | None:
        """The event of an instance that appeared or went (None: it changed in place)."""
        if old is None and isinstance(new, Service):
            return self._registered(new, index, now)
        if new is None and isinstance(old, Service):
            removed = batch.removed_checks.get((old.node, old.id), [])
            reaped = self._reaped(removed, now)
            kind = "reaped" if reaped else "deregistered"
            before = worst_status(removed, none="")
            return self._event(now, index, kind, old, "", before=before, output=reaped)
        return None

    def _check_events(
        self, old: Record | None, new: Record | None, batch: _Batch, index: int, now: float
    ) -> Iterable[Transition]:
        check = new if isinstance(new, Check) else old
        assert isinstance(check, Check)
        before = _check_state(old)
        after = _check_state(new)
        if before == after:
            return
        for instance in self._affected(check, batch):
            status = self._state.instance_status(instance)
            kind = "maintenance" if check.type == "maintenance" else "check"
            output = check.notes if kind == "maintenance" else _cut(check.output)
            yield self._event(
                now, index, kind, instance, status, check, before=before, after=after, output=output
            )

    def _affected(self, check: Check, batch: _Batch) -> list[Service]:
        """The live instances whose health a check is part of; none for an
        instance that appeared or went in the same batch (its own event says it)."""
        if check.service_id:
            key = (check.node, check.service_id)
            instance = self._state.instance(*key)
            if instance is None or key in batch.added or key in batch.removed:
                return []
            return [instance]
        on_node = self._state.services_on(check.node).values()
        return [s for s in on_node if (s.node, s.id) not in batch.added]

    def _event(
        self,
        now: float,
        index: int,
        kind: str,
        instance: Service,
        status: str,
        check: Check | None = None,
        before: str = "",
        after: str = "",
        output: str = "",
    ) -> Transition:
        return Transition(
            seq=next(self._seq),
            time=now,
            index=index,
            kind=kind,
            service=instance.name,
            instance=instance.id,
            node=instance.node,
            status=status,
            check_id=check.check_id if check else "",
            check_name=check.name if check else "",
            check_type=check.type if check else "",
            before=before,
            after=after,
            output=_cut(output),
        )

    # -- reaping, inferred ----------------------------------------------------

    def _track_critical(self, old: Record | None, new: Record | None, now: float) -> None:
        """Remember since when each reapable check is critical (for `reaped`)."""
        if isinstance(new, Check) and _reap_after(new) and new.status == "critical":
            if not (isinstance(old, Check) and old.status == "critical"):
                self._critical_since[(new.node, new.check_id)] = now
        elif isinstance(old, Check):
            self._critical_since.pop((old.node, old.check_id), None)

    def _reaped(self, removed: list[Check], now: float) -> str:
        """Why an instance that went was reaped ("" if it was not): a removed
        check critical at least its DeregisterCriticalServiceAfter. A check
        critical since before this agent started is given the benefit of the doubt."""
        for check in removed:
            after = _reap_after(check)
            if not after or check.status != "critical":
                continue
            since = self._critical_since.get((check.node, check.check_id))
            if since is None or now - since >= after * 0.9:  # the reaper runs on its own tick
                return f"{check.name}: critical longer than DeregisterCriticalServiceAfter"
        return ""

    # -- bounds ---------------------------------------------------------------

    def _append(self, event: Transition) -> None:
        ring = self._rings.get(event.service)
        if ring is None:
            ring = self._rings[event.service] = {}
        ring[event.seq] = event
        self._order.append(event)
        self._count += 1
        self.recorded += 1
        if len(ring) > self.per_service:
            del ring[next(iter(ring))]  # leaves a stale slot in _order, skipped at the head
            self._count -= 1
        while self._count > self.total:
            self._pop_oldest()
        if len(self._order) > self._count + self._count // STALE_SHARE + 1024:
            self._rebuild_order()

    def _expire(self, now: float) -> None:
        cutoff = now - self.retention
        while self._order and self._order[0].time < cutoff:
            self._pop_oldest()

    def _pop_oldest(self) -> None:
        oldest = self._order.popleft()
        ring = self._rings.get(oldest.service)
        if ring is not None and ring.pop(oldest.seq, None) is not None:
            self._count -= 1
            if not ring:
                del self._rings[oldest.service]

    def _rebuild_order(self) -> None:
        """Drop the stale entries, in place of order: O(n), no sort."""
        rings = self._rings
        self._order = deque(
            [e for e in self._order if (ring := rings.get(e.service)) and ring.get(e.seq) is e]
        )

    # -- reads ----------------------------------------------------------------

    def events(
        self, service: str, instance: str = "", node: str = "", after: int = 0
    ) -> list[Transition]:
        """A service's events of the last `retention` seconds, oldest first;
        only one instance's with `instance` (and `node`, IDs being per node),
        only those with a seq above `after`."""
        self._expire(self._wall())
        found = self._rings.get(service)
        return [
            e
            for e in (found.values() if found else ())
            if e.seq > after
            and (not instance or e.instance == instance)
            and (not node or e.node == node)
        ]

    def all_events(self, after: int = 0, limit: int = 1000) -> list[Transition]:
        """Every service's events, oldest first: the newest `limit` above `after`."""
        self._expire(self._wall())
        merged = sorted(
            (e for ring in self._rings.values() for e in ring.values() if e.seq > after),
            key=lambda e: e.seq,
        )
        return merged[-limit:] if limit else merged

    def statistics(self) -> dict[str, float]:
        return {
            "events": self._count,
            "services": len(self._rings),
            "recorded": self.recorded,
        }


class _Batch:
    """What one batch did to whole instances: which appeared, which went (and
    the checks that went with them). Worked out on first use: a registration
    without checks (the common batch) never asks."""

    def __init__(self, changes: list[Change]) -> None:
        self._changes = changes

    @property
    def added(self) -> set[InstanceKey]:
        return self._scan[0]

    @property
    def removed(self) -> set[InstanceKey]:
        return self._scan[1]

    @property
    def removed_checks(self) -> dict[InstanceKey, list[Check]]:
        return self._scan[2]

    @functools.cached_property
    def _scan(self) -> tuple[set[InstanceKey], set[InstanceKey], dict[InstanceKey, list[Check]]]:
        added: set[InstanceKey] = set()
        removed: set[InstanceKey] = set()
        removed_checks: dict[InstanceKey, list[Check]] = {}
        for old, new in self._changes:
            if isinstance(new, Service) and old is None:
                added.add((new.node, new.id))
            elif isinstance(old, Service) and new is None:
                removed.add((old.node, old.id))
            elif isinstance(old, Check) and new is None and old.service_id:
                removed_checks.setdefault((old.node, old.service_id), []).append(old)
        return added, removed, removed_checks


def _check_state(record: Record | None) -> str:
    if not isinstance(record, Check):
        return ""
    return "maintenance" if record.type == "maintenance" else record.status


def _reap_after(check: Check) -> float:
    return check.definition.deregister_critical_after if check.definition else 0.0


def _status_and_output(checks: list[Check]) -> tuple[str, str]:
    """`State.instance_status` and the output of the instance's own worst check
    (the node's say nothing of it), cut, in one pass over the instance's
    checks: "maintenance" if any is, else the worst status."""
    worst, rank = "passing", 0
    maintenance = False
    output, own_rank = "", -1
    for check in checks:
        current = status_rank(check.status)
        if check.type == "maintenance":
            maintenance = True
        elif current > rank:
            worst, rank = check.status, current
        if check.service_id and current > own_rank:  # the first of the worst, as max()
            output, own_rank = check.output, current
    return ("maintenance" if maintenance else worst), _cut(output)


def _cut(text: str) -> str:
    return text if len(text) <= OUTPUT_LIMIT else text[: OUTPUT_LIMIT - 1] + "…"
