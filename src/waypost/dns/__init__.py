"""The agent's DNS interface: Consul-style names answered from the catalog."""

from .server import DnsConfig, DnsServer

__all__ = ["DnsConfig", "DnsServer"]
