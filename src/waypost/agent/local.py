"""What this agent owns: the instances and checks registered with it.

The HTTP handlers call these operations with validated bodies; each one turns
into a single catalog commit (all or nothing) and tells the health runner
which checks to start or stop.
"""

from __future__ import annotations

from .._exceptions import NotFoundError, ValidationError
from ..api import decode
from ..catalog import Catalog, Check, Node, Service, codec
from ..catalog.model import NODE_MAINT_CHECK_ID, SERF_CHECK_ID, SERVICE_MAINT_PREFIX
from ..health import HealthRunner
from ..storage import Entry

DEFAULT_REASON = (
    "Maintenance mode is enabled for this {}, but no reason was provided. "
    "This is a default message."
)


class LocalAgent:
    def __init__(
        self, catalog: Catalog, runner: HealthRunner, node: Node, enable_scripts: bool
    ) -> None:
        self.catalog = catalog
        self.runner = runner
        self.node = node
        self.enable_scripts = enable_scripts

    @property
    def name(self) -> str:
        return self.node.name

    async def join(self) -> None:
        """Write this agent's node, its liveness key and its serfHealth check."""
        serf = Check(
            node=self.name,
            check_id=SERF_CHECK_ID,
            name="Serf Health Status",
            status="passing",
            output="Agent alive and reachable",
        )
        live = Entry(codec.live_key(self.name), b"", ephemeral=True)
        await self.catalog.commit([codec.put(self.node), codec.put(serf), live])

    def _service_checks(self, body: decode.ServiceBody, service: Service) -> list[Check]:
        bodies = body.all_checks()
        checks = []
        for n, check_body in enumerate(bodies, start=1):
            default_id = f"service:{service.id}" + (f":{n}" if len(bodies) > 1 else "")
            checks.append(
                self._check(
                    check_body,
                    check_body.checkid or check_body.id or default_id,
                    check_body.name or f"Service '{service.name}' check",
                    service,
                )
            )
        return checks

    def _check(
        self, body: decode.CheckBody, check_id: str, name: str, service: Service | None
    ) -> Check:
        owner = (service.id, service.name, service.tags) if service else None
        check = decode.build_check(body, self.name, check_id, name, owner)
        if check.type == "script" and not self.enable_scripts:
            raise ValidationError(
                "Scripts are disabled on this agent; "
                "start it with --enable-script-checks to allow them"
            )
        return check

    async def register_service(self, body: decode.ServiceBody, replace_checks: bool) -> None:
        service = decode.build_service(body, self.name)
        checks = self._service_checks(body, service)
        if len({c.check_id for c in checks}) != len(checks):
            raise ValidationError("Two checks of the service have the same CheckID")
        before = set(self.catalog.state.service_checks.get((self.name, service.id), {}))
        given = {c.check_id for c, b in zip(checks, body.all_checks(), strict=True) if b.status}
        await self.catalog.register_service(service, checks, replace_checks, given)
        self.runner.refresh(before | {c.check_id for c in checks})

    async def deregister_service(self, service_id: str) -> None:
        if not service_id:
            raise ValidationError("Missing service ID")
        check_ids = list(self.catalog.state.service_checks.get((self.name, service_id), {}))
        await self.catalog.deregister_service(self.name, service_id)
        self.runner.refresh(check_ids)

    async def register_check(self, body: decode.CheckBody) -> None:
        service = None
        if body.serviceid:
            service = self.catalog.state.services.get((self.name, body.serviceid))
            if service is None:
                raise ValidationError(f'ServiceID "{body.serviceid}" does not exist')
        check = self._check(body, body.checkid or body.id or body.name, body.name, service)
        old = self.catalog.state.checks.get((self.name, check.check_id))
        if old is not None and body.status == "":
            check = Catalog._keep_status(check, old)
        await self.catalog.put(check)
        self.runner.refresh([check.check_id])

    async def deregister_check(self, check_id: str) -> None:
        await self.catalog.deregister_check(self.name, check_id)
        self.runner.refresh([check_id])

    async def heartbeat(self, check_id: str, status: str, output: str) -> None:
        await self.runner.heartbeat(check_id, status, output)

    async def service_maintenance(self, service_id: str, enable: bool, reason: str) -> None:
        service = self.catalog.state.services.get((self.name, service_id))
        if service is None:
            raise NotFoundError(f'Unknown service ID "{service_id}"')
        check = Check(
            node=self.name,
            check_id=SERVICE_MAINT_PREFIX + service_id,
            name="Service Maintenance Mode",
            status="critical",
            notes=reason or DEFAULT_REASON.format("service"),
            service_id=service.id,
            service_name=service.name,
            service_tags=service.tags,
            type="maintenance",
        )
        await self._maintenance(check, enable)

    async def node_maintenance(self, enable: bool, reason: str) -> None:
        check = Check(
            node=self.name,
            check_id=NODE_MAINT_CHECK_ID,
            name="Node Maintenance Mode",
            status="critical",
            notes=reason or DEFAULT_REASON.format("node"),
            type="maintenance",
        )
        await self._maintenance(check, enable)

    async def _maintenance(self, check: Check, enable: bool) -> None:
        """Maintenance is a critical check of its own: present while enabled."""
        if enable:
            await self.catalog.put(check)
        elif (self.name, check.check_id) in self.catalog.state.checks:
            await self.catalog.deregister_check(self.name, check.check_id)
