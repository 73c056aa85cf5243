"""Go durations ("10s", "1m30s") and Consul's integer nanoseconds, in seconds."""

from __future__ import annotations

import re
from typing import Final

from ._exceptions import ValidationError

_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS: Final = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse(value: object, field: str) -> float:
    """A Go duration string or integer nanoseconds, in seconds.

    Raises:
        ValidationError: naming the field and the bad value.
    """
    if isinstance(value, bool):
        raise ValidationError(f"{field}: invalid duration {value!r}")
    if isinstance(value, int | float):
        return float(value) / 1e9
    if not isinstance(value, str):
        raise ValidationError(f"{field}: invalid duration {value!r}")
    text = value.strip()
    if text in ("", "0"):
        return 0.0
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    parts = _PART.findall(body)
    if not parts or "".join(n + u for n, u in parts) != body:
        raise ValidationError(
            f'{field}: invalid duration "{value}" '
            '(expected a number with a unit, e.g. "10s" or "1m30s")'
        )
    return sign * sum(float(n) * _UNITS[u] for n, u in parts)
