"""The documented keys of a proxy's or an upstream's `Config` map, parsed and checked.

Consul leaves `Config` opaque; its Envoy integration reads a few keys from it
(`protocol`, `connect_timeout_ms`, `local_connect_timeout_ms`,
`local_request_timeout_ms`, `limits`, `passive_health_check`). waypost reads
those with Consul's spellings and adds a few of its own for what Consul puts
in service-router and service-resolver config entries (request and per-try
timeouts, retries, the balancing policy). Every default is Envoy's own.
A registration with a bad value is refused (400) naming the key, so a typo
never reaches Envoy as a NACK. Unknown keys are kept and ignored, as Consul does.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .. import _duration
from .._exceptions import ValidationError

PROTOCOLS = ("tcp", "http")
LB_POLICIES = ("least_request", "round_robin", "random")


class Limits(msgspec.Struct, frozen=True):
    """Circuit breakers (Envoy's defaults: 1024 each, 3 retries at once)."""

    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_concurrent_requests: int = 1024
    max_retries: int = 3


class PassiveHealthCheck(msgspec.Struct, frozen=True):
    """Outlier detection (Envoy's defaults)."""

    interval: float = 10.0
    max_failures: int = 5  # consecutive 5xx before an instance is ejected
    enforcing_consecutive_5xx: int = 100
    max_ejection_percent: int = 10
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0


class ProxyConfig(msgspec.Struct, frozen=True):
    protocol: str = "tcp"
    connect_timeout_ms: int = 5000
    local_connect_timeout_ms: int = 5000
    request_timeout_ms: int = 15000  # 0: no timeout (Envoy's route default is 15 s)
    local_request_timeout_ms: int = 15000
    per_try_timeout_ms: int = 0  # 0: each try may use the whole request timeout
    num_retries: int = 2  # one more than Envoy's default: a kill -9 can fail the first retry too
    retry_on: str = "connect-failure,reset,5xx"  # idempotent methods; others: connect-failure
    retry_budget_percent: float = 20.0
    retry_budget_min_concurrency: int = 3
    lb_policy: str = "least_request"
    limits: Limits = Limits()
    passive_health_check: PassiveHealthCheck = PassiveHealthCheck()

    @property
    def http(self) -> bool:
        return self.protocol == "http"


_INTS = (
    "connect_timeout_ms",
    "local_connect_timeout_ms",
    "request_timeout_ms",
    "local_request_timeout_ms",
    "per_try_timeout_ms",
    "num_retries",
    "retry_budget_min_concurrency",
)


def parse(*layers: dict[str, Any], field: str = "Config") -> ProxyConfig:
    """The settings of `layers` (later ones win: the proxy's Config, then an upstream's).

    Raises:
        ValidationError: naming the key and what it takes.
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    known = {k: v for k, v in merged.items() if k in ProxyConfig.__struct_fields__}
    for key in _INTS:
        if key in known and (not isinstance(known[key], int) or known[key] < 0):
            raise ValidationError(
                f"{field}.{key} must be a non-negative integer (milliseconds or a count)"
            )
    for key in ("limits", "passive_health_check"):
        if key in known:
            known[key] = _section(known[key], f"{field}.{key}")
    try:
        config = msgspec.convert(known, ProxyConfig, str_keys=True)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"{field}: {str(exc).replace('`$.', '`')}") from exc
    _check_choices(config, field)
    return config


def _section(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValidationError(f"{field} must be an object")
    out = dict(value)
    for key in ("interval", "base_ejection_time", "max_ejection_time"):
        if key in out:
            out[key] = _duration.parse(out[key], f"{field}.{key}")
    for key, item in out.items():
        if isinstance(item, int | float) and item < 0:
            raise ValidationError(f"{field}.{key} must not be negative")
    return out


def _check_choices(config: ProxyConfig, field: str) -> None:
    if config.protocol not in PROTOCOLS:
        raise ValidationError(
            f'{field}.protocol "{config.protocol}" is not supported (use "tcp" or "http"; '
            "http2 and grpc are not built yet)"
        )
    if config.lb_policy not in LB_POLICIES:
        raise ValidationError(f"{field}.lb_policy must be one of {', '.join(LB_POLICIES)}")
    if config.connect_timeout_ms == 0 or config.local_connect_timeout_ms == 0:
        raise ValidationError(f"{field}: connect timeouts must be at least 1 ms")
    for part in config.retry_on.split(","):
        if part.strip() not in RETRY_CONDITIONS:
            raise ValidationError(
                f'{field}.retry_on: "{part}" is not one of {", ".join(RETRY_CONDITIONS)}'
            )
    if not 0 < config.retry_budget_percent <= 100:
        raise ValidationError(f"{field}.retry_budget_percent must be above 0 and at most 100")


# Envoy's x-envoy-retry-on conditions that make sense between sidecars.
RETRY_CONDITIONS = (
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "reset-before-request",
)
