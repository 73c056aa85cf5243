"""The web UI's mesh view: `/v1/internal/ui/intentions`, waypost's own read.

Consul's UI shows intentions and, per service, its "topology" (who may call
it, whom it may call). This endpoint gives the page both in one blocking
query, and every decision in it comes from `catalog.connect.decide`, the
function the mesh itself enforces with (xDS RBAC, `/v1/connect/intentions/check`,
`/v1/agent/connect/authorize`): the page never re-derives Consul's precedence
rules, so the picture cannot disagree with what the proxies do.

    GET /v1/internal/ui/intentions                  every pair (at most MATRIX_MAX services)
    GET /v1/internal/ui/intentions?service=NAME     the pairs NAME is in: its callers and callees

    {"DefaultAllow": true,              # what a pair no intention matches gets; null: none can
     "Services": ["api", "web", ...],   # catalog services (no proxies, no `consul`) and the
                                        # exact names intentions mention, sorted
     "Intentions": [...],               # as /v1/connect/intentions, precedence order
     "Cells": [[s, d, allowed, k]...],  # Services[s] -> Services[d]: 1 or 0, and the index in
                                        # Intentions of the intention that decided (-1: the default)
     "TooMany": false}                  # more services than MATRIX_MAX: no Cells without ?service

Under ACLs the answer is filtered like Consul's lists: services the token may
not `service:read` leave (with their cells), intentions it may not
`intentions:read` (on their destination) leave, and a cell whose destination's
intentions it may not read, or whose deciding intention it may not see, leaves
too: a decision would tell what the intention says.
"""

from __future__ import annotations

import uuid
from typing import Any, Final

from .._exceptions import ValidationError
from ..catalog import connect
from ..catalog.aclrules import INTENTION, READ
from ..catalog.authz import Authorizer
from ..catalog.model import Intention
from ..catalog.state import State
from ..catalog.watch import INTENTIONS, SERVICES
from . import access
from .connect import intention_json
from .consul import ConsulApi
from .http import Request, Response, Router

JSON = dict[str, Any]
MATRIX_MAX: Final = 60  # 3,600 decisions; a wider matrix is unreadable on a screen anyway
AGENT_SERVICE: Final = "consul"  # every agent's own service: not a mesh member


class Decisions:
    """`connect.decide` per pair, remembered while the intentions stand still.

    A decision depends on the intentions alone (and the default, fixed for
    the agent's run), so a service registered or gone, the view's other
    topic, costs only the pairs that are new. Any intention change starts
    afresh; the memory is capped so that many services' pages cannot grow it
    without bound.
    """

    LIMIT: Final = 100_000

    def __init__(self, state: State, default_allow: bool = True) -> None:
        self.state = state
        self.default_allow = default_allow  # the ACL default policy, as the mesh enforces it
        self.index = -1
        self.known: dict[tuple[str, str], tuple[bool, str]] = {}

    def __call__(self, source: str, destination: str) -> tuple[bool, str]:
        """Whether `source` may call `destination`, and the ID of the
        intention that decided ("": the default)."""
        index = self.state.index_of((INTENTIONS,))
        if index != self.index or len(self.known) >= self.LIMIT:
            self.index, self.known = index, {}
        found = self.known.get((source, destination))
        if found is None:
            decision = connect.decide(self.state, source, destination, self.default_allow)
            by = decision.intention.id if decision.intention is not None else ""
            found = self.known[(source, destination)] = (decision.allowed, by)
        return found


class IntentionsView:
    def __init__(self, api: ConsulApi, default_allow: bool = True) -> None:
        self.api = api
        self.state = api.catalog.state
        self.decisions = Decisions(self.state, default_allow)

    def routes(self, r: Router) -> None:
        """Readable by any token; what it may not read is left out (module docstring)."""
        r.add("GET HEAD", "/v1/internal/ui/intentions", self.intentions, access.filtered(_filter))

    async def intentions(self, req: Request, _: str) -> Response:
        service = req.arg("service")
        if req.has("service") and not service:
            raise ValidationError("service must name a service: ?service=NAME")
        return await self.api.read(
            req,
            (INTENTIONS, SERVICES),
            lambda: mesh_view(self.state, service or None, self.decisions),
        )


