"""`waypost agent | services | members | connect | gateway | demo`: flags in, tables out."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import Any

import httpx

from .._address import split_address
from .._exceptions import ConfigError, WaypostError
from ..agent import AgentConfig
from ..agent.config import load_config_file
from . import connect

LOG_LEVELS = ("trace", "debug", "info", "warn", "warning", "error")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="waypost", description="Service discovery for Python.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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

    for name, text in (
        ("services", "list the services a running agent knows"),
        ("members", "list the agents' nodes"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument(
            "--http-addr", default="http://127.0.0.1:8500", metavar="URL", help="the agent to ask"
        )

    connect.add_commands(sub)

    demo = sub.add_parser(
        "demo", help="run the order/payment example locally: balancing, then failover"
    )
    demo.add_argument("--agent", metavar="URL", help="a running agent (default: start a --dev one)")
    demo.add_argument("--instances", type=int, default=3, help="payment instances (default 3)")
    demo.add_argument("--seconds", type=float, default=10.0, help="traffic phase (default 10)")
    demo.add_argument("--rate", type=float, default=20.0, help="orders per second (default 20)")
    demo.add_argument("--balancer", default="round_robin", help="balancer for payment calls")
    return parser


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
    """Defaults, then the config file, then the flags that were given."""
    settings: dict[str, Any] = load_config_file(args.config_file) if args.config_file else {}
    for field in AgentConfig.__struct_fields__:
        value = getattr(args, field, None)
        if isinstance(value, dict) and isinstance(settings.get(field), dict):
            value = {**settings[field], **value}  # NAME=VALUE flags add to the file's table
        if value is not None:
            settings[field] = value
    config = AgentConfig(**settings)
    split_address(config.http, "--http")
    if config.dns != "off":
        split_address(config.dns, "--dns")
    if config.grpc != "off":
        split_address(config.grpc, "--grpc")
    return config


def run_agent(config: AgentConfig) -> int:
    from ..agent import Agent

    level = {"trace": "DEBUG", "warn": "WARNING"}.get(config.log_level, config.log_level.upper())
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def main() -> None:
        agent = Agent(config)
        await agent.start()
        assert agent.http_address is not None
        host, port = agent.http_address
        where = f"node {agent.local.name}, datacenter {config.datacenter}"
        print(f"waypost agent: {where}, store {config.display_store()}")
        print(f"HTTP API: http://{_hostport(host, port)}")
        if agent.dns_address is not None:
            print(f"DNS: {_hostport(*agent.dns_address)}")
        if agent.grpc_address is not None:
            print(f"gRPC (xDS): {_hostport(*agent.grpc_address)}")
        print("waypost agent running")
        sys.stdout.flush()
        await agent.run()

    asyncio.run(main())
    return 0


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _get(base: str, path: str) -> Any:
    try:
        response = httpx.get(base.rstrip("/") + path, timeout=10)
    except httpx.HTTPError as exc:
        raise ConfigError(f"cannot reach the agent at {base}: {exc}") from exc
    if response.status_code != 200:
        raise ConfigError(f"the agent at {base} answered {response.status_code}: {response.text}")
    return response.json()


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [list(headers)] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def show_services(base: str) -> int:
    rows = []
    for name in _get(base, "/v1/catalog/services"):
        entries = _get(base, f"/v1/health/service/{name}")
        statuses = [_worst(e["Checks"]) for e in entries]
        rows.append(
            (
                name,
                len(entries),
                statuses.count("passing"),
                statuses.count("warning"),
                statuses.count("critical"),
            )
        )
    print_table(("SERVICE", "INSTANCES", "PASSING", "WARNING", "CRITICAL"), rows)
    return 0


def show_members(base: str) -> int:
    rows = [
        (
            m["Name"],
            m["Addr"],
            {1: "alive", 4: "failed"}.get(m["Status"], "left"),
            m["Tags"].get("dc", ""),
        )
        for m in _get(base, "/v1/agent/members")
    ]
    print_table(("NODE", "ADDRESS", "STATUS", "DC"), rows)
    return 0


def _worst(checks: list[dict[str, Any]]) -> str:
    order = ("passing", "warning", "critical")
    return max(
        (c["Status"] for c in checks),
        key=lambda s: order.index(s) if s in order else 2,
        default="passing",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "agent":
            return run_agent(agent_config(args))
        if args.command == "services":
            return show_services(args.http_addr)
        if args.command == "members":
            return show_members(args.http_addr)
        if args.command in ("connect", "gateway"):
            return connect.run(args)
        if args.command == "demo":
            from .demo import run_demo

            return run_demo(
                agent=args.agent,
                instances=args.instances,
                seconds=args.seconds,
                rate=args.rate,
                balancer=args.balancer,
            )
    except WaypostError as exc:
        print(f"waypost: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
