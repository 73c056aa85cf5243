"""The discovery documents of the fake API server (fakeapi.py), for kubectl.

kubectl maps kinds and short names to URLs from discovery before any request.
It asks `/api` and `/apis` for the aggregated form first
(`application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`, with
plain `application/json` as the fallback in its Accept header); a server that
answers plain JSON gets the legacy walk: `APIVersions` at `/api`,
`APIGroupList` at `/apis`, then one `APIResourceList` per group version. This
serves the legacy form, which every client supports, for the fake's
resources only. No OpenAPI documents: `/openapi/v2` and `/openapi/v3` are 404,
as on a server that does not publish them (kubectl then skips client-side
schema validation; the test passes `--validate=false` to say so).
"""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]

# (group, resource) -> (singular, short names, verbs, categories)
_DETAILS: dict[tuple[str, str], tuple[str, list[str], list[str]]] = {
    ("", "services"): ("service", ["svc"], ["all"]),
    ("", "nodes"): ("node", ["no"], []),
    ("discovery.k8s.io", "endpointslices"): ("endpointslice", [], []),
    ("coordination.k8s.io", "leases"): ("lease", [], []),
}
_VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


def document(path: str, resources: dict[tuple[str, str], tuple[str, str, bool]]) -> Obj | None:
    """The discovery document at `path`, or None when `path` is not a discovery URL."""
    groups = sorted({g for g, _ in resources if g})
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
    if path == "/apis":
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [_group(g) for g in groups]}
    if path == "/api/v1":
        return _resource_list("", "v1", resources)
    for group in groups:
        if path == f"/apis/{group}":
            return {"kind": "APIGroup", "apiVersion": "v1", **_group(group)}
        if path == f"/apis/{group}/v1":
            return _resource_list(group, f"{group}/v1", resources)
    return None


def _group(group: str) -> Obj:
    version = {"groupVersion": f"{group}/v1", "version": "v1"}
    return {"name": group, "versions": [version], "preferredVersion": version}


def _resource_list(
    group: str, group_version: str, resources: dict[tuple[str, str], tuple[str, str, bool]]
) -> Obj:
    entries = []
    for (g, resource), (kind, _, namespaced) in sorted(resources.items()):
        if g != group:
            continue
        singular, short, categories = _DETAILS[(g, resource)]
        entry: Obj = {"name": resource, "singularName": singular, "namespaced": namespaced,
                      "kind": kind, "verbs": _VERBS}  # fmt: skip
        if short:
            entry["shortNames"] = short
        if categories:
            entry["categories"] = categories
        entries.append(entry)
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
            "resources": entries}  # fmt: skip
