"""Storage backends, picked by URL scheme and imported only when used."""

from __future__ import annotations

import importlib
from typing import Final

from .._exceptions import ConfigError
from .base import ApplyFn, Condition, Entry, Storage, StoreHealth, prefix_end

BACKENDS: Final = {
    "memory": "waypost.storage.memory:MemoryStorage",
    "sqlite": "waypost.storage.sqlite:SqliteStorage",
    "etcd": "waypost.storage.etcd:EtcdStorage",
    "etcds": "waypost.storage.etcd:EtcdStorage",
}


def open_storage(url: str) -> Storage:
    """Build the backend a store URL names (`sqlite:///path`, `memory://`, `etcd://h:2379`).

    Raises:
        ConfigError: the scheme is unknown or the backend's dependency is missing.
    """
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in BACKENDS:
        known = ", ".join(f"{s}://" for s in BACKENDS)
        raise ConfigError(f"unknown store URL {url!r}: expected one of {known}")
    module_name, _, class_name = BACKENDS[scheme].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"the {scheme}:// store needs an extra dependency ({exc.name}): "
            f"pip install 'waypost[{scheme.rstrip('s')}]'"
        ) from exc
    backend: Storage = getattr(module, class_name)(url)
    return backend


__all__ = [
    "BACKENDS",
    "ApplyFn",
    "Condition",
    "Entry",
    "Storage",
    "StoreHealth",
    "open_storage",
    "prefix_end",
]
