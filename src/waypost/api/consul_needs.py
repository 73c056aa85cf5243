"""What the Consul API's routes need under ACLs (api/access.py), as Consul
checks them: the names read from answers (for filters) and from bodies or
the catalog (for writes). `ConsulApi.routes` declares them per route.
"""

from __future__ import annotations

from typing import Any, Final

from ..catalog.aclrules import READ, WRITE
from ..catalog.authz import Authorizer
from ..catalog.definitions import (
    CatalogDeregistration,
    CatalogRegistration,
    CheckRegistration,
    ServiceRegistration,
)
from . import access
from .access import Perm, values


def service_of(s: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return (("service", s["Service"]),)


def member_node(m: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return (("node", m["Name"]),)


def node_of(n: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return (("node", n["Node"]),)


def catalog_row(row: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return (("node", row["Node"]), ("service", row["ServiceName"]))


def health_row(row: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return (("node", row["Node"]["Node"]), ("service", row["Service"]["Service"]))


def node_services(authz: Authorizer, answer: Any) -> tuple[Any, bool]:
    """`/v1/catalog/node/<n>`: nothing without node:read, then the readable services."""
    if answer is None:
        return None, False
    if not authz.allowed("node", answer["Node"]["Node"], READ):
        return None, True
    services, dropped = values(service_of)(authz, answer["Services"])
    return {**answer, "Services": services}, dropped


def own(ctx: access.Ctx) -> str:
    return ctx.node


async def _service_register(ctx: access.Ctx) -> tuple[Perm, ...]:
    reg = await ctx.body(ServiceRegistration)
    name = reg.name or reg.service
    return (("service", name, WRITE),) if name else ()  # no name: the handler's 400


async def _check_register(ctx: access.Ctx) -> tuple[Perm, ...]:
    reg = await ctx.body(CheckRegistration)
    if reg.serviceid:
        return access.service_needs(ctx.state, ctx.node, reg.serviceid, WRITE)
    return (("node", ctx.node, WRITE),)


async def _catalog_register(ctx: access.Ctx) -> list[Perm]:
    reg = await ctx.body(CatalogRegistration)
    perms: list[Perm] = [("node", reg.node, WRITE)]
    service = reg.service
    if service is not None:
        perms.append(("service", service.name or service.service, WRITE))
    for check in reg.all_checks():
        if service is not None and check.serviceid in ("", service.id or service.name):
            continue  # the node's, or the service's just named
        if check.serviceid:
            perms += access.service_needs(ctx.state, reg.node, check.serviceid, WRITE)
    return perms


async def _catalog_deregister(ctx: access.Ctx) -> tuple[Perm, ...]:
    reg = await ctx.body(CatalogDeregistration)
    if reg.serviceid:
        return access.service_needs(ctx.state, reg.node, reg.serviceid, WRITE)
    if reg.checkid:
        return access.check_needs(ctx.state, reg.node, reg.checkid, WRITE)
    return (("node", reg.node, WRITE),)


register_needs: Final = access.custom(_service_register)
check_register_needs: Final = access.custom(_check_register)
catalog_register_needs: Final = access.custom(_catalog_register)
catalog_deregister_needs: Final = access.custom(_catalog_deregister)
