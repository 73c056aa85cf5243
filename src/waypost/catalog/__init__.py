"""The registry core: records, the indexed in-memory state, watches, the catalog."""

from .catalog import Catalog
from .model import Check, CheckDefinition, Node, Service, ServiceAddress, Weights
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
