"""What this agent owns: its node, and the instances and checks registered with it.

Each operation is one plan of `catalog/writes.py` run through the catalog's
one write path; the health runner follows the catalog by itself (a check
that appears on this node starts, one that goes stops), so nothing here
tells it. Besides the API's operations, the agent keeps what it owns of its
node true (anti-entropy): at start-up it adopts the instances of its earlier
names (same node ID), forgets agents that cannot be alive on a store only it
opens, and writes its node, serfHealth and liveness; every few seconds it
puts back whatever of those someone changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from .._exceptions import AccessDenied, StorageError, ValidationError
from .._logfmt import quote
from ..catalog import Catalog, Check, Node, sidecar, writes
from ..catalog.aclidentity import Identity, blocked_message, node_write
from ..catalog.definitions import CheckRegistration, ServiceRegistration, validate_status
from ..catalog.model import NODE_MAINT_CHECK_ID, SERF_CHECK_ID, SERVICE_MAINT_PREFIX
from ..catalog.state import ALIVE_OUTPUT
from ..catalog.txn import Txn
from ..health import HealthRunner
from . import logs

log = logging.getLogger("waypost.agent")
T = TypeVar("T")

ANTI_ENTROPY_INTERVAL = 2.0  # seconds between checks of what this agent owns

DEFAULT_REASON = (
    "Maintenance mode is enabled for this {}, but no reason was provided. "
    "This is a default message."
)


class LocalAgent:
    def __init__(
        self,
        catalog: Catalog,
        runner: HealthRunner,
        node: Node,
        enable_scripts: bool,
        sidecar_ports: tuple[int, int] = sidecar.DEFAULT_PORTS,
        identity: Identity | None = None,
    ) -> None:
        self.catalog = catalog
        self.identity = identity  # who its own node's writes are, with ACLs on
        self.blocked = ""  # why ACLs refused the last write of its node ("": they did not)
        self.sidecar_ports = sidecar_ports
        self.runner = runner
        self.node = node
        self.enable_scripts = enable_scripts
        self.serf = Check(
            node=node.name,
            check_id=SERF_CHECK_ID,
            name="Serf Health Status",
            status="passing",
            output=ALIVE_OUTPUT,
        )
        self._task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def datacenter(self) -> str:
        return self.node.datacenter

    # -- what this agent owns of its node --------------------------------

    async def join(self) -> None:
        """Take over this agent's node at start-up, then keep it (anti-entropy)."""
        renamed = await self._write_node(self._take_over)
        for old in renamed:
            log.warning(
                "node %s has this agent's node ID: its services moved to %s", old, self.name
            )
        self._task = asyncio.create_task(self._keep_forever(), name="waypost-anti-entropy")

    def _take_over(self, txn: Txn) -> list[str]:
        shared = self.catalog.storage.shared
        if not shared:
            writes.forget_other_agents(txn, self.name)
        renamed = writes.adopt(txn, self.node, others_alive=shared)
        writes.join(txn, self.node, self.serf)
        return renamed

    async def _keep_forever(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(ANTI_ENTROPY_INTERVAL)
            try:
                await self.keep()
            except StorageError as exc:
                log.warning("anti-entropy: could not restore this agent's node: error=%s", exc)
                failing = True
                continue
            if failing:
                log.warning("anti-entropy: the store takes writes again: node=%s", self.name)
                failing = False

    async def keep(self) -> None:
        """Put back this agent's node record, serfHealth and liveness where they differ."""
        await self._write_node(writes.join, self.node, self.serf, starting=False)

    async def _write_node(self, plan: Callable[..., T], *args: Any, **kw: Any) -> T:
        """A write of this agent's node record, serfHealth, liveness and
        `consul` service: what Consul's leader registers for every live member
        whatever the member's agent token, so it is never refused here either
        (a node missing because of a token would take its sessions and
        instances with it). The agent token is checked all the same, to say
        once, as Consul's "Node info update blocked by ACLs" does, that it
        lacks node:write, which this agent's reaping needs."""
        self._check_identity()
        result: T = await self.catalog.write(plan, *args, **kw)
        return result

    def _check_identity(self) -> None:
        """Log when the agent token stops or starts having node:write on this
        node (or the reason changes), not at every anti-entropy pass."""
        if self.identity is None:
            return
        try:
            self.identity.require(node_write(self.name))
        except AccessDenied as exc:
            if self.blocked != str(exc):
                message = blocked_message("Node info update", self.name, self.identity, exc)
                log.warning(
                    "%s (the node, its serfHealth and liveness are kept all the same, as "
                    "Consul's servers keep every live member's; reaping waits for the token)",
                    message,
                )
            self.blocked = str(exc)
            return
        if self.blocked:
            log.info("Node info update no longer blocked by ACLs: node=%s", self.name)
            self.blocked = ""

    async def leave(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- the API's operations ----------------------------------------------

    async def register_service(self, reg: ServiceRegistration, replace_checks: bool) -> None:
        await self.catalog.write(
            writes.register, self.name, reg, replace_checks, self.enable_scripts, self.sidecar_ports
        )
        if not log.isEnabledFor(logging.INFO):
            return  # the line's arguments read the state: not for a line nobody sees
        service_id = reg.id or reg.name or reg.service
        logs.info(  # Consul's agent logs one INFO line per registration too ("Synced service")
            log,
            "registered service: id=%s name=%s address=%s:%d checks=%s",
            service_id,
            reg.name or reg.service,
            reg.address or self.node.address,
            reg.port,
            self._describe_checks(service_id) or "none",
        )

    def _describe_checks(self, service_id: str) -> str:
        """`service:web-1(http, critical)`: what an operator needs to see at registration."""
        described = []
        for check_id in self.catalog.state.check_ids_of(self.name, service_id):
            check = self.catalog.state.check(self.name, check_id)
            if check is not None:
                described.append(f"{check_id}({check.type or 'manual'}, {check.status})")
        return ",".join(described)

    async def deregister_service(self, service_id: str) -> None:
        await self.catalog.write(writes.deregister, self.name, service_id)
        logs.info(log, "deregistered service: id=%s", service_id)

    async def register_check(self, reg: CheckRegistration) -> None:
        await self.catalog.write(writes.register_check, self.name, reg, self.enable_scripts)
        check_id = reg.checkid or reg.id or reg.name
        check = self.catalog.state.check(self.name, check_id)
        log.info(
            "registered check: check=%s service=%s type=%s status=%s",
            check_id,
            reg.serviceid or "-",
            check.type if check else "?",
            check.status if check else "?",
        )

    async def deregister_check(self, check_id: str) -> None:
        await self.catalog.write(writes.deregister_check, self.name, check_id)
        log.info("deregistered check: check=%s", check_id)

    async def heartbeat(self, check_id: str, status: str, output: str) -> None:
        validate_status(status, "Invalid check status")
        await self.runner.heartbeat(check_id, status, output)

    async def service_maintenance(self, service_id: str, enable: bool, reason: str) -> None:
        if not service_id:
            raise ValidationError("Missing service ID")
        check = self._maintenance_check(
            SERVICE_MAINT_PREFIX + service_id, "Service Maintenance Mode", reason, "service"
        )
        check = msgspec.structs.replace(check, service_id=service_id)
        await self.catalog.write(writes.service_maintenance, check, enable)
        if enable:
            log.info("service maintenance on: id=%s reason=%s", service_id, quote(check.notes))
        else:
            log.info("service maintenance off: id=%s", service_id)

    async def node_maintenance(self, enable: bool, reason: str) -> None:
        check = self._maintenance_check(
            NODE_MAINT_CHECK_ID, "Node Maintenance Mode", reason, "node"
        )
        await self.catalog.write(writes.node_maintenance, check, enable)
        if enable:
            log.info("node maintenance on: node=%s reason=%s", self.name, quote(check.notes))
        else:
            log.info("node maintenance off: node=%s", self.name)

    def _maintenance_check(self, check_id: str, name: str, reason: str, what: str) -> Check:
        """Maintenance is a critical check of its own: present while enabled."""
        return Check(
            node=self.name,
            check_id=check_id,
            name=name,
            status="critical",
            notes=reason or DEFAULT_REASON.format(what),
            type="maintenance",
        )
