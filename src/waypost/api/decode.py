"""Request bodies, decoded as Consul decodes them.

Consul accepts keys in any case and with snake_case aliases (`Name`, `name`,
`deregister_critical_service_after`), and durations as Go strings ("10s",
"1m30s") or integer nanoseconds. We fold every key to lower case without `_`
or `-`, except inside user maps (Meta, Header...), then convert with msgspec,
which reports the path of a wrong value. What may be registered is the
core's business (`catalog/definitions.py`, `catalog/writes.py`): this module
only parses.
"""

from __future__ import annotations

import functools
from typing import Any, Final, TypeVar

import msgspec

from .. import _duration
from .._exceptions import ValidationError

T = TypeVar("T")

# Maps whose keys belong to the user and are kept as sent.
# `config` is a proxy's or upstream's opaque map (`protocol`, `connect_timeout_ms`).
_OPAQUE: Final = frozenset({"meta", "nodemeta", "servicemeta", "header", "config"})
MAX_WAIT: Final = 600.0
_FOLDED: dict[str, str] = {}  # key as sent -> folded key


def fold(value: Any) -> Any:
    """Fold keys to Consul's case-insensitive form, recursively; drop nulls."""
    if isinstance(value, list):
        return [fold(v) if isinstance(v, dict | list) else v for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        if item is None:
            continue
        name = _fold_key(key)
        if name in _OPAQUE or not isinstance(item, dict | list):
            out[name] = item
        elif name == "taggedaddresses" and isinstance(item, dict):
            out[name] = {k: fold(v) for k, v in item.items()}
        else:
            out[name] = fold(item)
    return out


def _fold_key(key: str) -> str:
    name = _FOLDED.get(key)
    if name is None:
        name = key.lower().replace("_", "").replace("-", "")
        if len(_FOLDED) < 1024:  # clients use few spellings; a hostile one cannot grow this
            _FOLDED[key] = name
    return name


def _convert(raw: bytes, kind: type[Any]) -> Any:
    try:
        data = msgspec.json.decode(raw) if raw.strip() else {}
    except msgspec.DecodeError as exc:
        raise ValidationError(f"Request decode failed: invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValidationError("Request decode failed: expected a JSON object")
    try:
        return msgspec.convert(fold(data), kind)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"Request decode failed: {_consul_path(str(exc))}") from exc


def _consul_path(message: str) -> str:
    """msgspec says `$.checks[0].interval`; say it with the field names users wrote."""
    return message.replace("`$.", "`").replace("`$`", "the body")


def decode(raw: bytes, kind: type[T]) -> T:
    """Parse a JSON body into one of the core's definitions (`catalog/definitions.py`).

    Only the shape is checked here (JSON, types); the rules of what may be
    registered are the core's.
    """
    result: T = _convert(raw, kind)
    return result


@functools.lru_cache(maxsize=256)  # clients send the same few waits ("5m", "30s") every time
def parse_wait(text: str) -> float:
    """`?wait=`: a Go duration, clamped to ten minutes. Raises ValidationError."""
    try:
        seconds = _duration.parse(text, "wait")
    except ValidationError:
        raise ValidationError("Invalid wait time") from None
    if seconds < 0:
        raise ValidationError("Invalid wait time")
    return min(seconds, MAX_WAIT)


def parse_index(text: str) -> int:
    if not text.isdigit():
        raise ValidationError("Invalid index")
    return int(text)
