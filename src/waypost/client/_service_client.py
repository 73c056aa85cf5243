"""`AsyncServiceClient` / `ServiceClient`: an httpx client bound to one service.

They are `httpx.AsyncClient` / `httpx.Client` subclasses with
`base_url="http://<service>"` and a waypost transport, so every httpx feature
(streaming, auth, event hooks, timeouts) works and every method returns an
`httpx.Response`:

    async with AsyncServiceClient("payment", discovery=d, balancer="peak_ewma") as c:
        response = await c.post("/api/payments", json={"amount": 100})
"""

from __future__ import annotations

from typing import Any

import httpx

from ._balancers import Balancer
from ._discovery import AsyncDiscovery, Discovery
from ._policy import ClientOptions, HedgePolicy, RetryPolicy
from ._router import Router
from ._transport import AsyncTransport, Transport

_OPTION_NAMES = frozenset(ClientOptions.__dataclass_fields__)


def _split(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate `ClientOptions` fields from httpx client arguments."""
    options = {k: v for k, v in kwargs.items() if k in _OPTION_NAMES}
    rest = {k: v for k, v in kwargs.items() if k not in _OPTION_NAMES}
    return options, rest


def _options(
    retries: int | None, hedge: HedgePolicy | float | None, kw: dict[str, Any]
) -> ClientOptions:
    if retries is not None:
        kw["retry"] = RetryPolicy(attempts=retries + 1)
    if isinstance(hedge, int | float) and not isinstance(hedge, bool):
        kw["hedge"] = HedgePolicy(delay=float(hedge))
    elif hedge is not None:
        kw["hedge"] = hedge
    return ClientOptions(**kw)


class AsyncServiceClient(httpx.AsyncClient):
    """An `httpx.AsyncClient` whose requests go to instances of one service.

    Args:
        service: Service name.
        discovery: Where instances come from.
        balancer: Balancer name (`peak_ewma`, `p2c`, `round_robin`, ...).
        retries: Retries after the first attempt (default 2).
        hedge: Hedge delay in seconds, or a `HedgePolicy`, or None.
        transport: The real httpx transport underneath.
        **kwargs: `ClientOptions` fields (`attempt_timeout`, `total_timeout`,
            `breaker`, `outlier`, `zone`, `tag`, `seed`, ...) and httpx client
            arguments (`timeout`, `headers`, ...).
    """

    def __init__(
        self,
        service: str,
        *,
        discovery: AsyncDiscovery,
        balancer: str | Balancer = "peak_ewma",
        retries: int | None = None,
        hedge: HedgePolicy | float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        **kwargs: Any,
    ) -> None:
        opts, rest = _split(kwargs)
        opts["balancer"] = balancer
        self.service = service
        self.waypost_transport = AsyncTransport(
            discovery,
            transport=transport,
            services={service},
            options=_options(retries, hedge, opts),
        )
        super().__init__(base_url=f"http://{service}", transport=self.waypost_transport, **rest)

    @property
    def router(self) -> Router:
        """The service's router, for `pick()`/`report()` and statistics."""
        return self.waypost_transport.state(self.service).router


class ServiceClient(httpx.Client):
    """The blocking twin of `AsyncServiceClient` (an `httpx.Client`).

    Args:
        service: Service name.
        discovery: Where instances come from.
        balancer: Balancer name.
        retries: Retries after the first attempt (default 2).
        transport: The real httpx transport underneath.
        **kwargs: `ClientOptions` fields and httpx client arguments.
    """

    def __init__(
        self,
        service: str,
        *,
        discovery: Discovery,
        balancer: str | Balancer = "peak_ewma",
        retries: int | None = None,
        transport: httpx.BaseTransport | None = None,
        **kwargs: Any,
    ) -> None:
        opts, rest = _split(kwargs)
        opts["balancer"] = balancer
        self.service = service
        self.waypost_transport = Transport(
            discovery,
            transport=transport,
            services={service},
            options=_options(retries, None, opts),
        )
        super().__init__(base_url=f"http://{service}", transport=self.waypost_transport, **rest)

    @property
    def router(self) -> Router:
        """The service's router, for `pick()`/`report()` and statistics."""
        return self.waypost_transport.state(self.service).router
