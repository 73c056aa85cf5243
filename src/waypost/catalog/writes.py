"""Every change to the catalog, as a plan over a Txn.

A plan reads through its `Txn` (which records what it relied on), validates,
and stages entries; `Catalog.write(plan, ...)` commits them and runs the plan
again if a concurrent write changed what it read (see txn.py). Plans must
not do anything else: they can run more than once.

Two families:
- the agent's own node (`register`, `register_check`, `set_status`,
  maintenance, `join`, `adopt`): what one agent owns and runs checks for;
- third-party registration (`catalog_register`, `catalog_deregister`):
  nodes without an agent. A node that belongs to a waypost agent (it has a
  serfHealth check) is refused here: its agent owns it.
"""

from __future__ import annotations

import msgspec

from .._exceptions import ConfigError, NotFoundError, ValidationError
from . import codec, sidecar
from .definitions import (
    CatalogDeregistration,
    CatalogRegistration,
    CheckRegistration,
    ServiceRegistration,
    build_check,
    build_service,
    validate_catalog,
    validate_service,
    validate_status,
)
from .model import CONSUL_SERVER_PORT, CONSUL_SERVICE_ID, SERF_CHECK_ID, Check, Node, Service
from .txn import Txn, same

# -- the agent's own node ----------------------------------------------------


def register(
    txn: Txn,
    node: str,
    reg: ServiceRegistration,
    replace_checks: bool,
    allow_scripts: bool,
    sidecar_ports: tuple[int, int] = sidecar.DEFAULT_PORTS,
) -> None:
    """`/v1/agent/service/register`: an instance and its checks, in one commit,
    with the sidecar its `Connect.SidecarService` asks for (sidecar.py)."""
    validate_service(reg)
    service = build_service(reg, node)
    _register_one(txn, reg, service, replace_checks, allow_scripts)
    if reg.sidecar is not None:
        proxy_id = reg.sidecar.id or sidecar.sidecar_id(service.id)
        port = reg.sidecar.port or sidecar.pick_port(txn.services_on(node), proxy_id, sidecar_ports)
        proxy_reg = sidecar.expand(reg, service.id, port)
        proxy = msgspec.structs.replace(build_service(proxy_reg, node), sidecar_of=service.id)
        _register_one(txn, proxy_reg, proxy, replace_checks, allow_scripts)
    else:
        _drop_sidecar(txn, node, service)  # registered again without one: it goes


def _register_one(
    txn: Txn, reg: ServiceRegistration, service: Service, replace: bool, allow_scripts: bool
) -> None:
    if not (reg.check or reg.checks):  # the common case: no checks to build or keep
        put_instance(txn, service, [], replace)
        return
    checks = _checks_of(reg, service, allow_scripts)
    given = {c.check_id for c, b in zip(checks, reg.all_checks(), strict=True) if b.status}
    put_instance(txn, service, checks, replace, given)


def _drop_sidecar(txn: Txn, node: str, parent: Service) -> None:
    """Remove the sidecar registered with `parent`, if it has one. Looked up
    among the proxies of its name (and of its name before this write), not
    among every instance of the node: registration is the hot path."""
    if not txn.state.proxies_of:  # no proxy anywhere (no mesh): no sidecar to drop
        return
    before = txn.state.instance(node, parent.id)
    names = [parent.name]
    if before is not None and before.name != parent.name:
        names.append(before.name)
    for name in names:
        if name not in txn.state.proxies_of:  # most services have no sidecar anywhere
            continue
        for proxy in txn.state.proxies_for(name):
            mine = proxy.node == node and proxy.sidecar_of == parent.id
            if mine and txn.service(node, proxy.id) is not None:
                deregister(txn, node, proxy.id)


