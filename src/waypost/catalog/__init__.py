"""The registry core: records, the indexed in-memory state, watches, the catalog.

`Catalog` and `State` are imported on first use (PEP 562 module `__getattr__`):
the records (catalog/model.py) are light, but the catalog pulls in storage and
the write plans, which `waypost services` (it only ranks check statuses) must
not pay for at start-up.
"""

from __future__ import annotations

import typing

from .. import _lazy
from .model import Check, CheckDefinition, Node, Service, ServiceAddress, Weights

if typing.TYPE_CHECKING:
    from .catalog import Catalog
    from .state import State

__all__ = [
    "Catalog",
    "Check",
    "CheckDefinition",
    "Node",
    "Service",
    "ServiceAddress",
    "State",
    "Weights",
]


__getattr__ = _lazy.attributes(__name__, {"Catalog": ".catalog", "State": ".state"})
