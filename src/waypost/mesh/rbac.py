"""Intentions as Envoy RBAC rules, for the public listener of a destination.

The default policy is allow (catalog/connect.py), so the rules are a DENY
policy: one entry per deny intention that applies to the destination, whose
principal is the source's SPIFFE identity *unless* a more precise allow
intention covers it (`deny * => db` with `allow web => db` lets web in).
Envoy checks the client certificate's URI SAN, which the CA signed, so an
identity cannot be claimed by a header or an address. Policy names say
which intention refuses whom; they show in Envoy's stats and logs.
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


def principal(source: str) -> JSON:
    """The SPIFFE identity of `source` (any trust domain and datacenter of
    this CA, as Consul matches), or any service for `*`."""
    name = "[^/]+" if source == connect.WILDCARD else source.replace(".", r"\.")
    regex = f"^spiffe://[^/]+/ns/default/dc/[^/]+/svc/{name}$"
    return {"authenticated": {"principalName": {"safeRegex": {"regex": regex}}}}


def rules(state: State, destination: str) -> JSON:
    """RBAC `rules` for `destination` under the default-allow policy."""
    applicable = connect.matches(state, "destination", destination)
    policies: JSON = {}
    for intention in applicable:
        if intention.action != "deny":
            continue
        exceptions = [
            principal(other.source)
            for other in applicable
            if other.action == "allow"
            and connect.precedence(other) > connect.precedence(intention)
            and _covers(intention.source, other.source)
        ]
        policies[_policy_name(intention)] = {
            "permissions": [{"any": True}],
            "principals": [_except(principal(intention.source), exceptions)],
        }
    return {"action": "DENY", "policies": policies}


def _covers(wide: str, narrow: str) -> bool:
    return wide == connect.WILDCARD or wide == narrow


def _except(base: JSON, exceptions: list[JSON]) -> JSON:
    if not exceptions:
        return base
    return {"andIds": {"ids": [base, {"notId": {"orIds": {"ids": exceptions}}}]}}


def _policy_name(intention: Intention) -> str:
    return f"intention:{intention.id}:deny:{intention.source}=>{intention.destination}"


def network_filter(state: State, destination: str) -> JSON:
    return {
        "name": "envoy.filters.network.rbac",
        "typedConfig": {
            "@type": NET_RBAC,
            "statPrefix": "connect_authz",
            "rules": rules(state, destination),
        },
    }


def http_filter() -> JSON:
    """The HTTP RBAC filter with no rules of its own: each route carries them
    (`per_route`), so a change arrives over RDS and applies to the next
    request on every open connection, without a listener drain."""
    return {"name": "envoy.filters.http.rbac", "typedConfig": {"@type": HTTP_RBAC}}


def per_route(state: State, destination: str) -> JSON:
    return {
        "envoy.filters.http.rbac": {
            "@type": HTTP_RBAC_ROUTE,
            "rbac": {"rules": rules(state, destination)},
        }
    }


def denial_reply() -> JSON:
    """Envoy's own 403 says only "RBAC: access denied"; its response details
    name the policy that matched, which names the intention and whom it
    refused. Applies to Envoy's local replies only, never to the app's."""
    return {
        "mappers": [
            {
                "filter": {
                    "statusCodeFilter": {
                        "comparison": {
                            "op": "EQ",
                            "value": {"defaultValue": 403, "runtimeKey": "waypost.rbac_status"},
                        }
                    }
                },
                "bodyFormatOverride": {
                    "textFormatSource": {
                        "inlineString": "RBAC: access denied to %DOWNSTREAM_PEER_URI_SAN% "
                        "(%RESPONSE_CODE_DETAILS%)\n"
                    }
                },
            }
        ]
    }
