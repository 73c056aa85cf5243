"""What `/v1/agent/self` and `/v1/agent/members` report, in Consul's shapes.

Clients read a few of these fields to decide what the server can do:
`Config.Version` picks code paths in version-aware clients (an old number
sends them down their oldest-Consul paths), `Config.SessionTTLMin` is what
Patroni sizes its session TTL by, `Stats.consul.leader_addr` and `Member.Tags.role`
say "this is a server". So waypost reports the Consul version whose API it
speaks (`CONSUL_API_VERSION`), and its own version in a field of its own
(`Config.WaypostVersion`).
"""

from __future__ import annotations

from typing import Any, Final

from .. import __version__, _duration
from ..catalog import State
from ..catalog.model import CONSUL_SERVER_PORT
from .config import AgentConfig

CONSUL_API_VERSION: Final = "1.18.0"
LAN_PORT: Final = 8301
WAN_PORT: Final = 8302

JSON = dict[str, Any]


def self_description(
    config: AgentConfig,
    node_id: str,
    state: State,
    stats: dict[str, dict[str, float]],
    ttl_min: float,
) -> JSON:
    node = config.node_name()
    own = [m for m in members(config, state) if m["Name"] == node]
    leader = f"{config.advertise}:{CONSUL_SERVER_PORT}"
    stats_text = {k: {n: str(v) for n, v in s.items()} for k, s in stats.items()}
    stats_text["consul"] = {
        "server": "true",
        "leader": "true",
        "leader_addr": leader,
        "known_datacenters": "1",
    }
    return {
        "Config": {
            "Datacenter": config.datacenter,
            "PrimaryDatacenter": config.datacenter,
            "NodeName": node,
            "NodeID": node_id,
            "Server": True,
            "Revision": "waypost",
            "Version": CONSUL_API_VERSION,
            "WaypostVersion": __version__,
            "SessionTTLMin": round(ttl_min * 1e9),
        },
        "DebugConfig": _debug_config(config, node_id, ttl_min),
        "Coord": {"Vec": [0.0] * 8, "Error": 1.5, "Adjustment": 0.0, "Height": 1e-5},
        "Member": own[0] if own else {},
        "Meta": {"waypost-store": config.store_url().split("://")[0]},
        "Stats": stats_text,
        # No xDS server yet (the mesh issue): Consul's shape, with no port.
        "xDS": {
            "SupportedProxies": {"envoy": []},
            "Port": -1,
            "Ports": {"Plaintext": -1, "TLS": -1},
        },
    }


def _debug_config(config: AgentConfig, node_id: str, ttl_min: float) -> JSON:
    """The settings in Consul's DebugConfig names, where waypost has them."""
    return {
        "Datacenter": config.datacenter,
        "PrimaryDatacenter": config.datacenter,
        "NodeName": config.node_name(),
        "NodeID": node_id,
        "ServerMode": True,
        "DataDir": str(config.data_path() or ""),
        "AdvertiseAddrLAN": config.advertise,
        "DNSDomain": config.domain,
        "DNSAltDomain": config.alt_domain,
        "DNSOnlyPassing": config.dns_only_passing,
        "DNSRecursors": list(config.recursors),
        "EnableLocalScriptChecks": config.enable_script_checks,
        "SessionTTLMin": _duration.format(ttl_min),
        "Version": CONSUL_API_VERSION,
        "Revision": "waypost",
    }


def members(config: AgentConfig, state: State, wan: bool = False) -> list[JSON]:
    """Agents' nodes (those with a serfHealth check): alive (Status 1) while
    their liveness key exists, failed (4) otherwise. Every waypost agent
    serves the whole API, so each is a server (`role: consul`); on the WAN
    pool Consul names servers `<node>.<datacenter>`."""
    rows = []
    for node in state.agents():
        rows.append(
            {
                "Name": f"{node.name}.{node.datacenter}" if wan else node.name,
                "Addr": node.address,
                "Port": WAN_PORT if wan else LAN_PORT,
                "Tags": {
                    "dc": node.datacenter,
                    "role": "consul",
                    "port": str(CONSUL_SERVER_PORT),
                    "id": node.id,
                    "build": f"{CONSUL_API_VERSION}:waypost-{__version__}",
                    "vsn": "2",
                },
                "Status": 1 if state.is_live(node.name) else 4,
                "ProtocolMin": 1,
                "ProtocolMax": 5,
                "ProtocolCur": 2,
                "DelegateMin": 2,
                "DelegateMax": 5,
                "DelegateCur": 4,
            }
        )
    return rows