def put_instance(
    txn: Txn,
    service: Service,
    checks: list[Check],
    replace_checks: bool = False,
    status_given: frozenset[str] | set[str] = frozenset(),
) -> None:
    """Store an instance with its checks. Existing checks keep their status
    unless a status was given (re-registering must not flap a healthy
    instance: Consul does the same); with `replace_checks`, the instance's
    checks not named again are removed. The instance and each check are
    written only if they differ from what is stored (txn.py), so an
    identical re-registration commits nothing, as in Consul."""
    named = {c.check_id for c in checks} if checks else set()  # no comprehension for none
    if len(named) != len(checks):
        raise ValidationError("Two checks of the service have the same CheckID")
    old = txn.service(service.node, service.id)
    existing = {c.check_id: c for c in txn.service_checks(old)} if old else {}
    txn.put(service)
    if not checks and not existing:
        return  # the common case: nothing about checks to keep, drop or guard
    for check in checks:
        previous = None if check.check_id in status_given else existing.get(check.check_id)
        _move_from_other_owner(txn, check)
        txn.put(keep_status(check, previous))
    dropped = existing.keys() - named if replace_checks else set()
    for check_id in dropped:
        txn.delete(codec.check_key(service.node, check_id))
    if dropped or not named <= existing.keys():
        txn.touch(service)  # the set of checks changed


def keep_status(check: Check, old: Check | None) -> Check:
    """A re-registered check keeps its last status and output unless one is given."""
    if old is None or check.status != "critical":
        return check
    return msgspec.structs.replace(check, status=old.status, output=old.output)


def deregister(txn: Txn, node: str, service_id: str) -> None:
    """Remove an instance and every check of it. Raises NotFoundError."""
    if not service_id:
        raise ValidationError("Missing service ID")
    service = txn.service(node, service_id)
    if service is None:
        raise NotFoundError(f'Unknown service ID "{service_id}"')
    # The guard's condition covers the set (txn.py): no per-check condition, so
    # a status update racing the removal does not make it run again.
    for check_id in txn.check_ids_of(service):
        txn.delete(codec.check_key(node, check_id))
    txn.delete(codec.service_key(node, service_id))
    txn.delete(codec.guard_key(node, service_id))
    if not service.sidecar_of:
        _drop_sidecar(txn, node, service)  # Consul removes a sidecar with its parent


def register_check(txn: Txn, node: str, reg: CheckRegistration, allow_scripts: bool) -> None:
    """`/v1/agent/check/register`: a node-level check, or one of an instance."""
    if not reg.name:
        raise ValidationError("Missing check name")
    service = None
    if reg.serviceid:
        service = txn.service(node, reg.serviceid)
        if service is None:  # Consul: 404, as for any unknown ID on the agent
            raise NotFoundError(f'ServiceID "{reg.serviceid}" does not exist')
    check = _build(reg, node, reg.checkid or reg.id or reg.name, reg.name, service, allow_scripts)
    old = txn.check(node, check.check_id)
    if not reg.status:
        check = keep_status(check, old)
    put_check(txn, check)


def put_check(txn: Txn, check: Check) -> None:
    """Store a check; the instance it belongs to (and any it leaves) is touched.
    A check stored as it is already is not written (txn.py): no set changed,
    so its instance is not touched either, and nothing is committed."""
    _move_from_other_owner(txn, check)
    owner = None
    if check.service_id:
        owner = txn.service(check.node, check.service_id)
        if owner is None:
            raise ValidationError(f'ServiceID "{check.service_id}" does not exist')
    if txn.put(check) and owner is not None:
        txn.touch(owner)


def deregister_check(txn: Txn, node: str, check_id: str) -> None:
    """Remove one check. Raises NotFoundError."""
    check = txn.check(node, check_id)
    if check is None:
        raise NotFoundError(f'Unknown check ID "{check_id}"')
    txn.delete(codec.check_key(node, check_id))
    if check.service_id and (owner := txn.service(node, check.service_id)) is not None:
        txn.touch(owner)


def set_status(txn: Txn, node: str, check_id: str, status: str, output: str) -> bool:
    """Record a check result; False (nothing staged) when the status is unchanged.

    Raises:
        NotFoundError: the check does not exist (it may have just been removed).
    """
    check = txn.check(node, check_id)
    if check is None:
        raise NotFoundError(f'Unknown check ID "{check_id}"')
    if check.status == status:
        return False
    # A status unlike the one held: nothing to compare (Txn.put's sameness test).
    txn.put(msgspec.structs.replace(check, status=status, output=output), always=True)
    return True


