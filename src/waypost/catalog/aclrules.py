"""ACL rules in Consul's syntax, HCL or JSON, parsed into one merged table.

    service_prefix "" { policy = "read" }
    service "web" { policy = "write"  intentions = "read" }
    node_prefix "" { policy = "read" }
    operator = "read"

HCL is parsed with python-hcl2 (a maintained parser from PyPI; Consul's own
rules are HCL1, of which these forms are the common ground), JSON with
msgspec: a text whose first character is `{` is JSON, as no HCL body starts
so. What Consul would accept but ignore (a misspelt resource, `policy =
"wirte"`) is refused here with the path of the mistake: a typo in a policy
that silently grants nothing is the classic way to lock a fleet out.

Merging follows Consul: for one resource and name, the rule that takes
precedence across every policy of a token is deny, then write, then list,
then read. Lookups then pick the exact rule for a name, else the longest
matching prefix rule (`authz.py`).
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from .._exceptions import ValidationError

# Access levels, ordered as Consul orders them (deny overrides everything).
DENY: Final = 0
READ: Final = 1
LIST: Final = 2
WRITE: Final = 3
LEVELS: Final = {"deny": DENY, "read": READ, "list": LIST, "write": WRITE}
LEVEL_NAMES: Final = {v: k for k, v in LEVELS.items()}
_PRECEDENCE: Final = {DENY: 3, WRITE: 2, LIST: 1, READ: 0}

NAMED: Final = ("agent", "event", "key", "node", "query", "service", "session")
UNNAMED: Final = ("acl", "operator", "keyring", "mesh", "peering")
INTENTION: Final = "intention"  # from the `intentions` field of service rules

Table = dict[str, int]  # name (or prefix) -> level


class Rules:
    """Rules merged from any number of policies: exact and prefix tables per
    resource, and one level per unnamed resource (`operator`, `acl`...)."""

    __slots__ = ("exact", "prefix", "unnamed")

    def __init__(self) -> None:
        self.exact: dict[str, Table] = {}
        self.prefix: dict[str, Table] = {}
        self.unnamed: dict[str, int] = {}

    def add(self, resource: str, name: str, level: int, prefix: bool) -> None:
        table = (self.prefix if prefix else self.exact).setdefault(resource, {})
        old = table.get(name)
        if old is None or _PRECEDENCE[level] > _PRECEDENCE[old]:
            table[name] = level

    def add_unnamed(self, resource: str, level: int) -> None:
        old = self.unnamed.get(resource)
        if old is None or _PRECEDENCE[level] > _PRECEDENCE[old]:
            self.unnamed[resource] = level

    def merge(self, other: Rules) -> None:
        for tables, prefix in ((other.exact, False), (other.prefix, True)):
            for resource, table in tables.items():
                for name, level in table.items():
                    self.add(resource, name, level, prefix)
        for resource, level in other.unnamed.items():
            self.add_unnamed(resource, level)


def parse(text: str) -> Rules:
    """Parse a policy's rules.

    Raises:
        ValidationError: the text is neither HCL nor JSON, or names a resource,
            field or level Consul does not have.
    """
    rules = Rules()
    if not text.strip():
        return rules
    data = _load(text)
    for key, value in data.items():
        _add_top(rules, key, value)
    return rules


def _load(text: str) -> dict[str, Any]:
    if text.lstrip().startswith("{"):
        try:
            data = msgspec.json.decode(text.encode())
        except msgspec.DecodeError as exc:
            raise ValidationError(f"Failed to parse ACL rules: invalid JSON: {exc}") from exc
    else:
        data = _load_hcl(text)
    if not isinstance(data, dict):
        raise ValidationError("Failed to parse ACL rules: expected an object of rules")
    return data


def _load_hcl(text: str) -> Any:
    import hcl2  # imported here: only agents with ACLs on parse rules
    from hcl2.utils import SerializationOptions

    options = SerializationOptions(
        with_comments=False, explicit_blocks=False, strip_string_quotes=True
    )
    try:
        return hcl2.loads(text, serialization_options=options)
    except Exception as exc:  # lark raises many types; each is a syntax error here
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValidationError(f"Failed to parse ACL rules: {first}") from None


def _add_top(rules: Rules, key: str, value: Any) -> None:
    if key in UNNAMED:
        rules.add_unnamed(key, _level(value, key, allow_list=False))
        return
    resource, prefix = (key[: -len("_prefix")], True) if key.endswith("_prefix") else (key, False)
    if resource not in NAMED:
        known = ", ".join([*NAMED, *(f"{n}_prefix" for n in NAMED), *UNNAMED])
        raise ValidationError(f'Failed to parse ACL rules: unknown resource "{key}" (use {known})')
    for name, body in _blocks(value, key):
        _add_block(rules, resource, name, body, prefix, key)


def _blocks(value: Any, key: str) -> list[tuple[str, Any]]:
    """`service "web" {...}` as python-hcl2 gives it (a list of one-label
    dicts) or as JSON writes it (one dict of labels, or a list of them)."""
    items = value if isinstance(value, list) else [value]
    blocks: list[tuple[str, Any]] = []
    for item in items:
        if not isinstance(item, dict):
            raise ValidationError(
                f'Failed to parse ACL rules: {key} needs a name: {key} "name" {{}}'
            )
        blocks.extend((str(name), body) for name, body in item.items())
    return blocks


def _add_block(rules: Rules, resource: str, name: str, body: Any, prefix: bool, key: str) -> None:
    where = f'{key} "{name}"'
    if not isinstance(body, dict):
        raise ValidationError(
            f"Failed to parse ACL rules: {key} needs a name and a block: "
            f'{key} "name" {{ policy = "read" }}'
        )
    fields = set(body) - {"policy", "intentions"}
    if fields or ("intentions" in body and resource != "service"):
        extra = sorted(fields or {"intentions"})[0]
        raise ValidationError(f'Failed to parse ACL rules: {where}: unknown field "{extra}"')
    if "policy" not in body and "intentions" not in body:
        raise ValidationError(f"Failed to parse ACL rules: {where} has no policy")
    level = None
    if "policy" in body:
        level = _level(body["policy"], where, allow_list=resource == "key")
        rules.add(resource, name, level, prefix)
    if resource == "service":
        # Consul grants intentions:read with service:read or write unless told otherwise.
        if "intentions" in body:
            rules.add(INTENTION, name, _level(body["intentions"], where, False), prefix)
        elif level in (READ, WRITE):
            rules.add(INTENTION, name, READ, prefix)
        elif level == DENY:
            rules.add(INTENTION, name, DENY, prefix)


def _level(value: Any, where: str, allow_list: bool) -> int:
    level = LEVELS.get(value) if isinstance(value, str) else None
    if level is None or (level == LIST and not allow_list):
        allowed = '"read", "write", "deny"' + (' or "list"' if allow_list else "")
        raise ValidationError(
            f"Failed to parse ACL rules: {where}: invalid policy {value!r} (use {allowed})"
        )
    return level
