"""waypost: service discovery for Python.

The agent (`waypost agent`) is a Consul-compatible registry with health checks
and DNS; the client library (`waypost.AsyncDiscovery`, `waypost.ServiceClient`,
...) finds healthy instances and balances requests across them.
"""

from __future__ import annotations

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
