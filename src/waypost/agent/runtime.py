"""The agent process: storage, catalog, health runner, HTTP API and DNS, wired and run.

This is the one place that wires: every adapter gets only what it uses (the
catalog, the local agent's operations, a statistics callable, its settings),
and no module imports this one but the `waypost.agent` package that exports it
(tests/test_layering.py checks).

`Agent.start()` opens the store (replaying what it holds), writes this agent's
node and liveness, resumes the checks it owns and binds its listeners; only
then does it report the addresses it serves on. `stop()` undoes it in reverse.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any, Final

import uvicorn

from .. import _duration, _tlsfiles
from .._address import split_address
from .._exceptions import ConfigError
from .._lockfile import LockFile
from ..api.acl import AclApi
from ..api.agent import AgentEndpoints, LogStream
from ..api.app import AgentApp, Mount
from ..api.connect import ConnectApi
from ..api.consul import ConsulApi
from ..api.fastpath import FastReads
from ..api.fastwrite import FastWrites
from ..api.internal_ui import UiEndpoints
from ..api.kv import KvApi
from ..api.metrics import Metrics
from ..api.protocol import ConnectionLimiter, guarded_protocol
from ..api.session import SessionApi
from ..api.ui_intentions import IntentionsView
from ..catalog import Catalog, Node
from ..catalog.timeline import Timeline
from ..health import HealthRunner
from ..storage import open_storage
from ..ui import mount as mount_ui
from . import describe
from .config import AgentConfig
from .datadir import LOCK_FILE, node_id
from .local import LocalAgent
from .security import HttpsTls, Security
from .sessions import SessionRunner

log = logging.getLogger("waypost.agent")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the agent shuts everything down itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        """Raises ConfigError for an unusable setting, or a data dir another agent holds."""
        self.config = config
        self.storage = open_storage(config.store_url())  # checks the URL; opens nothing yet
        self._lock = _lock_data_dir(config)  # before anything touches the data dir
        try:
            self._build(config)
        except BaseException:
            if self._lock is not None:
                self._lock.release()
            raise

    def _build(self, config: AgentConfig) -> None:
        self.catalog = Catalog(self.storage)
        self.timeline = Timeline(self.catalog.state)
        self.catalog.subscribe_records(self.timeline.record)
        node = Node(
            name=config.node_name(),
            id=_node_id(config),
            address=config.advertise,
            datacenter=config.datacenter,
        )
        self.security = Security(config, self.catalog, node.name)
        identity = self.security.identity  # the agent token's, with ACLs on
        self.runner = HealthRunner(
            self.catalog,
            node.name,
            enable_scripts=config.enable_script_checks,
            output_interval=config.check_update_seconds(),
            identity=identity,
        )
        self.local = LocalAgent(
            self.catalog,
            self.runner,
            node,
            config.enable_script_checks,
            (config.sidecar_min_port, config.sidecar_max_port),
            identity,
        )
        self.session_ttl_min = config.session_ttl_min_seconds()
        self.sessions = SessionRunner(self.catalog, node.name)
        self.leaves: Any = _leaves(self.catalog, config)  # mesh.leaves.Leaves, or None
        self.xds: Any = None
        self.grpc_address: tuple[str, int] | None = None
        self.grpc_tls_address: tuple[str, int] | None = None
        self._grpc_tls: Any = None  # mesh.grpctls.GrpcTls, with --grpc-tls
        self.limiter = ConnectionLimiter(config.http_max_conns_per_client)
        self.started_at = time.time()
        self.http_address: tuple[str, int] | None = None
        self.https_address: tuple[str, int] | None = None
        self.dns_address: tuple[str, int] | None = None
        self._servers: list[tuple[_Server, asyncio.Task[None]]] = []
        self._https: HttpsTls | None = None
        self.fast: FastReads | None = None
        self.fast_writes: FastWrites | None = None
        self._dns: Any = None
        self._stopped = asyncio.Event()
        self._leave = asyncio.Event()
        self.logs = LogStream()  # /v1/agent/monitor

    async def start(self) -> None:
        _raise_file_limit()
        _tune_gc()
        logging.getLogger("waypost").addHandler(self.logs)
        await _open_frozen(self.catalog)
        await self.security.start()
        await self.local.join()
        await self.runner.start()
        await self.sessions.start()
        if self.leaves is not None:
            await self.leaves.start()
        await self._start_http()
        if self.config.dns != "off":
            await self._start_dns()
        if self.leaves is not None and (self.config.grpc != "off" or self.config.grpc_tls):
            await self._start_xds()
        _settle_collector()

    async def _start_xds(self) -> None:
        from ..mesh.access import StreamGuard  # grpcio and Envoy's protos: the mesh extra
        from ..mesh.grpctls import GrpcTls
        from ..mesh.server import XdsServer
        from ..mesh.snapshot import Translator

        c = self.config
        translator = Translator(
            self.catalog.state,
            self.leaves,
            c.datacenter,
            c.domain,
            self.local.name,
            self.security.intentions_default_allow,
        )
        resolver = self.security.resolver
        guard = StreamGuard(resolver, self.security.default_token, translator) if resolver else None
        self.xds = XdsServer(self.catalog, translator, guard)
        plain = split_address(c.grpc, "--grpc") if c.grpc != "off" else None
        tls = None
        if c.grpc_tls:
            self._grpc_tls = GrpcTls(
                c.tls_cert_file, c.tls_key_file, c.tls_ca_file, c.tls_verify_incoming
            )
            tls = (split_address(c.grpc_tls, "--grpc-tls"), self._grpc_tls.credentials())
        plain_port, tls_port = await self.xds.start(plain, tls)
        if plain is not None and plain_port is not None:
            self.grpc_address = (plain[0], plain_port)
        if tls is not None and tls_port is not None:
            self.grpc_tls_address = (tls[0][0], tls_port)

    async def _start_http(self) -> None:
        app = self._app()
        self.fast = FastReads(app, self.catalog, self.storage, asyncio.get_running_loop())
        self.fast_writes = FastWrites(app, asyncio.get_running_loop())
        if self.config.http != "off":
            self.http_address = await self._serve(app, self.config.http, "--http", {})
        if self.config.https:
            https = HttpsTls(self.config)
            opts = https.options()
            self.https_address = await self._serve(app, self.config.https, "--https", opts)
            self._https = https

    async def _serve(
        self, app: AgentApp, address: str, flag: str, tls: dict[str, Any]
    ) -> tuple[str, int]:
        host, port = split_address(address, flag)
        sock = _listen(host, port)
        bound: tuple[str, int] = sock.getsockname()[:2]
        config = uvicorn.Config(
            app,
            loop="none",
            http=guarded_protocol(
                self.config.http_read_timeout, self.limiter, self.fast, self.fast_writes
            ),
            lifespan="off",
            access_log=False,
            proxy_headers=False,  # not behind a proxy; the middleware costs every request
            server_header=False,
            # On every answer, as Consul (1.9+) sends it: the fast paths write
            # uvicorn's default headers too, so no answer goes without it.
            headers=[("X-Consul-Default-ACL-Policy", self.security.default_policy)],
            log_level=logging.WARNING,
            timeout_keep_alive=75,
            limit_concurrency=50_000,
            backlog=4096,
            timeout_graceful_shutdown=10,
            **tls,
        )
        server = _Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name=f"waypost{flag[1:]}")
        self._servers.append((server, task))
        while not server.started:
            if task.done():
                task.result()  # surfaces the bind or startup error
            await asyncio.sleep(0.01)
        return bound

    def _app(self) -> AgentApp:
        consul = ConsulApi(self.catalog, self.local, self, self.storage)
        kv = KvApi(consul, self.catalog)
        sessions = SessionApi(consul, self.catalog, self.session_ttl_min)
        mesh = ConnectApi(consul, self.leaves, self.security.intentions_default_allow)
        metrics = Metrics(self.statistics)
        agent = AgentEndpoints(self, metrics, self.logs)
        ui_reads = UiEndpoints(consul, self.catalog, self.timeline)
        acl = AclApi(self.catalog, consul.read, self.security.enabled)
        mounts: list[Mount] = [kv.routes, sessions.routes, agent.routes, mesh.routes]
        view = IntentionsView(consul, self.security.intentions_default_allow)
        mounts += [ui_reads.routes, view.routes, acl.routes, mount_ui]
        return AgentApp(consul, metrics, mounts=mounts, guard=self.security.guard)

    def reload_tls(self) -> None:
        """SIGHUP (and /v1/agent/reload): load the HTTPS and xDS TLS certificates again.

        Raises:
            ConfigError: naming each listener that kept its old certificate, and why.
        """
        listeners = [listener for listener in (self._https, self._grpc_tls) if listener]
        if not listeners:
            return
        c = self.config
        try:  # read and checked once for both: a renewal between two reads would split them
            files = _tlsfiles.load(c.tls_cert_file, c.tls_key_file, c.tls_ca_file)
        except ConfigError as exc:
            raise ConfigError("; ".join(f"{lis.KEPT}: {exc}" for lis in listeners)) from exc
        refused = []
        for listener in listeners:
            try:
                listener.use(files)
            except ConfigError as exc:  # it says which listener kept its old certificate
                refused.append(str(exc))
        if refused:
            raise ConfigError("; ".join(refused))

    def _on_sighup(self) -> None:
        try:
            self.reload_tls()
        except ConfigError as exc:
            log.error("SIGHUP: %s", exc)

    async def _start_dns(self) -> None:
        from ..dns import DnsConfig, DnsServer  # imported here: the DNS layer is optional to load

        host, port = split_address(self.config.dns, "--dns")
        c = self.config
        settings = DnsConfig(
            datacenter=c.datacenter,
            advertise=c.advertise,
            domain=c.domain,
            alt_domain=c.alt_domain,
            only_passing=c.dns_only_passing,
            service_ttl=dict(c.dns_service_ttl),
            node_ttl=c.dns_node_ttl,
            recursors=tuple(c.recursors),
            udp_max_size=c.dns_udp_max_size,
            udp_answer_limit=c.dns_udp_answer_limit,
            a_record_limit=c.dns_a_record_limit,
            tcp_max_per_client=c.dns_tcp_max_conns_per_client,
            allow=self.security.dns_allow(),
        )
        self._dns = await DnsServer.start(self.catalog, settings, host, port)
        self.dns_address = self._dns.address

    async def stop(self) -> None:
        if self.xds is not None:
            await self.xds.stop()
        if self.leaves is not None:
            self.leaves.stop()
        if self._dns is not None:
            await self._dns.close()
        if self._servers:
            self.catalog.watches.close()  # blocking queries answer now, so uvicorn can drain
            for server, _ in self._servers:
                server.should_exit = True
            for _, task in self._servers:
                await task
        await self.local.leave()
        await self.sessions.stop()
        await self.runner.stop()
        await self.catalog.close()
        if self._lock is not None:
            self._lock.release()
        logging.getLogger("waypost").removeHandler(self.logs)
        self._stopped.set()

    async def run(self) -> None:
        """Serve until SIGINT or SIGTERM, then shut down cleanly."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(self._leave.wait())]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
        log.info("shutting down")
        await self.stop()

    # -- what /v1/agent/self, /members and /metrics report (api.ports.AgentInfo)

    @property
    def datacenter(self) -> str:
        return self.config.datacenter

    def leader_address(self) -> str:
        return f"{self.config.advertise}:8300"

    def describe_self(self) -> dict[str, Any]:
        return describe.self_description(
            self.config,
            self.local.node.id,
            self.catalog.state,
            self.statistics(),
            self.session_ttl_min,
        )

    def members(self, wan: bool = False) -> list[dict[str, Any]]:
        return describe.members(self.config, self.catalog.state, wan)

    async def leave(self) -> None:
        """`/v1/agent/leave`: shut down as on SIGTERM, once the answer is out."""
        log.info("leave requested through the API: shutting down")
        asyncio.get_running_loop().call_later(0.1, self._leave.set)

    async def set_acl_token(self, kind: str, secret: str) -> None:
        self.security.set_token(kind, secret)
        if kind == "default" and self._dns is not None:
            self._dns.responder.acl_changed()  # what DNS may answer changed with it
        if kind == "agent":  # Consul triggers a full anti-entropy sync here
            await self.local.keep()

    async def reload(self) -> None:
        """`/v1/agent/reload`: the HTTPS and xDS TLS certificates are reloaded
        (as on SIGHUP), before the answer; every other setting is read at start-up.

        Raises:
            ConfigError: a certificate did not reload (Consul's reload answers
                its error too); the listeners keep the old ones.
        """
        if self._https is None and self._grpc_tls is None:
            log.info(
                "reload requested: waypost has no setting it can reload; restart to change one"
            )
            return
        self.reload_tls()

    def statistics(self) -> dict[str, dict[str, float]]:
        stats = {
            "catalog": self.catalog.statistics(),
            "timeline": self.timeline.statistics(),
            "store": self.storage.statistics(),
            "health": self.runner.statistics(),
            "sessions": self.sessions.statistics(),
        }
        if self.fast is not None:
            stats["http"] = self.fast.statistics()
        if self.fast_writes is not None:
            stats["http"] = {**stats.get("http", {}), **self.fast_writes.statistics()}
        if self._dns is not None:
            stats["dns"] = self._dns.statistics()
        if self.leaves is not None:
            stats["mesh"] = self.leaves.statistics()
        if self.xds is not None:
            stats["mesh"].update(self.xds.statistics())
        return stats


