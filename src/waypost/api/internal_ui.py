"""The web UI's reads: `/v1/internal/ui/...`, blocking queries like every other read.

Consul's UI has internal endpoints under the same prefix (`services`, `nodes`);
waypost serves those two in a shape close to Consul's, plus one of its own that
Consul does not have (`timeline`: the health transitions of the last hour,
catalog/timeline.py). Each view of the page needs one or two long-polls, as a
browser keeps only about six connections to a host.
"""

from __future__ import annotations

import datetime
from typing import Any

from .._exceptions import ValidationError
from ..catalog import Catalog, Check, Node
from ..catalog.aclrules import READ
from ..catalog.authz import Authorizer
from ..catalog.timeline import Timeline, Transition
from ..catalog.watch import CHECKS, NODES, SERVICES, service_topic
from . import access, encode
from .consul import ConsulApi
from .http import Request, Response, Router

JSON = dict[str, Any]
MAX_LIMIT = 10_000


class UiEndpoints:
    """Args:
    api: The Consul API whose blocking read path these share.
    catalog: The catalog read.
    timeline: The transitions recorder; None serves empty timelines.
    """

    def __init__(self, api: ConsulApi, catalog: Catalog, timeline: Timeline | None) -> None:
        self.api = api
        self.state = catalog.state
        self.timeline = timeline
        self._rows: dict[str, tuple[int, JSON]] = {}  # service -> (its index, its row)

    def routes(self, r: Router) -> None:
        """ACLs as for the catalog's reads (api/access.py): rows the token may
        not read (`service:read`, `node:read`) are left out."""
        services = access.filtered(access.items(lambda row: (("service", row["Name"]),)))
        timeline = access.filtered(access.items(_transition_names))
        r.add("GET HEAD", "/v1/internal/ui/services", self.services, services)
        r.add("GET HEAD", "/v1/internal/ui/nodes", self.nodes, access.filtered(_nodes_filter))
        r.add("GET HEAD", "/v1/internal/ui/timeline", self.timeline_all, timeline)
        r.add("GET HEAD", "/v1/internal/ui/timeline/", self.timeline_service, timeline)

    # -- services -------------------------------------------------------------

    async def services(self, req: Request, _: str) -> Response:
        """One summary row per service: a single blocking query covers them all."""
        return await self.api.read(req, (SERVICES, CHECKS, NODES), self._summaries)

    def _summaries(self) -> list[JSON]:
        """Every service's row; a row is rebuilt only when its service's index
        moved (holds move it too), so one change among 1,000 services costs one row."""
        rows: dict[str, tuple[int, JSON]] = {}
        for name in sorted(self.state.service_names()):
            index = self.state.index_of((service_topic(name),))
            cached = self._rows.get(name)
            if cached is None or cached[0] != index:
                cached = (index, self._summary(name))
            rows[name] = cached
        self._rows = rows  # services that went are dropped with it
        return [row for _, row in rows.values()]

    def _summary(self, name: str) -> JSON:
        instances = self.state.instances(name)
        tags = sorted({t for s in instances for t in s.tags})
        statuses = [self.state.instance_status(s) for s in instances]
        checks = [c.status for s in instances for c in self.state.checks_of(s)]
        passing, warning = statuses.count("passing"), statuses.count("warning")
        maintenance = statuses.count("maintenance")
        return {
            "Name": name,
            "Datacenter": self._datacenter(instances[0].node) if instances else "",
            "Tags": tags,
            "Nodes": sorted({s.node for s in instances}),
            "InstanceCount": len(instances),
            "InstancesPassing": passing,
            "InstancesWarning": warning,
            "InstancesCritical": len(statuses) - passing - warning - maintenance,
            "InstancesMaintenance": maintenance,
            "ChecksPassing": checks.count("passing"),
            "ChecksWarning": checks.count("warning"),
            "ChecksCritical": len(checks) - checks.count("passing") - checks.count("warning"),
        }

    def _datacenter(self, node: str) -> str:
        record = self.state.node(node)
        return record.datacenter if record else ""

    # -- nodes ----------------------------------------------------------------

    async def nodes(self, req: Request, _: str) -> Response:
        """Every node with its health, its instances and all their checks."""
        return await self.api.read(
            req, (SERVICES, CHECKS, NODES), lambda: [self._node(n) for n in self.state.all_nodes()]
        )

    def _node(self, node: Node) -> JSON:
        checks = self.state.checks_on_node(node.name)
        own = [c for c in checks if not c.service_id]
        services = sorted(self.state.services_on(node.name).values(), key=lambda s: s.id)
        return {
            **encode.node(node),
            "Status": _node_status(own),
            "Services": [
                {**encode.service(s), "Status": self.state.instance_status(s)} for s in services
            ],
            "Checks": [encode.check(c) for c in sorted(checks, key=lambda c: c.check_id)],
        }

    # -- the timeline (waypost's own) ------------------------------------------

    async def timeline_service(self, req: Request, name: str) -> Response:
        """`/v1/internal/ui/timeline/<service>[?instance=ID][&node=N][&after=SEQ]`."""
        if not name:
            raise ValidationError("Missing service name: /v1/internal/ui/timeline/<service>")
        after = _int_arg(req, "after", 0, 0)
        instance, node = req.arg("instance"), req.arg("node")

        def produce() -> list[JSON]:
            if self.timeline is None:
                return []
            return [transition(t) for t in self.timeline.events(name, instance, node, after)]

        # Not cached: events also leave by age, without a new index.
        answer = await self.api.read(req, (service_topic(name),), produce, cache=False)
        return self._with_start(answer)

    async def timeline_all(self, req: Request, _: str) -> Response:
        """`/v1/internal/ui/timeline[?after=SEQ][&limit=N]`: every service's, newest last."""
        after = _int_arg(req, "after", 0, 0)
        limit = _int_arg(req, "limit", 1000, 1, MAX_LIMIT)

        def produce() -> list[JSON]:
            if self.timeline is None:
                return []
            return [transition(t) for t in self.timeline.all_events(after, limit)]

        answer = await self.api.read(req, (SERVICES, CHECKS, NODES), produce, cache=False)
        return self._with_start(answer)

    def _with_start(self, answer: Response) -> Response:
        """Since when the agent has been recording (it starts empty): before
        that time the timeline knows nothing, and a UI must not pretend it does."""
        if self.timeline is not None:
            answer.headers.append((b"x-waypost-timeline-start", _rfc3339(self.timeline.started)))
        return answer


