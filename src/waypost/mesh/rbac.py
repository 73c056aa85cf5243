"""Intentions as Envoy RBAC rules, for the public listener of a destination.

The rules are always a DENY list, one policy per refusal reason, so that
every refusal names its reason:

- one policy per deny intention that applies to the destination, named
  `intention:web=>db:deny:<id>`, whose principal is the source's SPIFFE
  identity minus the sources of every *more precise* intention (of either
  action) that overlaps it: `deny * => db` with `allow web => db` lets web
  in, and a source is refused by exactly the intention that decides for it
  (Consul's precedence), never by a wider one;
- with the default policy deny (ACLs with `--acl-default-policy deny`), one
  more policy, `DEFAULT_DENY`, for the sources no intention names: any
  identity minus every applicable intention's source.

What Envoy 1.40 reports of a refusal (found by running it): the HTTP RBAC
filter puts `rbac_access_denied_matched_policy[<name>]` in
`%RESPONSE_CODE_DETAILS%` before the local reply is made, and
`enforced_engine_result` / `enforced_effective_policy_id` in its dynamic
metadata after it (seen by the access log, not by the reply mappers). The
network RBAC filter reports neither for its enforced rules (no termination
details, no metadata), only for *shadow* rules (`shadow_engine_result`,
`shadow_effective_policy_id`): so the network filter carries the same rules
twice, enforced and shadow, and its log reads the shadow result, which is
the same decision. Names hold no spaces, since Envoy turns them into `_` in
the details. Envoy checks the client certificate's URI SAN, which the CA
signed, so an identity cannot be claimed by a header or an address.
"""

from __future__ import annotations

from typing import Any

from ..catalog import connect
from ..catalog.model import Intention
from ..catalog.state import State

JSON = dict[str, Any]

HTTP_RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
HTTP_RBAC_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
NET_RBAC = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
HTTP_FILTER = "envoy.filters.http.rbac"
NET_FILTER = "envoy.filters.network.rbac"
DEFAULT_DENY = "default-deny:no-intention-allows-it"


def principal(source: str) -> JSON:
    """The SPIFFE identity of `source` (any trust domain and datacenter of
    this CA, as Consul matches), or any service for `*`."""
    name = "[^/]+" if source == connect.WILDCARD else source.replace(".", r"\.")
    regex = f"^spiffe://[^/]+/ns/default/dc/[^/]+/svc/{name}$"
    return {"authenticated": {"principalName": {"safeRegex": {"regex": regex}}}}


def rules(state: State, destination: str, default_allow: bool) -> JSON:
    """RBAC `rules` for `destination`: a DENY policy per refusal reason."""
    applicable = connect.matches(state, "destination", destination)
    policies: JSON = {}
    for intention in applicable:
        if intention.action != "deny":
            continue
        shadowing = [
            other.source
            for other in applicable
            if connect.precedence(other) > connect.precedence(intention)
            and _overlap(intention.source, other.source)
        ]
        if connect.WILDCARD in shadowing:
            continue  # a more precise intention decides for every source this one names
        policies[policy_name(intention)] = _policy(principal(intention.source), shadowing)
    sources = [i.source for i in applicable]
    if not default_allow and connect.WILDCARD not in sources:
        policies[DEFAULT_DENY] = _policy({"any": True}, sources)
    return {"action": "DENY", "policies": policies}


def policy_name(intention: Intention) -> str:
    """What a refusal by `intention` reports: which intention refused, and from whom to whom."""
    i = intention
    return f"intention:{i.source}=>{i.destination}:{i.action}:{i.id}"


def _overlap(one: str, other: str) -> bool:
    return connect.WILDCARD in (one, other) or one == other


def _policy(base: JSON, excepted: list[str]) -> JSON:
    if excepted:
        others = {"orIds": {"ids": [principal(s) for s in excepted]}}
        base = {"andIds": {"ids": [base, {"notId": others}]}}
    return {"permissions": [{"any": True}], "principals": [base]}