def _leaves(catalog: Catalog, config: AgentConfig) -> Any:
    """The mesh's CA and leaf certificates, or None without the mesh extra."""
    ttl = _duration.parse(config.leaf_cert_ttl, "--leaf-cert-ttl")
    if ttl < 2:
        raise ConfigError("--leaf-cert-ttl must be at least 2s")
    try:
        from ..mesh.leaves import Leaves  # cryptography: the mesh extra
    except ImportError as exc:
        log.warning("service mesh off: %s (pip install 'waypost[mesh]')", exc)
        return None
    return Leaves(catalog, config.datacenter, ttl)


def _lock_data_dir(config: AgentConfig) -> LockFile | None:
    """One agent per data dir, as Consul and etcd do: a second one would
    reuse the node ID and, on sqlite, the store."""
    data_dir = config.data_path()
    if data_dir is None:
        return None
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the data dir {data_dir}: {exc.strerror}") from exc
    lock = LockFile(data_dir / LOCK_FILE, f"the data dir {data_dir}")
    lock.acquire()
    return lock


YOUNG_THRESHOLD: Final = 10_000  # allocations between young collections (see _tune_gc)


def _node_id(config: AgentConfig) -> str:
    """The ID kept in the data dir; without one (an in-memory store), derived
    from the name, which is then the only identity the agent has."""
    data_dir = config.data_path()
    if data_dir is None:
        return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{config.datacenter}.{config.node_name()}"))
    return node_id(data_dir)


