"""`waypost agent`: its flags, the settings they make, and the process that runs it.

Settings come from the defaults, then `--config-file`, then the flags given;
each value is checked the same way wherever it came from (agent/config.py),
so `--node 'a b'` and `node = "a b"` fail alike, naming the flag or the file.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import msgspec

from .._exceptions import ConfigError
from ..agent import AgentConfig
from ..agent.config import LOG_LEVELS, AclSettings, flag_name, load_config_file, validate

log = logging.getLogger("waypost.agent")


def add_agent_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    agent = sub.add_parser(
        "agent", help="run the registry agent (Consul-compatible HTTP API and DNS)"
    )
    agent.add_argument(
        "--config-file", metavar="FILE", help="TOML file with the same settings as the flags"
    )
    agent.add_argument(
        "--http",
        metavar="ADDR:PORT",
        help="HTTP API address (default 127.0.0.1:8500; port 0 picks one)",
    )
    agent.add_argument(
        "--dns", metavar="ADDR:PORT", help="DNS address (default 127.0.0.1:8600; 'off' disables)"
    )
    agent.add_argument(
        "--data-dir",
        metavar="DIR",
        help="where the embedded store lives (default: a per-user data dir)",
    )
    agent.add_argument(
        "--store", metavar="URL", help="sqlite:///path, memory:// or etcd://h1:2379,h2:2379"
    )
    agent.add_argument(
        "--dev", action="store_true", default=None, help="in-memory store, for development"
    )
    agent.add_argument(
        "--node", metavar="NAME", help="this agent's node name (default: the host name)"
    )
    agent.add_argument("--datacenter", metavar="NAME", help="datacenter name (default dc1)")
    agent.add_argument(
        "--advertise", metavar="ADDR", help="the node address others see (default 127.0.0.1)"
    )
    agent.add_argument("--log-level", choices=LOG_LEVELS, help="default info")
    agent.add_argument(
        "--log-json", action="store_true", default=None, help="log JSON lines (Consul's keys)"
    )
    agent.add_argument(
        "--enable-script-checks",
        action="store_true",
        default=None,
        help="allow checks that run commands",
    )
    agent.add_argument("--domain", metavar="DOMAIN", help="DNS domain (default consul.)")
    agent.add_argument(
        "--alt-domain", metavar="DOMAIN", help="a second DNS domain answered the same way"
    )
    agent.add_argument(
        "--dns-only-passing",
        action="store_true",
        default=None,
        help="DNS leaves out warning instances too",
    )
    agent.add_argument(
        "--recursor",
        dest="recursors",
        action="append",
        metavar="ADDR:PORT",
        help="forward other names here",
    )
    agent.add_argument(
        "--dns-service-ttl",
        action=_KeyValue,
        metavar="NAME=DURATION",
        help="DNS TTL of a service's records, e.g. web=10s or '*=5s' (repeatable; default 0)",
    )
    agent.add_argument(
        "--dns-node-ttl", metavar="DURATION", help="DNS TTL of node records (default 0s)"
    )
    agent.add_argument(
        "--session-ttl-min",
        metavar="DURATION",
        help="the shortest session TTL accepted (default 10s, as Consul)",
    )
    agent.add_argument(
        "--check-update-interval",
        metavar="DURATION",
        help="how often a check's output is stored while its status stays "
        "(default 5m, as Consul; 0s stores every change)",
    )
    agent.add_argument(
        "--grpc",
        metavar="ADDR:PORT",
        help="xDS server for Envoy and proxyless gRPC (default 127.0.0.1:8502; 'off' disables)",
    )
    agent.add_argument(
        "--leaf-cert-ttl",
        metavar="DURATION",
        help="lifetime of mesh leaf certificates (default 72h)",
    )
    agent.add_argument("--sidecar-min-port", type=int, metavar="PORT", help="default 21000")
    agent.add_argument("--sidecar-max-port", type=int, metavar="PORT", help="default 21255")
    _security_flags(agent)


def _security_flags(agent: argparse.ArgumentParser) -> None:
    """ACLs, TLS and per-client limits (docs/security.md). Tokens are never
    flags: they come from the config file, a file of their own, or the environment."""
    agent.add_argument(
        "--acl-default-policy",
        choices=("allow", "deny"),
        help="turn ACLs on, with this policy for what no rule covers",
    )
    agent.add_argument("--https", metavar="ADDR:PORT", help="HTTPS API address (TLS)")
    agent.add_argument(
        "--grpc-tls",
        metavar="ADDR:PORT",
        help="the xDS server over TLS too (Consul's grpc_tls), with the --tls-* files",
    )
    agent.add_argument("--tls-cert-file", metavar="FILE", help="the HTTPS certificate (PEM)")
    agent.add_argument("--tls-key-file", metavar="FILE", help="its private key (PEM)")
    agent.add_argument("--tls-ca-file", metavar="FILE", help="CA that signs client certificates")
    agent.add_argument(
        "--tls-verify-incoming",
        action="store_true",
        default=None,
        help="HTTPS clients must present a certificate signed by --tls-ca-file",
    )
    agent.add_argument(
        "--http-max-conns-per-client",
        type=int,
        metavar="N",
        help="connections one client address may hold (default 200; 0: no limit)",
    )
    agent.add_argument(
        "--dns-tcp-max-conns-per-client",
        type=int,
        metavar="N",
        help="DNS TCP connections one client address may hold (default 32; 0: no limit)",
    )
    agent.add_argument(
        "--dns-udp-answer-limit",
        type=int,
        metavar="N",
        help="records in a UDP answer (default 0: as many as fit 1,232 bytes)",
    )


class _KeyValue(argparse.Action):
    """`--flag K=V`, repeatable, collected into a dict."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        value: Any,
        option: str | None = None,
    ) -> None:
        key, sep, item = str(value).partition("=")
        if not sep or not key:
            parser.error(f"{option} {value!r}: expected NAME=VALUE")
        table = dict(getattr(namespace, self.dest, None) or {})
        table[key] = item
        setattr(namespace, self.dest, table)


