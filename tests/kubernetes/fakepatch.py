"""PATCH for the fake API server (fakeapi.py): the patch types it can apply exactly.

- `application/merge-patch+json` (RFC 7386, `kubectl patch --type=merge`): maps
  merge, `null` removes a key, anything else (lists included) replaces.
- `application/strategic-merge-patch+json` (kubectl's default, and what
  client-side `kubectl apply` sends for a changed object): the same as a merge
  patch for an object whose lists are all atomic, which EndpointSlices
  (`endpoints`, `ports`) and Leases are; so only those take it, and a patch
  carrying a strategic directive (`$patch`, `$setElementOrder/...`,
  `$retainKeys`, `$deleteFromPrimitiveList/...`) is refused rather than
  misapplied. Services and Nodes have lists merged by key (ports by `port`):
  415, as the real server answers an unsupported patch type.
- `application/json-patch+json` and `application/apply-patch+yaml`
  (server-side apply): 415.
"""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
# Resources whose lists all have `+listType=atomic`: a strategic patch is a merge patch.
ATOMIC_LISTS = frozenset(
    {("discovery.k8s.io", "endpointslices"), ("coordination.k8s.io", "leases")}
)


class PatchError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def apply(content_type: str, group: str, resource: str, current: Obj, patch: object) -> Obj:
    """`current` with `patch` applied, or PatchError(415/400/422) saying why not."""
    strategic = content_type == STRATEGIC and (group, resource) in ATOMIC_LISTS
    if content_type != MERGE and not strategic:
        raise PatchError(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format - accepted media types include: "
            f"{MERGE}" + (f", {STRATEGIC}" if (group, resource) in ATOMIC_LISTS else ""),
        )
    if not isinstance(patch, dict):
        raise PatchError(400, "BadRequest", "the patch is not a JSON object")
    if strategic and (directive := _directive(patch)):
        raise PatchError(422, "Invalid", f"the fake does not apply the directive {directive!r}")
    merged = merge(current, patch)
    assert isinstance(merged, dict)
    return merged


def merge(target: object, patch: object) -> object:
    """RFC 7386 MergePatch(target, patch)."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


def _directive(doc: object) -> str | None:
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key.startswith("$"):
                return str(key)
            if found := _directive(value):
                return found
    if isinstance(doc, list):
        for item in doc:
            if found := _directive(item):
                return found
    return None
