"""The agent process: configuration, local ownership and the runtime that wires it all.

`Agent` (agent/runtime.py) is imported on first use, not with the package: the
runtime pulls in uvicorn, the API, storage and the mesh, and `waypost services`
or `--help`, which import the package for its configuration, must not pay for
them (PEP 562 module `__getattr__`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import AgentConfig

if TYPE_CHECKING:
    from .runtime import Agent

__all__ = ["Agent", "AgentConfig"]


def __getattr__(name: str) -> Any:
    if name == "Agent":
        from .runtime import Agent

        return Agent
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