def network_filter(state: State, destination: str, default_allow: bool) -> JSON:
    found = rules(state, destination, default_allow)
    return {
        "name": NET_FILTER,
        "typedConfig": {
            "@type": NET_RBAC,
            "statPrefix": "connect_authz",
            "rules": found,
            # The same decision again, which Envoy reports in metadata (see above);
            # no shadow stat prefix: Envoy prepends it to the metadata keys too.
            "shadowRules": found,
        },
    }


def http_filter() -> JSON:
    """The HTTP RBAC filter with no rules of its own: each route carries them
    (`per_route`), so a change arrives over RDS and applies to the next
    request on every open connection, without a listener drain."""
    return {"name": HTTP_FILTER, "typedConfig": {"@type": HTTP_RBAC}}


def per_route(state: State, destination: str, default_allow: bool) -> JSON:
    return {
        HTTP_FILTER: {
            "@type": HTTP_RBAC_ROUTE,
            "rbac": {"rules": rules(state, destination, default_allow)},
        }
    }


# -- what a refusal says ------------------------------------------------------------
# The log line and the 403 body are the same whatever the intentions are, so
# an intention change never touches the listener (no drain).

STDOUT_LOG = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
CEL_FILTER = "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter"
_DETAIL = "rbac_access_denied_matched_policy[{}]"  # Envoy's response detail of a refusal


def refusal_log(destination: str, http: bool) -> list[JSON]:
    """An access log of refusals only, on Envoy's stdout: who (the client
    certificate's SPIFFE ID), to which service, and the intention (or the
    default policy) that refused."""
    name, result = (HTTP_FILTER, "enforced") if http else (NET_FILTER, "shadow")
    policy = f"%DYNAMIC_METADATA({name}:{result}_effective_policy_id)%"
    what = "%REQ(:METHOD)% %REQ(:PATH)%" if http else "connection closed"
    line = (
        f"waypost mesh: refused %DOWNSTREAM_PEER_URI_SAN% -> {destination}: "
        f"{_DETAIL.format(policy)}; {what} from %DOWNSTREAM_REMOTE_ADDRESS%\n"
    )
    denied = {
        "metadataFilter": {
            "matcher": {
                "filter": name,
                "path": [{"key": f"{result}_engine_result"}],
                "value": {"stringMatch": {"exact": "denied"}},
            },
            "matchIfKeyNotFound": False,  # Envoy's default is to match
        }
    }
    return [
        {
            "name": "envoy.access_loggers.stdout",
            "filter": denied,
            "typedConfig": {"@type": STDOUT_LOG, "logFormat": _text(line)},
        }
    ]


def denial_reply(destination: str) -> JSON:
    """Envoy's own 403 says only "RBAC: access denied"; this one names whom
    the mesh refused and the intention that did, or says that none allows
    the call. Mappers apply to Envoy's local replies only (here: RBAC's
    403), never to the app's answers."""
    default = (
        f"RBAC: access denied: no intention allows %DOWNSTREAM_PEER_URI_SAN% -> {destination}; "
        "default policy deny\n"
    )
    matched = (
        f"RBAC: access denied: %DOWNSTREAM_PEER_URI_SAN% -> {destination} refused by "
        "%RESPONSE_CODE_DETAILS%\n"
    )
    is_default = f"response.code_details == '{_DETAIL.format(DEFAULT_DENY)}'"
    return {
        "mappers": [
            {
                "filter": {
                    "extensionFilter": {
                        "name": "envoy.access_loggers.extension_filters.cel",
                        "typedConfig": {"@type": CEL_FILTER, "expression": is_default},
                    }
                },
                "bodyFormatOverride": _text(default),
            },
            {
                "filter": {
                    "statusCodeFilter": {
                        "comparison": {
                            "op": "EQ",
                            "value": {"defaultValue": 403, "runtimeKey": "waypost.rbac_status"},
                        }
                    }
                },
                "bodyFormatOverride": _text(matched),
            },
        ]
    }


def _text(line: str) -> JSON:
    return {"textFormatSource": {"inlineString": line}}
