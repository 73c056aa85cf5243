"""Runs the checks of the instances this agent owns, and reaps the dead.

One asyncio task per interval check (first run staggered at random inside the
interval, as Consul does, so a restart does not probe everything at once), one
per TTL check (sleeping until its deadline), and one reaper for
DeregisterCriticalServiceAfter. Results pass through flap thresholds, then
go to the catalog, which persists status changes at once; a change of output
alone is shown here at once and stored at most once per `output_interval`
(Consul's `check_update_interval`), so a check whose output carries a
timestamp does not cost a durable write and a wake-up of every watcher per
run. Time comes from an injectable clock, so tests drive TTLs and thresholds
without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

from .._clock import Clock, SystemClock
from .._duration import format as go_duration
from .._exceptions import AccessDenied, NotFoundError, StorageError, ValidationError
from .._logfmt import quote
from ..catalog import Catalog, Check, CheckDefinition, codec, writes
from ..catalog.aclidentity import Identity, authorized, blocked_message, node_write
from ..catalog.model import status_rank
from ..catalog.watch import node_topic
from ..storage import Entry
from .probes import PROBES, Probe
from .thresholds import Thresholds

log = logging.getLogger("waypost.health")

TTL_EXPIRED = "TTL expired"
RETRY_START = 0.1  # first retry of a result the store refused, in seconds
RETRY_MAX = 0.5  # so every agent sees the result within about a second of the store's return
OUTPUT_INTERVAL = 300.0  # Consul's check_update_interval default (5m)
FLUSH_TIMEOUT = 5.0  # seconds a graceful stop gives the outputs not stored yet
RESTART_START = 1.0  # a check's task that died of a bug starts again after this,
RESTART_MAX = 60.0  # doubling at each death of the same check up to this


class HealthRunner:
    def __init__(
        self,
        catalog: Catalog,
        node: str,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        enable_scripts: bool = False,
        reap_interval: float = 1.0,
        probes: Mapping[str, Probe] | None = None,
        output_interval: float = OUTPUT_INTERVAL,
        identity: Identity | None = None,
    ) -> None:
        self.catalog = catalog
        # Who the reaper deregisters as, with ACLs on (Consul: the agent token).
        self.identity = identity
        self._reap_blocked: set[str] = set()  # services ACLs kept it from reaping, logged once
        self.node = node
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self.enable_scripts = enable_scripts
        self.reap_interval = reap_interval
        self.probes = probes or PROBES
        self.output_interval = output_interval  # 0: every change of output is stored at once
        self._tasks: dict[str, tuple[CheckDefinition, asyncio.Task[None]]] = {}
        self._ttl_deadline: dict[str, float] = {}
        self._critical_since: dict[str, float] = {}
        self._reapable: dict[str, float] = {}  # check ID -> its DeregisterCriticalServiceAfter
        self._unstored: set[str] = set()  # checks whose last result the store refused
        self._output_due: dict[str, asyncio.Task[None]] = {}  # output shown, not yet stored
        self._beat_retry: dict[str, asyncio.Task[None]] = {}  # refused heartbeats, retried
        self._restarts: dict[str, asyncio.Task[None]] = {}  # tasks that died, started again
        self._deaths: dict[str, int] = {}  # per check, how many times its task died
        self._reaper: asyncio.Task[None] | None = None
        self._prefix = codec.check_key(node, "")  # c/<node>/: the keys of this node's checks
        self.runs = 0
        self.unstored = 0  # results the store refused (each retried until stored)
        self._stopped = False

    async def start(self) -> None:
        """Resume every check this agent owns (after a restart too), follow the
        catalog from now on, and start the reaper."""
        self.refresh(self.catalog.state.check_ids_on(self.node))
        self.catalog.subscribe(self._follow)
        self._reaper = asyncio.create_task(self._reap_forever(), name="waypost-reaper")

    def _follow(self, topics: object, entries: list[Entry]) -> None:
        """Whoever changed a check of this node (an API call, a rename, a
        re-list), its task starts, restarts or stops to match."""
        if self._stopped:
            return  # commits still landing during shutdown start nothing
        changed = [codec.split_key(e.key)[1][1] for e in entries if e.key.startswith(self._prefix)]
        if changed:
            self.refresh(changed)

    async def stop(self) -> None:
        """Stop every check; the outputs shown but not stored yet are stored
        first (a restart finds them), within FLUSH_TIMEOUT."""
        self._stopped = True
        unstored_outputs = list(self._output_due)
        tasks = [task for _, task in self._tasks.values()]
        tasks += [*self._output_due.values(), *self._beat_retry.values(), *self._restarts.values()]
        if self._reaper is not None:
            tasks.append(self._reaper)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._output_due.clear()
        self._beat_retry.clear()
        await self._flush_outputs(unstored_outputs)

    async def _flush_outputs(self, check_ids: list[str]) -> None:
        if not check_ids:
            return
        stores = (self.catalog.store_output(self.node, check_id) for check_id in check_ids)
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*stores, return_exceptions=True), FLUSH_TIMEOUT
            )
        except TimeoutError:
            log.warning("stopping: %d check outputs not stored in time", len(check_ids))
            return
        failed = [r for r in results if isinstance(r, StorageError)]
        if failed:
            log.warning("stopping: %d check outputs not stored (%s)", len(failed), failed[0])

    def refresh(self, check_ids: Iterable[str]) -> None:
        """Start, restart or stop the named checks to match the catalog."""
        for check_id in check_ids:
            # As stored: a held check must not restart from the critical it is shown as.
            check = self.catalog.state.stored_check(self.node, check_id)
            defn = check.definition if check is not None else None
            running = self._tasks.get(check_id)
            if running is not None and running[0] == defn and not running[1].done():
                continue
            self._cancel(check_id)
            if check is None:
                self._deaths.pop(check_id, None)  # gone: a new check of that ID starts afresh
            elif defn is not None and defn.kind:
                self._launch(check, defn)

    def _cancel(self, check_id: str) -> None:
        running = self._tasks.pop(check_id, None)
        if running is not None:
            running[1].cancel()
        self._ttl_deadline.pop(check_id, None)
        self._critical_since.pop(check_id, None)
        self._reapable.pop(check_id, None)
        self._output_stored(check_id)
        self._drop_retry(check_id)
        if check_id in self._unstored:  # its retry loop is gone with its task
            self._unstored.discard(check_id)
            self.catalog.release(self.node, check_id)

    def _launch(self, check: Check, defn: CheckDefinition) -> None:
        log.debug(
            "check started: check=%s service=%s type=%s every=%s status=%s",
            check.check_id,
            check.service_id or "-",
            defn.kind,
            go_duration(defn.ttl or defn.interval),
            check.status,
        )
        if defn.deregister_critical_after and check.service_id:
            self._reapable[check.check_id] = defn.deregister_critical_after
        if defn.ttl:
            self._ttl_deadline[check.check_id] = self.clock.now() + defn.ttl
            coro = self._run_ttl(check.check_id, defn.ttl)
        elif defn.alias_service:
            coro = self._run_alias(check.check_id, defn.alias_service)
        else:
            coro = self._run_interval(check, defn)
        self._spawn(check.check_id, defn, coro)

    def _spawn(self, check_id: str, defn: CheckDefinition, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro, name=check_id)
        task.add_done_callback(self._ended)
        self._tasks[check_id] = (defn, task)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A check's task that died of an exception (a bug: results, probes'
        failures and the store's refusals are all handled inside it) is logged
        and started again after a growing delay: one bug must not stop a
        check for good (a TTL check that never expires would fail open)."""
        if task.cancelled() or task.exception() is None or self._stopped:
            return  # cancelled, or ended as designed (a check gone, a TTL expired)
        check_id = task.get_name()
        deaths = self._deaths[check_id] = self._deaths.get(check_id, 0) + 1
        delay = min(RESTART_START * 2 ** (deaths - 1), RESTART_MAX)
        log.error(
            "check task failed, restarting: check=%s in=%s",
            check_id,
            go_duration(delay),
            exc_info=task.exception(),
        )
        self._restarts[check_id] = asyncio.create_task(self._restart(check_id, task, delay))

    async def _restart(self, check_id: str, dead: asyncio.Task[None], delay: float) -> None:
        await self.clock.sleep(delay)
        self._restarts.pop(check_id, None)
        running = self._tasks.get(check_id)
        if running is not None and running[1] is dead:  # nothing replaced it meanwhile
            self.refresh([check_id])

    # -- interval checks ---------------------------------------------------

    async def _run_interval(self, check: Check, defn: CheckDefinition) -> None:
        probe = self.probes[defn.kind]
        thresholds = Thresholds(
            check.status,
            defn.success_before_passing,
            defn.failures_before_warning,
            defn.failures_before_critical,
        )
        await self.clock.sleep(self.rng.uniform(0, defn.interval))
        first = True
        while True:
            if defn.kind == "script" and not self.enable_scripts:
                status, output = "critical", "script checks are disabled on this agent"
            else:
                try:
                    status, output = await probe(defn)
                except Exception as exc:  # a probe's bug: the check fails closed, and runs on
                    log.error("check probe failed: check=%s", check.check_id, exc_info=exc)
                    status, output = "critical", f"the {defn.kind} probe failed: {exc!r}"
            self.runs += 1
            if status != "passing" and log.isEnabledFor(logging.DEBUG):
                log.debug("check failed: check=%s output=%s", check.check_id, quote(output))
            # The first result is logged even if the status stays (a check starts
            # critical): a registration whose check never passes says why at once.
            reported = thresholds.feed(status)
            if not await self._report(check.check_id, reported, output, announce=first):
                return
            first = False
            await self.clock.sleep(defn.interval)

    async def _report(
        self,
        check_id: str,
        status: str,
        output: str,
        superseded: Callable[[], bool] = lambda: False,
        announce: bool = False,
    ) -> bool:
        """Hand a result to the catalog and retry until it is stored (or
        `superseded()`); False once the check no longer exists.

        Health never fails open: while the store refuses the result (disk
        full, etcd unreachable), this agent shows the check critical (a hold)
        so its own HTTP, DNS and UI answers stop sending traffic there; the
        hold goes once the result is stored.
        """
        delay = RETRY_START
        before, shown = self._shown(check_id)
        while True:
            try:
                await self.catalog.update_check(self.node, check_id, status, output)
            except NotFoundError:
                self.catalog.release(self.node, check_id)
                return False
            except StorageError as exc:
                self._refused(check_id, status, output, exc)
                await self.clock.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                if superseded():
                    return True  # the newer result (a heartbeat) decides about the hold
                continue
            self._stored(check_id, before, status, output != shown)
            self._transition(check_id, before, status, output, first=announce)
            return True

    def _shown(self, check_id: str) -> tuple[str | None, str | None]:
        """The status as stored and the output as shown (maybe not stored yet)."""
        check = self.catalog.state.stored_check(self.node, check_id)
        return (check.status, check.output) if check is not None else (None, None)

    def _transition(
        self, check_id: str, before: str | None, status: str, output: str, first: bool = False
    ) -> None:
        """One line per status change, with the output that explains it (Consul's
        "Check is now critical"): the answer to "why is my service not in DNS?".
        A check's `first` result is logged whatever it is."""
        if before == status and not first:
            return
        check = self.catalog.state.check(self.node, check_id)
        level = logging.INFO if status == "passing" else logging.WARNING
        log.log(
            level,
            "check is %s%s: check=%s service=%s was=%s output=%s",
            "now " if before != status else "still ",
            status,
            check_id,
            check.service_id if check is not None and check.service_id else "-",
            before or "-",
            quote(output),
        )

    def _stored(self, check_id: str, before: str | None, status: str, new_output: bool) -> None:
        """A result is in the catalog: a new status was stored with its output;
        a new output alone is stored later (`_store_output_later`)."""
        if status != before:
            self._output_stored(check_id)
        elif new_output and check_id not in self._output_due:
            coro = self._store_output_later(check_id)
            self._output_due[check_id] = asyncio.create_task(coro, name=f"{check_id} output")
        if check_id in self._unstored:
            log.warning("check %s: status %s is stored now", check_id, status)
            self._unstored.discard(check_id)
        self.catalog.release(self.node, check_id)

    def _refused(self, check_id: str, status: str, output: str, exc: StorageError) -> None:
        if check_id not in self._unstored:
            self._unstored.add(check_id)
            self.unstored += 1
            log.warning(
                "check %s: could not store status %s (%s); shown critical until a result is stored",
                check_id,
                status,
                exc,
            )
        note = f"{status}: {output}" if output else status
        self.catalog.hold(self.node, check_id, f"{note} (not stored yet: {exc}; shown as critical)")

    def _output_stored(self, check_id: str) -> None:
        due = self._output_due.pop(check_id, None)
        if due is not None and due is not asyncio.current_task():
            due.cancel()

    async def _store_output_later(self, check_id: str) -> None:
        """Store the output the check shows after `output_interval`, whatever
        it is by then: one write however often it changed meanwhile."""
        if self.output_interval > 0:
            await self.clock.sleep(self.output_interval)
        self._output_due.pop(check_id, None)
        try:
            await self.catalog.store_output(self.node, check_id)
        except NotFoundError:
            return
        except StorageError as exc:  # health is unaffected: only the output waits
            log.warning(
                "check %s: could not store its output (%s); kept in memory, tried again in %s",
                check_id,
                exc,
                go_duration(self.output_interval),
            )
            if check_id not in self._output_due:
                coro = self._store_output_later(check_id)
                self._output_due[check_id] = asyncio.create_task(coro, name=f"{check_id} output")

    # -- alias checks ------------------------------------------------------

    async def _run_alias(self, check_id: str, target: str) -> None:
        """Mirror the worst status of instance `target`'s checks (a sidecar's
        "is the app behind me healthy?"). Woken by the catalog's watch on this
        node, never polled: the sidecar follows its app within the push."""
        topics = (node_topic(self.node),)
        while True:
            seen = self.catalog.state.index_of(topics)  # before reading: no change is missed
            status, output = self._alias_status(check_id, target)
            if not await self._report(check_id, status, output):
                return
            if self.catalog.watches.closed:
                return  # shutting down: block() would return at once, forever
            await self.catalog.block(topics, seen, 3600.0)

    def _alias_status(self, check_id: str, target: str) -> tuple[str, str]:
        state = self.catalog.state
        service = state.instance(self.node, target)
        if service is None:
            return "critical", f'Service "{target}" could not be found on node "{self.node}"'
        others = [c for c in state.checks_of(service) if c.check_id != check_id]
        worst = max((c.status for c in others), key=status_rank, default="passing")
        if worst == "passing":
            return "passing", "All checks passing."
        failing = sorted(c.check_id for c in others if c.status == worst)
        return worst, f"Aliased checks {worst}: {', '.join(failing)}"

    # -- TTL checks --------------------------------------------------------

    async def _run_ttl(self, check_id: str, ttl: float) -> None:
        while True:
            remaining = self._ttl_deadline.get(check_id, 0.0) - self.clock.now()
            if remaining > 0:
                await self.clock.sleep(remaining)
                continue
            log.warning("check TTL expired: check=%s ttl=%s", check_id, go_duration(ttl))
            await self._report(check_id, "critical", TTL_EXPIRED, lambda: self._ttl_moved(check_id))
            if self._ttl_moved(check_id):
                continue  # a heartbeat came while the expiry was being stored
            return  # the next heartbeat starts a new timer

    def _ttl_moved(self, check_id: str) -> bool:
        return self._ttl_deadline.get(check_id, 0.0) > self.clock.now()

    async def heartbeat(self, check_id: str, status: str, output: str) -> None:
        """A TTL check's pass/warn/fail/update: record it and restart the timer.

        Raises:
            NotFoundError: no such check on this agent.
            ValidationError: the check is not a TTL check.
        """
        check = self.catalog.state.check(self.node, check_id)
        if check is None:
            raise NotFoundError(f'Unknown check ID "{check_id}"')
        if check.definition is None or not check.definition.ttl:
            raise ValidationError(f'CheckID "{check_id}" does not have associated TTL')
        # The deadline moves first: the TTL task must not expire the check while
        # this heartbeat's own write is being committed.
        self._ttl_deadline[check_id] = self.clock.now() + check.definition.ttl
        running = self._tasks.get(check_id)
        if running is None or running[1].done():  # the timer runs whatever the store does
            self._spawn(check_id, check.definition, self._run_ttl(check_id, check.definition.ttl))
        self._drop_retry(check_id)  # an older refused heartbeat is superseded
        before, shown = self._shown(check_id)
        try:
            await self.catalog.update_check(self.node, check_id, status, output)
        except StorageError as exc:
            self._refused(check_id, status, output, exc)  # until a result is stored
            self._drop_retry(check_id)  # a concurrent heartbeat's retry: this one is newer
            retry = asyncio.create_task(self._retry_beat(check_id, status, output))
            self._beat_retry[check_id] = retry
            raise
        self._stored(check_id, before, status, output != shown)
        self._transition(check_id, before, status, output)

    def _retry_done(self, check_id: str) -> None:
        """The running retry is over: forget it, unless a newer one replaced it."""
        if self._beat_retry.get(check_id) is asyncio.current_task():
            del self._beat_retry[check_id]

    def _drop_retry(self, check_id: str) -> None:
        retry = self._beat_retry.pop(check_id, None)
        if retry is not None and retry is not asyncio.current_task():
            retry.cancel()

    async def _retry_beat(self, check_id: str, status: str, output: str) -> None:
        """Store a heartbeat the store refused, as the agent would any other
        result: until it is stored, a newer heartbeat comes, or the TTL it
        renewed runs out (then the TTL task's expiry is the result to store)."""
        delay = RETRY_START
        while True:
            await self.clock.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
            if self._ttl_deadline.get(check_id, 0.0) <= self.clock.now():
                self._retry_done(check_id)
                return  # the TTL ran out: its expiry is the result now
            before, shown = self._shown(check_id)
            try:
                await self.catalog.update_check(self.node, check_id, status, output)
            except NotFoundError:
                self._retry_done(check_id)
                self.catalog.release(self.node, check_id)
                return
            except StorageError as exc:
                self._refused(check_id, status, output, exc)
                continue
            self._retry_done(check_id)
            self._stored(check_id, before, status, output != shown)
            self._transition(check_id, before, status, output)
            return

    # -- reaping -----------------------------------------------------------

    async def _reap_forever(self) -> None:
        while True:
            await self.clock.sleep(self.reap_interval)
            with contextlib.suppress(StorageError):
                await self.reap()

    async def reap(self) -> list[str]:
        """Deregister instances critical for longer than their
        DeregisterCriticalServiceAfter; return the removed service IDs."""
        now = self.clock.now()
        doomed: dict[str, tuple[str, float]] = {}
        for check_id, after in list(self._reapable.items()):
            # Judged on what is stored, never on a hold: a result that could
            # not be stored says nothing about how long the instance was critical.
            check = self.catalog.state.stored_check(self.node, check_id)
            if check is None or check.status != "critical" or check_id in self._unstored:
                self._critical_since.pop(check_id, None)
                continue
            since = self._critical_since.setdefault(check_id, now)
            if now - since >= after:
                doomed.setdefault(check.service_id, (check_id, after))
        self._reap_blocked &= doomed.keys()
        removed = []
        for service_id, (check_id, after) in sorted(doomed.items()):
            if service_id not in self._reap_blocked:  # a refused one was said once already
                log.warning(
                    "reaping service: id=%s check=%s critical for %s "
                    "(DeregisterCriticalServiceAfter %s)",
                    service_id,
                    check_id,
                    go_duration(round(now - self._critical_since.get(check_id, now))),
                    go_duration(after),
                )
            check_ids = self.catalog.state.check_ids_of(self.node, service_id)
            if await self._deregister(service_id):
                removed.append(service_id)
                for owned in check_ids:
                    self._cancel(owned)
        return removed

    async def _deregister(self, service_id: str) -> bool:
        """Deregister a reaped instance as this agent's identity; False if
        ACLs refused (logged once per instance: the reaper tries every pass)."""
        perms = node_write(self.node)
        try:
            with contextlib.suppress(NotFoundError):
                await self.catalog.write(
                    authorized, self.identity, perms, writes.deregister, self.node, service_id
                )
        except AccessDenied as exc:
            if service_id not in self._reap_blocked and self.identity is not None:
                what = f"Service {service_id} deregistration"
                log.warning(blocked_message(what, self.node, self.identity, exc))
            self._reap_blocked.add(service_id)
            return False
        self._reap_blocked.discard(service_id)
        return True

    def statistics(self) -> dict[str, float]:
        return {
            "running_checks": len(self._tasks),
            "check_runs": self.runs,
            "unstored_results": self.unstored,
            "results_waiting_for_store": len(self._unstored),
        }
