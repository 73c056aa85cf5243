"""waypost: service discovery for Python.

The agent (`waypost agent`) is a Consul-compatible registry with health checks
and DNS; the client library (`waypost.AsyncDiscovery`, `waypost.ServiceClient`,
...) finds healthy instances and balances requests across them.

The client's names are imported on first use (PEP 562 module `__getattr__`):
every `waypost ...` command imports this package, and most of them (the agent,
`services`, `--help`) never use the client library, which costs a tenth of a
second to import (httpx, asyncio, the balancers).
"""

from __future__ import annotations

import typing

from . import _lazy
from ._exceptions import (
    CircuitOpen,
    ClientError,
    ConfigError,
    NoHealthyInstances,
    NotFoundError,
    RegistrationError,
    RegistryUnavailable,
    RetryBudgetExhausted,
    StorageError,
    StoreUnavailable,
    ValidationError,
    WaypostError,
)

if typing.TYPE_CHECKING:
    from .client import (
        AsyncDiscovery,
        AsyncServiceClient,
        AsyncTransport,
        Discovery,
        HttpCheck,
        Instance,
        Registration,
        ServiceClient,
        TcpCheck,
        Transport,
        TtlCheck,
    )

__version__ = "0.1.0"

__all__ = [
    "AsyncDiscovery",
    "AsyncServiceClient",
    "AsyncTransport",
    "CircuitOpen",
    "ClientError",
    "ConfigError",
    "Discovery",
    "HttpCheck",
    "Instance",
    "NoHealthyInstances",
    "NotFoundError",
    "Registration",
    "RegistrationError",
    "RegistryUnavailable",
    "RetryBudgetExhausted",
    "ServiceClient",
    "StorageError",
    "StoreUnavailable",
    "TcpCheck",
    "Transport",
    "TtlCheck",
    "ValidationError",
    "WaypostError",
    "__version__",
]


# The names `__getattr__` loads from waypost.client: those `__all__` lists
# and this module does not define.
_CLIENT = frozenset(__all__) - globals().keys()
__getattr__ = _lazy.attributes(__name__, dict.fromkeys(_CLIENT, ".client"))


def __dir__() -> list[str]:
    return sorted(set(globals()) | _CLIENT)
