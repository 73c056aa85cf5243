"""Durations as Go writes them ("1m30s", "1.5h", "300ms"): one parser, one formatter.

Consul reads every duration with Go's `time.ParseDuration`, so every place
waypost reads one (check bodies, `?wait=`, DNS TTL flags, etcd URL options, the
client's check helpers) uses this grammar, and every place that writes one uses
`format`:

    duration := [ "+" | "-" ] ( "0" | part { part } )
    part     := number unit                       e.g. "1m30s" = "1m" "30s"
    number   := digits [ "." [ digits ] ] | "." digits
    unit     := "ns" | "us" | "µs" | "μs" | "ms" | "s" | "m" | "h"

Beyond Go's strings, as Consul's JSON decoding does: an integer is a count of
nanoseconds (`"Interval": 10000000000`), and the empty string is zero (a field
that was not set). A caller may also let a number without a unit mean seconds
(`timeout=2` in an etcd URL); elsewhere, as in Go, only "0" may go without one.
Values beyond Go's range (about 292 years) are refused.

A top-level private module: any layer may import it; it imports no package.
"""

from __future__ import annotations

import math
import re
from typing import Final

from ._exceptions import ValidationError

# ASCII digits only: `\d` alone also matches "²" and "٣", which float() then
# refuses or reads, where Go refuses them all.
_PART: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)", re.ASCII)
_NUMBER: Final = re.compile(r"\d+(?:\.\d*)?|\.\d+", re.ASCII)
_NANOSECONDS: Final = {  # per unit: summing nanoseconds keeps "10us" exact
    "ns": 1.0,
    "us": 1e3,
    "µs": 1e3,  # U+00B5 MICRO SIGN, what Go prints
    "μs": 1e3,  # U+03BC GREEK SMALL LETTER MU, which Go also reads
    "ms": 1e6,
    "s": 1e9,
    "m": 60e9,
    "h": 3600e9,
}
MAX_SECONDS: Final = (2**63 - 1) / 1e9  # Go's time.Duration is int64 nanoseconds
_NS_PER: Final = {"µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000}


def parse(value: object, field: str, *, unitless: str | None = None) -> float:
    """Seconds in a Go duration string, or in an integer count of nanoseconds.

    Args:
        value: "1m30s", "1.5h", "300ms", "10us", "-5s", "0", "" (zero), or an int
            (nanoseconds, as Consul reads JSON numbers).
        field: What the value is, for the error message ("Interval", "wait").
        unitless: The unit of a number written without one ("s": "2" is two
            seconds); None refuses such numbers, except "0", as Go does.

    Raises:
        ValidationError: naming the field and the value, when it is not a duration.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return _in_range(value / 1e9 if abs(value) < 2**63 else math.inf, value, field)
    if not isinstance(value, str):
        raise _invalid(value, field)
    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    body = text[1:] if text[:1] in ("+", "-") else text
    if not text or body == "0":
        return 0.0
    if unitless is not None and _NUMBER.fullmatch(body):
        return _in_range(sign * float(body) * _NANOSECONDS[unitless] / 1e9, value, field)
    parts = _PART.findall(body)
    if not parts or "".join(n + u for n, u in parts) != body:
        raise _invalid(value, field)
    nanoseconds = sum(float(n) * _NANOSECONDS[u] for n, u in parts)
    return _in_range(sign * nanoseconds / 1e9, value, field)


def format(seconds: float) -> str:  # shadows the builtin here only: call it _duration.format
    """A duration as Go's `Duration.String()` writes it: "1m30s", "1.5s", "250ms", "0s".

    Args:
        seconds: The duration, rounded to whole nanoseconds.
    """
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    sign, ns = ("-" if ns < 0 else ""), abs(ns)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    for unit in ("µs", "ms"):
        if ns < _NS_PER[unit] * 1_000:
            return f"{sign}{_fraction(ns, _NS_PER[unit])}{unit}"
    minutes, rest = divmod(ns, 60 * _NS_PER["s"])
    hours, minutes = divmod(minutes, 60)
    text = f"{_fraction(rest, _NS_PER['s'])}s"
    if hours or minutes:
        text = f"{minutes}m{text}"
    if hours:
        text = f"{hours}h{text}"
    return sign + text


def _fraction(ns: int, unit: int) -> str:
    """`ns` in `unit`s, with the fraction Go would print (trailing zeros dropped)."""
    whole, rest = divmod(ns, unit)
    if not rest:
        return str(whole)
    digits = str(rest).rjust(len(str(unit)) - 1, "0").rstrip("0")
    return f"{whole}.{digits}"


def _in_range(seconds: float, value: object, field: str) -> float:
    if not math.isfinite(seconds) or abs(seconds) > MAX_SECONDS:
        raise ValidationError(f'{field}: duration "{value}" is out of range (at most 2562047h)')
    return seconds


def _invalid(value: object, field: str) -> ValidationError:
    shown = f'"{value}"' if isinstance(value, str) else repr(value)
    return ValidationError(
        f"{field}: invalid duration {shown} "
        '(expected a number with a unit, e.g. "10s", "1m30s" or "300ms")'
    )