def store_output(txn: Txn, node: str, check_id: str) -> None:
    """Write the output a check shows now while its status stays (the deferred
    sync of `check_update_interval`). Read here, not by the caller: re-run on
    a conflict, the plan must store the newer record (its status and output),
    never an older output over a newer status. Always staged: the state
    already shows this output (State.set_output), so Txn.put would find it
    unchanged; the store does not have it.

    Raises:
        NotFoundError: the check does not exist (it may have just been removed).
    """
    check = txn.check(node, check_id)
    if check is None:
        raise NotFoundError(f'Unknown check ID "{check_id}"')
    txn.put(check, always=True)


def service_maintenance(txn: Txn, check: Check, enable: bool) -> None:
    """Maintenance is a critical check of its own, present while enabled."""
    owner = txn.service(check.node, check.service_id)
    if owner is None:
        raise NotFoundError(f'Unknown service ID "{check.service_id}"')
    service_check = msgspec.structs.replace(check, service_name=owner.name, service_tags=owner.tags)
    node_maintenance(txn, service_check, enable)


def node_maintenance(txn: Txn, check: Check, enable: bool) -> None:
    if enable:
        put_check(txn, check)
    elif txn.check(check.node, check.check_id) is not None:
        deregister_check(txn, check.node, check.check_id)


def join(txn: Txn, node: Node, serf: Check, starting: bool = True) -> None:
    """Write what an agent owns of its node (the record, serfHealth, the
    `consul` service every Consul server registers, its liveness key) where
    the catalog differs: at start-up (the liveness key always: on etcd it
    must hang on this run's lease), and by anti-entropy later."""
    # Asked here, not left to Txn.put: a put it drops still has an etcd store
    # confirm it (Catalog._confirms), a commit per anti-entropy round for nothing.
    if not same(txn.node(node.name), node):
        txn.put(node)
    if not same(txn.check(node.name, SERF_CHECK_ID), serf, ignore=("status", "output")):
        txn.put(serf)
    consul = Service(node=node.name, id=CONSUL_SERVICE_ID, name="consul", port=CONSUL_SERVER_PORT)
    if not same(txn.service(node.name, CONSUL_SERVICE_ID), consul):
        txn.put(consul)
    if starting or not txn.live(node.name):
        txn.stage(codec.live(node.name))


def adopt(txn: Txn, node: Node, others_alive: bool) -> list[str]:
    """Move the instances and checks of nodes with this agent's node ID but
    another name (the agent was renamed) to its node, and drop those nodes.
    Returns the old names.

    With `others_alive` (a shared store), a node with this ID whose agent is
    alive is another agent started from a copy of this data dir: refused,
    as Consul refuses a duplicate node ID, rather than taking its services.

    Raises:
        ConfigError: another live agent has this node ID.
    """
    old_names = [n.name for n in txn.state.nodes.values() if n.id == node.id != ""]
    old_names = [name for name in old_names if name != node.name]
    for name in old_names:
        if others_alive and txn.live(name):
            raise ConfigError(
                f'node "{name}" is alive and has this agent\'s node ID {node.id}: was the data '
                "dir copied from it? Give this agent a data dir of its own (delete its node-id "
                "file to get a new ID)"
            )
    for name in old_names:
        for service in txn.state.services_on(name).values():
            txn.put(msgspec.structs.replace(service, node=node.name))
        for check in txn.state.checks_on_node(name):
            if check.check_id != SERF_CHECK_ID:
                txn.put(msgspec.structs.replace(check, node=node.name))
        deregister_node(txn, name)
    return old_names


def forget_other_agents(txn: Txn, own: str) -> None:
    """On a store only this agent opens, every other agent is dead: its
    liveness keys are left over from an earlier run (another --node)."""
    for name in txn.state.live.keys() - {own}:
        txn.delete(codec.live_key(name))


# -- third-party registration ---------------------------------------------------


def catalog_register(txn: Txn, reg: CatalogRegistration, datacenter: str) -> None:
    """`/v1/catalog/register`: a node, optionally an instance, and checks."""
    validate_catalog(reg)
    _refuse_agent_node(txn, reg.node, "register services on it")
    if not reg.skipnodeupdate or txn.node(reg.node) is None:
        node = Node(
            name=reg.node,
            id=reg.id,
            address=reg.address,
            datacenter=reg.datacenter or datacenter,
            tagged_addresses=reg.taggedaddresses,
            meta=reg.nodemeta,
        )
        txn.put(node)
    service = None
    if reg.service is not None:
        service = build_service(reg.service, reg.node)
        txn.service(reg.node, service.id)
        txn.put(service)
    for check_reg in reg.all_checks():
        _catalog_check(txn, reg.node, check_reg, service)


