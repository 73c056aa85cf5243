"""In-process building blocks: a catalog on a chosen store, records with defaults."""

from __future__ import annotations

from waypost.catalog import Catalog, Check, CheckDefinition, Node, Service
from waypost.storage import open_storage


async def open_catalog(url: str = "memory://") -> Catalog:
    catalog = Catalog(open_storage(url))
    await catalog.open()
    return catalog


def node(name: str = "n1") -> Node:
    return Node(name=name, address="127.0.0.1")


def service(sid: str, name: str = "web", node_name: str = "n1", **kw: object) -> Service:
    return Service(node=node_name, id=sid, name=name, **kw)  # type: ignore[arg-type]


def check(
    cid: str,
    sid: str = "",
    name: str = "web",
    node_name: str = "n1",
    status: str = "passing",
    definition: CheckDefinition | None = None,
) -> Check:
    return Check(
        node=node_name,
        check_id=cid,
        name=cid,
        status=status,  # type: ignore[arg-type]
        service_id=sid,
        service_name=name if sid else "",
        definition=definition,
        type=definition.kind if definition else "",
    )
