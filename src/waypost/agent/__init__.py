"""The agent process: configuration, local ownership and the runtime that wires it all.

`Agent` (agent/runtime.py) is imported on first use, not with the package: the
runtime pulls in uvicorn, the API, storage and the mesh, and `waypost services`
or `--help`, which import the package for its configuration, must not pay for
them (PEP 562 module `__getattr__`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import _lazy
from .config import AgentConfig

if TYPE_CHECKING:
    from .runtime import Agent

__all__ = ["Agent", "AgentConfig"]


__getattr__ = _lazy.attributes(__name__, {"Agent": ".runtime"})