def mesh_view(state: State, service: str | None, decisions: Decisions | None = None) -> JSON:
    """The answer (module docstring): every pair, or those `service` is in."""
    decide = decisions or Decisions(state)
    intentions = connect.ordered(state.all_intentions())
    names = member_names(state, intentions)
    if service is not None and service not in names:
        names = sorted([*names, service])
    position = {i.id: k for k, i in enumerate(intentions)}
    too_many = service is None and len(names) > MATRIX_MAX
    cells = [] if too_many else _cells(decide, names, service, position)
    return {
        "DefaultAllow": default_allow(state, intentions, decide.default_allow),
        "Services": names,
        "Intentions": [intention_json(i) for i in intentions],
        "Cells": cells,
        "TooMany": too_many,
    }


def member_names(state: State, intentions: list[Intention]) -> list[str]:
    """The services a picture of the mesh shows: those registered (less sidecars,
    gateways and the agents' own), and any an intention names (it may be
    registered later)."""
    found = {
        name
        for name in state.service_names()
        if name != AGENT_SERVICE and any(not s.kind for s in state.instances_of(name))
    }
    for i in intentions:
        found.update(n for n in (i.source, i.destination) if n != connect.WILDCARD)
    return sorted(found)


def default_allow(state: State, intentions: list[Intention], policy: bool) -> bool | None:
    """What a pair that no intention matches gets, asked of `decide` itself (so
    it follows whatever default the mesh enforces); None when `* -> *` exists
    and no pair can fall through to the default."""
    if any(i.source == i.destination == connect.WILDCARD for i in intentions):
        return None
    unmatched = f"\x00{uuid.uuid4()}"  # a name no intention can name
    return connect.decide(state, unmatched, unmatched, policy).allowed


def _cells(
    decide: Decisions, names: list[str], service: str | None, position: dict[str, int]
) -> list[list[int]]:
    index = {n: k for k, n in enumerate(names)}
    if service is None:
        pairs = [(s, d) for s in names for d in names if s != d]
    else:
        others = [n for n in names if n != service]
        pairs = [(s, service) for s in others] + [(service, d) for d in others]
    cells = []
    for source, destination in pairs:
        allowed, by = decide(source, destination)
        cells.append([index[source], index[destination], int(allowed), position[by] if by else -1])
    return cells


def _filter(authz: Authorizer, answer: JSON) -> tuple[JSON, bool]:
    """The answer less what the token may not read (module docstring)."""
    names: list[str] = answer["Services"]
    intentions: list[JSON] = answer["Intentions"]
    kept_names = [n for n in names if authz.allowed("service", n, READ)]
    kept_intentions = [
        i for i in intentions if authz.allowed(INTENTION, i["DestinationName"], READ)
    ]
    name_at = {n: k for k, n in enumerate(kept_names)}
    intention_at = {i["ID"]: k for k, i in enumerate(kept_intentions)}
    cells = []
    for s, d, allowed, by in answer["Cells"]:
        source, destination = names[s], names[d]
        if source not in name_at or destination not in name_at:
            continue
        if not authz.allowed(INTENTION, destination, READ):
            continue
        if by >= 0 and intentions[by]["ID"] not in intention_at:
            continue
        new_by = intention_at[intentions[by]["ID"]] if by >= 0 else -1
        cells.append([name_at[source], name_at[destination], allowed, new_by])
    dropped = (
        len(kept_names) < len(names)
        or len(kept_intentions) < len(intentions)
        or len(cells) < len(answer["Cells"])
    )
    kept = {**answer, "Services": kept_names, "Intentions": kept_intentions, "Cells": cells}
    return kept, dropped
