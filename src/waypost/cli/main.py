"""`waypost`: the agent, and the commands that talk to one. Flags in, tables out.

    waypost agent ...            run the registry agent (cli/agent.py)
    waypost services | members   read a running agent (cli/commands.py)
    waypost register | deregister | watch | events
    waypost connect | gateway    Envoy for the mesh (cli/connect.py)
    waypost k8s-sync             Kubernetes <-> registry (cli/k8s_sync.py)
    waypost demo                 the order/payment scenario (cli/demo.py)

Every command that talks to an agent takes `--http-addr` (Consul's name; also
`CONSUL_HTTP_ADDR`), `--token` (`CONSUL_HTTP_TOKEN`) and `--token-file`
(`CONSUL_HTTP_TOKEN_FILE`; a file wins over a token, as in Consul). Errors
print one line, `waypost: error: ...`, and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from .._exceptions import WaypostError
from . import commands, connect, k8s_sync
from .agent import add_agent_parser, agent_config, run_agent
from .client import ADDR_ENV, TOKEN_ENV, AgentClient


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="waypost", description="Service discovery for Python.")
    parser.add_argument("--version", action="version", version=f"waypost {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_agent_parser(sub)
    _client(sub, "services", "list the services a running agent knows, with their health")
    _client(sub, "members", "list the agents' nodes")
    _register_parser(sub)
    deregister = _client(sub, "deregister", "remove a service instance (by ID or file)")
    deregister.add_argument(
        "target", metavar="ID|FILE", help="a service ID, or a registration file"
    )
    watch = _client(sub, "watch", "a live table of one service's instances")
    watch.add_argument("service", metavar="SERVICE")
    watch.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    events = _client(sub, "events", "what happened: registrations, check transitions, reaps")
    events.add_argument("service", metavar="SERVICE", nargs="?", help="only this service")
    events.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    connect.add_commands(sub)
    k8s_sync.add_parser(sub)
    _demo_parser(sub)
    return parser


def _client(sub: argparse._SubParsersAction, name: str, text: str) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    cmd: argparse.ArgumentParser = sub.add_parser(name, help=text, description=text)
    cmd.add_argument(
        "--http-addr",
        "-http-addr",
        metavar="ADDR",
        help=f"the agent, HOST:PORT or a URL (default ${ADDR_ENV}, else 127.0.0.1:8500)",
    )
    cmd.add_argument("--token", "-token", help=f"ACL token (default ${TOKEN_ENV})")
    cmd.add_argument(
        "--token-file",
        "-token-file",
        metavar="FILE",
        help="a file holding the token; wins over --token (default $CONSUL_HTTP_TOKEN_FILE)",
    )
    return cmd


def _register_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    reg = _client(sub, "register", "register a service instance, from a JSON file or flags")
    reg.add_argument("file", metavar="FILE", nargs="?", help='JSON: {"service": {...}}')
    reg.add_argument("--name", help="service name")
    reg.add_argument("--id", dest="service_id", help="instance ID (default: the name)")
    reg.add_argument("--port", type=int, help="port the instance listens on")
    reg.add_argument("--address", help="address (default: the agent's node address)")
    reg.add_argument("--tag", dest="tags", action="append", default=[], help="repeatable")
    reg.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE", help="repeatable")
    reg.add_argument("--check-http", metavar="URL", help="an HTTP check on this URL")
    reg.add_argument("--check-interval", default="10s", metavar="DURATION", help="default 10s")
    reg.add_argument(
        "--check-ttl", metavar="DURATION", help="a TTL check (heartbeat with check pass)"
    )
    reg.add_argument(
        "--deregister-after",
        metavar="DURATION",
        help="remove it after its check is critical this long",
    )


def _demo_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    demo = sub.add_parser(
        "demo", help="run the order/payment example locally: balancing, then failover"
    )
    demo.add_argument(
        "--http-addr",
        "--agent",
        dest="agent",
        metavar="URL",
        help="a running agent (default: start a --dev one)",
    )
    demo.add_argument(
        "--instances", type=int, default=3, help="payment instances, 2 to 20 (default 3)"
    )
    demo.add_argument(
        "--seconds", type=float, default=10.0, help="traffic phase, 2 to 600 (default 10)"
    )
    demo.add_argument(
        "--rate", type=float, default=20.0, help="orders per second, 1 to 500 (default 20)"
    )
    demo.add_argument("--balancer", default="round_robin", help="balancer for payment calls")


def _run_register(args: argparse.Namespace, agent: AgentClient) -> int:
    if args.file and args.name:
        raise WaypostError("register: give a FILE or --name, not both")
    if args.file:
        bodies = commands.registrations_from_file(args.file)
    elif args.name and args.port is not None:
        bodies = [
            commands.registration_from_flags(
                args.name,
                args.port,
                args.service_id,
                args.address,
                args.tags,
                args.meta,
                args.check_http,
                args.check_ttl,
                args.check_interval,
                args.deregister_after,
            )
        ]
    else:
        raise WaypostError("register: give a FILE, or --name and --port")
    return commands.register(agent, bodies, sys.stdout)


def _run_client(args: argparse.Namespace) -> int:
    with AgentClient(args.http_addr, args.token, token_file=args.token_file) as agent:
        out = sys.stdout
        if args.command == "services":
            return commands.services(agent, out)
        if args.command == "members":
            return commands.members(agent, out)
        if args.command == "register":
            return _run_register(args, agent)
        if args.command == "deregister":
            target = args.target
            is_file = target.endswith(".json") and not target.startswith("-")
            ids = commands.ids_from_file(target) if is_file else [target]
            return commands.deregister(agent, ids, out)
        if args.command == "watch":
            return commands.watch(agent, args.service, out, args.count)
        return commands.events(agent, args.service, args.follow, out)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(
        agent=args.agent,
        instances=args.instances,
        seconds=args.seconds,
        rate=args.rate,
        balancer=args.balancer,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "agent":
            return run_agent(agent_config(args))
        if args.command == "demo":
            return _run_demo(args)
        if args.command in ("connect", "gateway"):
            return connect.run(args)
        if args.command == "k8s-sync":
            return k8s_sync.run(args)
        return _run_client(args)
    except WaypostError as exc:
        print(f"waypost: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
