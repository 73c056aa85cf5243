"""The agent's DNS interface: Consul-style names answered from the catalog."""

from .server import DnsServer

__all__ = ["DnsServer"]