def _catalog_check(txn: Txn, node: str, reg: CheckRegistration, service: Service | None) -> None:
    status = reg.status or "critical"
    validate_status(status, "Invalid check status")
    if not reg.name and not reg.checkid:
        raise ValidationError("Check must have a Name or CheckID")
    owner = service if service is not None and service.id == reg.serviceid else None
    if reg.serviceid and owner is None:
        owner = txn.service(node, reg.serviceid)
        if owner is None:
            raise ValidationError(
                f'Check\'s ServiceID "{reg.serviceid}" is not registered on node "{node}"'
            )
    check = Check(
        node=node,
        check_id=reg.checkid or reg.id or reg.name,
        name=reg.name or reg.checkid,
        status=status,  # type: ignore[arg-type]
        notes=reg.notes,
        output=reg.output,
        service_id=reg.serviceid,
        service_name=owner.name if owner else "",
        service_tags=owner.tags if owner else (),
    )
    put_check(txn, check)


def catalog_deregister(txn: Txn, reg: CatalogDeregistration) -> None:
    """`/v1/catalog/deregister`: a check, an instance, or a whole node."""
    if not reg.node:
        raise ValidationError("Must provide node")
    _refuse_agent_node(txn, reg.node, "deregister it or its services", allow_failed=True)
    if reg.serviceid:
        deregister(txn, reg.node, reg.serviceid)
    elif reg.checkid:
        deregister_check(txn, reg.node, reg.checkid)
    else:
        deregister_node(txn, reg.node)


def deregister_node(txn: Txn, name: str) -> None:
    """Remove a node with every instance and check on it. Raises NotFoundError."""
    if txn.node(name) is None:
        raise NotFoundError(f'Unknown node "{name}"')
    txn.whole_node(name)
    txn.delete(codec.node_key(name))
    txn.delete(codec.live_key(name))
    for service_id in txn.state.services_on(name):
        txn.delete(codec.service_key(name, service_id))
        txn.delete(codec.guard_key(name, service_id))
    for check in txn.state.checks_on_node(name):
        txn.delete(codec.check_key(name, check.check_id))


# -- helpers -------------------------------------------------------------------


def _refuse_agent_node(txn: Txn, node: str, what: str, allow_failed: bool = False) -> None:
    """A waypost agent's node is its agent's: third-party writes would be
    undone, or would point DNS elsewhere for every service on it."""
    if txn.check(node, SERF_CHECK_ID) is None:
        return
    if allow_failed and not txn.live(node):
        return  # its agent is gone: cleaning up after it is allowed
    raise ValidationError(
        f'Node "{node}" belongs to the waypost agent running there; the catalog API cannot '
        f"{what}. Use that agent's /v1/agent/service/register and /deregister instead."
    )


def _move_from_other_owner(txn: Txn, check: Check) -> None:
    """A check ID given to another instance leaves the one that had it: touch that one."""
    old = txn.check(check.node, check.check_id)
    if old is not None and old.service_id and old.service_id != check.service_id:
        previous = txn.service(check.node, old.service_id)
        if previous is not None:
            txn.touch(previous)


def _checks_of(reg: ServiceRegistration, service: Service, allow_scripts: bool) -> list[Check]:
    regs = reg.all_checks()
    checks = []
    for n, check_reg in enumerate(regs, start=1):
        default_id = f"service:{service.id}" + (f":{n}" if len(regs) > 1 else "")
        check_id = check_reg.checkid or check_reg.id or default_id
        name = check_reg.name or f"Service '{service.name}' check"
        checks.append(_build(check_reg, service.node, check_id, name, service, allow_scripts))
    return checks


def _build(
    reg: CheckRegistration,
    node: str,
    check_id: str,
    name: str,
    service: Service | None,
    allow_scripts: bool,
) -> Check:
    owner = (service.id, service.name, service.tags) if service else None
    check = build_check(reg, node, check_id, name, owner)
    if check.type == "script" and not allow_scripts:
        raise ValidationError(
            "Scripts are disabled on this agent; start it with --enable-script-checks to allow them"
        )
    return check
