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
from . import canonical
from .http import Request

T = TypeVar("T")

# Maps whose keys belong to the user and are kept as sent.
# `config` is a proxy's or upstream's opaque map (`protocol`, `connect_timeout_ms`).
_OPAQUE: Final = frozenset({"meta", "nodemeta", "servicemeta", "header", "config"})
MAX_WAIT: Final = 600.0
DEFAULT_WAIT: Final = 300.0  # Consul's default_query_time: no ?wait=, or one <= 0
MAX_DEPTH: Final = 32  # no Consul body nests deeper than a few levels
MAX_INDEX: Final = 2**64 - 1  # Consul's indexes are uint64
_FOLDED: dict[str, str] = {}  # key as sent -> folded key


def fold(value: Any, depth: int = 0) -> Any:
    """Fold keys to Consul's case-insensitive form, recursively; drop nulls.

    Raises:
        ValidationError: the body nests deeper than MAX_DEPTH (a hostile body
            would otherwise exhaust the interpreter's recursion limit).
    """
    if depth > MAX_DEPTH:
        raise ValidationError(f"Request decode failed: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, list):
        return [fold(v, depth + 1) if isinstance(v, dict | list) else v for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        if item is None:
            continue
        name = _fold_key(key)
        if not isinstance(item, dict | list):
            out[name] = item
        elif name in _OPAQUE:
            _check_depth(item, depth + 1)
            out[name] = item
        elif name == "taggedaddresses" and isinstance(item, dict):
            out[name] = {k: fold(v, depth + 2) for k, v in item.items()}
        else:
            out[name] = fold(item, depth + 1)
    return out


def _check_depth(value: Any, depth: int) -> None:
    """Walk a user map kept as sent (Meta, Header): it may not nest without end either."""
    stack = [(value, depth)]
    while stack:
        item, level = stack.pop()
        if level > MAX_DEPTH:
            raise ValidationError(f"Request decode failed: nested deeper than {MAX_DEPTH} levels")
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, level + 1) for c in children if isinstance(c, dict | list))


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
    except RecursionError:  # msgspec's own limit, far past MAX_DEPTH
        raise ValidationError(
            f"Request decode failed: nested deeper than {MAX_DEPTH} levels"
        ) from None
    if not isinstance(data, dict):
        raise ValidationError("Request decode failed: expected a JSON object")
    try:
        return msgspec.convert(fold(data), kind)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"Request decode failed: {_consul_path(str(exc))}") from exc


def _consul_path(message: str) -> str:
    """msgspec says `$.checks[0].interval`; say it with the field names users wrote."""
    return message.replace("`$.", "`").replace("`$`", "the body")


async def body_of(req: Request, kind: type[T]) -> T:
    """The request's body as `kind`, decoded once per request: the ACL guard
    (which reads the names a write touches) and the handler share it."""
    parsed = req.parsed.get(kind)
    if parsed is None:
        raw = req.read_already()  # the fast write's: no coroutine to read it
        parsed = req.parsed[kind] = decode(raw if raw is not None else await req.body(), kind)
    result: T = parsed
    return result


def decode(raw: bytes, kind: type[T]) -> T:
    """Parse a JSON body into one of the core's definitions (`catalog/definitions.py`).

    Only the shape is checked here (JSON, types); the rules of what may be
    registered are the core's. A body in Consul's own spelling is decoded
    straight into its struct (canonical.py); any other body, and any the
    fast path cannot take whole, is folded first, as above.
    """
    fast = canonical.decode(raw, kind)
    if fast is not None:
        return fast
    result: T = _convert(raw, kind)
    return result


@functools.lru_cache(maxsize=256)  # clients send the same few waits ("5m", "30s") every time
def parse_wait(text: str) -> float:
    """`?wait=`: a Go duration, clamped to ten minutes; zero or less means the
    default five minutes, as in Consul (its parseWait takes any duration, its
    blockingQuery gives a timeout <= 0 the default): a watcher sending
    `wait=0s` must not come back at once and spin. Raises ValidationError."""
    try:
        seconds = _duration.parse(text, "wait")
    except ValidationError:
        raise ValidationError("Invalid wait time") from None
    return min(seconds, MAX_WAIT) if seconds > 0 else DEFAULT_WAIT


def index_and_wait(req: Request) -> tuple[int, float]:
    """A read's `?index` (0: none) and `?wait` (the default when absent).
    Raises ValidationError."""
    index = parse_index(req.arg("index")) if req.arg("index") else 0
    wait = parse_wait(req.arg("wait")) if req.arg("wait") else DEFAULT_WAIT
    return index, wait


def consistency(req: Request) -> bytes:
    """The read's consistency mode as Consul names it in
    `X-Consul-Effective-Consistency`: `stale` (`?stale`, or `?max_stale` over
    zero), `consistent`, else `leader`. Raises ValidationError for a bad
    `?max_stale` or stale with consistent, with Consul's texts."""
    stale, bound = req.has("stale"), req.arg("max_stale")
    if bound:
        try:
            stale = _duration.parse(bound, "max_stale") > 0 or stale
        except ValidationError:
            raise ValidationError(f'Invalid max_stale value "{bound}"') from None
    if stale and req.has("consistent"):
        raise ValidationError("Cannot specify ?stale with ?consistent, conflicting semantics.")
    return b"stale" if stale else b"consistent" if req.has("consistent") else b"leader"


# The spellings of Go's strconv.ParseBool, with which Consul reads ?passing.
_GO_TRUE: Final = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE: Final = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def passing(req: Request) -> bool:
    """`?passing` as Consul reads it: absent is false, no value is true,
    anything else is a Go boolean or a 400 ("nope" is not quietly true)."""
    if not req.has("passing"):
        return False
    value = req.arg("passing")
    if value == "" or value in _GO_TRUE:
        return True
    if value in _GO_FALSE:
        return False
    raise ValidationError("Invalid value for ?passing")


def parse_index(text: str) -> int:
    """`?index=`: an unsigned 64-bit integer in ASCII digits. `str.isdigit()`
    alone would take "²" (which int() refuses) and 5,000 digits (which int()
    refuses past 4,300); both are 400 here, as Consul answers."""
    if not (text.isascii() and text.isdigit()) or len(text) > 20 or int(text) > MAX_INDEX:
        raise ValidationError("Invalid index")
    return int(text)