def _tune_gc() -> None:
    """Collect the young generation every 10,000 allocations (not 700), the
    middle one every 100 young collections (not 10).

    Every parked blocking query keeps a few dozen objects alive for seconds, so
    they reach the old generations, and with the default thresholds the
    collector kept traversing 10,000 connections' objects: a quarter of the
    agent's CPU in bench/agent/blocking.py (0.89 s of 3.16 s). (50,000, 20)
    took that to 0.23 s, but a young collection walks every object allocated
    since the last one that is still alive, about 1 µs each on a 1M-instance
    heap, so each was a pause of 50 ms or more of the loop under churn.
    Young collections of 10,000 paused for 1.5-8 ms at 1M instances and
    1,000 writes/s (docs/benchmarks.md 5b); the older generations are still
    collected every 1,000,000 allocations, as with (50,000, 20), so the
    parked queries' objects are walked no more often than then.
    """
    gc.set_threshold(YOUNG_THRESHOLD, 100, 10)


async def _open_frozen(catalog: Catalog) -> None:
    """Open (replay) the catalog with the cyclic collector paused, then freeze
    what the replay built.

    The replay allocates millions of long-lived objects (records, index dicts,
    key tuples): with the collector on, young collections keep starting and
    the growing old generations are walked again and again.
    Nothing the replay makes is garbage, so pausing it loses nothing. Then
    `gc.freeze()` moves everything alive into the permanent generation, which
    later full collections skip: before, a full collection over a million
    instances' objects stopped the loop for seconds in the middle of serving."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        await catalog.open()
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def _settle_collector() -> None:
    """Once everything start-up builds is built: collect, then freeze it.

    What start-up makes after the replay's freeze (the servers, the app, what
    it imports: ~2,600 tracked objects on a small agent) would otherwise be
    walked by the first young collection under load and then by every middle
    and full one. The collection walks only those (the catalog is frozen
    already), so that start-up's garbage is freed rather than frozen."""
    gc.collect()
    gc.freeze()


def _raise_file_limit() -> None:
    """Every blocking query holds a socket: allow as many as the hard limit does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(4096)
    sock.setblocking(False)
    return sock