def _transition_names(t: JSON) -> tuple[tuple[str, str], ...]:
    return (("service", t["Service"]),) if t["Service"] else (("node", t["Node"]),)


_readable_services = access.items(lambda s: (("service", s["Service"]),))


def _nodes_filter(authz: Authorizer, nodes: list[JSON]) -> tuple[list[JSON], bool]:
    """Nodes the token may read, each with the instances and checks it may read."""
    kept: list[JSON] = []
    dropped = False
    for node in nodes:
        if not authz.allowed("node", node["Node"], READ):
            dropped = True
            continue
        services, gone = access.items(lambda s: (("service", s["Service"]),))(
            authz, node["Services"]
        )
        checks, lost = access.items(access.check_names)(authz, node["Checks"])
        kept.append({**node, "Services": services, "Checks": checks})
        dropped = dropped or gone or lost
    return kept, dropped


def transition(t: Transition) -> JSON:
    """A timeline event in the API's PascalCase, with its time in RFC 3339 (UTC)."""
    return {
        "Seq": t.seq,
        "Time": _rfc3339(t.time).decode(),
        "Index": t.index,
        "Kind": t.kind,
        "Service": t.service,
        "ServiceID": t.instance,
        "Node": t.node,
        "Status": t.status,
        "CheckID": t.check_id,
        "CheckName": t.check_name,
        "CheckType": t.check_type,
        "From": t.before,
        "To": t.after,
        "Output": t.output,
    }


def _rfc3339(unix: float) -> bytes:
    when = datetime.datetime.fromtimestamp(unix, datetime.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z").encode()


def _node_status(checks: list[Check]) -> str:
    if any(c.type == "maintenance" for c in checks):
        return "maintenance"
    statuses = {c.status for c in checks}
    for status in ("critical", "warning"):
        if status in statuses:
            return status
    return "passing"


def _int_arg(req: Request, name: str, default: int, low: int, high: int | None = None) -> int:
    raw = req.arg(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError(f'Invalid {name} "{raw}": expected an integer') from None
    if value < low or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise ValidationError(f"Invalid {name} {value}: must be {bounds}")
    return value