def agent_config(args: argparse.Namespace) -> AgentConfig:
    """Defaults, then the config file, then the flags that were given.

    Raises:
        ConfigError: naming the flag (`--node 'a b': ...`) or the file's setting.
    """
    settings: dict[str, Any] = load_config_file(args.config_file) if args.config_file else {}
    flags = {}
    for field in AgentConfig.__struct_fields__:
        value = getattr(args, field, None)
        if value is not None:
            flags[field] = value
    validate(flags, flag_name)
    for field, value in flags.items():
        if isinstance(value, dict) and isinstance(settings.get(field), dict):
            value = {**settings[field], **value}  # NAME=VALUE flags add to the file's table
        settings[field] = value
    if args.acl_default_policy:  # the flag turns ACLs on
        acl = settings.get("acl") or AclSettings()
        settings["acl"] = msgspec.structs.replace(
            acl, enabled=True, default_policy=args.acl_default_policy
        )
    try:
        config = AgentConfig(**settings)
    except TypeError as exc:  # not reachable through the parser; a clear error all the same
        raise ConfigError(str(exc)) from exc
    config.check_security()
    return config


def run_agent(config: AgentConfig) -> int:
    # Imported here, not with the module: the parser is built for every
    # command, and only this one runs an event loop and the agent's runtime.
    import asyncio

    from ..agent import Agent
    from ..agent.logs import setup as setup_logging

    setup_logging(config.log_level, config.log_json)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def main() -> None:
        agent = Agent(config)
        await agent.start()
        where = f"node {agent.local.name}, datacenter {config.datacenter}"
        print(f"waypost agent: {where}, store {config.display_store()}")
        if agent.http_address is not None:
            print(f"HTTP API: http://{_hostport(*agent.http_address)}")
        if agent.https_address is not None:
            print(f"HTTPS API: https://{_hostport(*agent.https_address)}")
        if agent.dns_address is not None:
            print(f"DNS: {_hostport(*agent.dns_address)}")
        if agent.grpc_address is not None:
            print(f"gRPC (xDS): {_hostport(*agent.grpc_address)}")
        if agent.grpc_tls_address is not None:
            print(f"gRPC TLS (xDS): {_hostport(*agent.grpc_tls_address)}")
        print("waypost agent running")
        sys.stdout.flush()
        await agent.run()

    asyncio.run(main())
    return 0


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
