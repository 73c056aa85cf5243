"""The agent process: configuration, local ownership and the runtime that wires it all."""

from .config import AgentConfig
from .runtime import Agent

__all__ = ["Agent", "AgentConfig"]
