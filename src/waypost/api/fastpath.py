"""Discovery reads answered in the HTTP protocol itself, without an ASGI cycle.

`GET /v1/health/service/<name>` (and `/v1/catalog/service/<name>`) is what
every client polls and what thousands of watchers park on. Through ASGI each
answer costs a task, a future, a done-callback and a libuv timer while it
waits, and two `transport.write()` calls through uvicorn's response path when
it is answered: ~25 µs per woken query, so 10,000 watchers took ~500 ms to
reach after one change (docs/benchmarks.md, Agent 3).

Here the protocol (api/protocol.py) hands each request to `FastReads.serve`
before it would start the ASGI task. A request it fully understands is
answered at once from the same code the ASGI route runs (the route's
`*_read` planner and `ConsulApi.answer`, so the same encoded-answer cache and
headers), encoded as one prebuilt head+body and written in one
`transport.write()`. A blocking query whose index is current is parked: one
entry per topic (by request line, then by answer), registered once on the
topic's shared future (`Watches.listen`), with its `wait=` expiry in a
coarse timer wheel, and no task, future or timer of its own. When the topic
fires (a large wake-up is answered one callback later, after the write
that fired it has its acknowledgement), every parked connection with the
same question gets the same bytes, encoded once (and, for the clients
that take gzip, compressed once: api/compress.py; the prebuilt bytes are
kept per encoding). What a wake-up needs of each query (its answer's key,
its connection's fd) is worked out when it arrives, so that before the
first send() a wake-up of 10,000 makes one pass over them, checking each
connection (~0.6 µs per query; four passes, ~3 µs, two sessions before:
docs/benchmarks.md, Agent 3).

With ACLs on, each request goes through the same `Guard.enforce`
(api/access.py) as on the normal path, with its own headers; the answer is
filtered and cached per token and ACL generation by `ConsulApi.answer`, and
the prebuilt bytes are kept per token as well. A token the guard refuses goes
the normal way, which answers the 401/403.

Anything else goes the normal way, never half-served: any query parameter not
in `_UNDERSTOOD` (`?filter=`, `?node-meta=`, `?dc=`, `?stale`, `?consistent`,
`?cached`, `?near`...), a request body or `Expect`, an Enterprise scope
header (`X-Consul-Namespace`, `X-Consul-Partition`), an unknown route or
method, an invalid `index`/`wait` (the normal path answers the 400), a client
that is not reading its answers (write buffer full: the normal path waits for
it), or access logging on.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Collection, Iterable
from typing import Any, NamedTuple

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from .._bounded import ByteBoundedCache
from .._exceptions import ValidationError, WaypostError
from ..catalog import Catalog
from ..catalog.watch import Topic
from . import compress, decode, http, wire
from .access import token_in
from .app import AgentApp, access_log
from .consul import SCOPE_HEADERS, Read
from .fanout import PARALLEL_MIN, Batch, FanOut
from .ports import StoreStatus
from .wheel import TimerWheel

log = logging.getLogger("waypost.api")

# The parameters the fast path answers exactly as the normal path does; any
# other one sends the request the normal way.
_UNDERSTOOD = frozenset({"passing", "tag", "index", "wait", "token"})
_METHODS = frozenset({"GET", "HEAD"})
OTHER_ROUTE, DECLINED = 0, 1  # no fast path for this route; or not for this request
PREPARED_LIMIT = 4096  # request lines remembered (each a parsed query and a plan)
PREBUILT_BYTES = 32 << 20  # encoded answers, heads included
ADMITTED_LIMIT = 64  # tokens remembered per request line
# A wake-up of this many queries or more is answered after the write that
# fired it (~1 ms of sends and more); a smaller one at once (_fired).
DEFER_MIN = 128

Planner = Callable[[http.Request, str], Read]
# A query's answer, for grouping: (its key, the id of its Date header list); _Query.keyed.
Seen = tuple[tuple[Any, ...], int]


class _Prepared:
    """One understood request line (method, path, query), shared by every
    request that repeats it: its plan, parsed once."""

    __slots__ = ("access", "admitted", "group", "min_index", "plan", "request", "rest", "wait")

    def __init__(
        self, request: http.Request, route: tuple[str, Any], plan: Read, min_index: int, wait: float
    ) -> None:
        self.request = request
        self.rest, self.access = route  # the path after the route's prefix; its ACL declaration
        self.plan = plan
        self.min_index = min_index
        self.wait = wait
        # Requests that differ only in index/wait get the same answer.
        self.group = (request.method, request.path, _question(request))
        # With ACLs on: per token, the request the guard let through, reused
        # while the token resolves to the same authorizer (api/fastpath._authorized).
        self.admitted: dict[str, http.Request] = {}


class _Stamp(NamedTuple):
    """What an answer was read at: it holds while all four stand still."""

    at: int  # the topics' index
    outputs: int  # State.outputs: check output changed at the same index
    acl: int  # the ACL generation it was filtered at (0: ACLs off)
    health: Any  # the store's health (X-Consul-KnownLeader, X-Consul-LastContact)


class _Prebuilt(NamedTuple):
    """An encoded answer, head and body, valid while its stamp's parts and
    uvicorn's Date header are the ones it was built with."""

    stamp: _Stamp
    defaults: list[tuple[bytes, bytes]]  # uvicorn's Date header list it was built with
    data: bytes
    status: int


class _Packing:
    """An answer whose body is being gzipped on a worker thread, and the
    queries waiting for it."""

    __slots__ = ("plain", "response", "stamp", "waiting")

    def __init__(self, response: http.Response, plain: bytes, stamp: _Stamp) -> None:
        self.response = response
        self.plain = plain
        self.stamp = stamp  # what it was read at
        self.waiting: list[_Query] = []


#: the batch of an answer too small to be written beside its transport: it stays empty
_NOTHING_BESIDE = Batch()


class _Query:
    """A request on a connection, while it is being answered or is parked.

    What a wake-up needs of it is worked out here, when it arrives, not for
    thousands of queries at once when a change wakes them: its answer's key
    and its connection's fd (from the protocol, which asks once)."""

    __slots__ = (
        "cycle",
        "fd",
        "gzip",
        "prepared",
        "request",
        "seen",
        "slot",
        "started",
        "transport",
    )

    def __init__(
        self, cycle: RequestResponseCycle, prepared: _Prepared, request: http.Request, fd: int
    ) -> None:
        self.cycle = cycle
        self.transport = cycle.transport  # its connection's, for as long as it lives
        self.prepared = prepared
        self.request = request  # the prepared one; with ACLs on, this request's own
        self.gzip = compress.accepts_gzip(cycle.scope["headers"])  # type: ignore[arg-type]
        self.fd = fd  # fanout.plain_fd of its connection's transport
        self.slot = 0  # its timer wheel slot while parked; 0 when not
        self.started = time.perf_counter()
        self.seen = self.keyed()  # changed only once it has left its topics (answer_now)

    def keyed(self) -> Seen:
        """`seen`: (its answer's key, its Date list's id). The key names the
        prebuilt answer (question, Connection, encoding, token). Each request
        keeps the Date list of the second it came in (uvicorn's cycle does);
        the list outlives any batch it is answered in (its cycle holds it), so
        its id() names it. Again if the connection's keep-alive ends (shutdown)."""
        authz, cycle = self.request.authz, self.cycle
        token = authz.key if authz is not None else None
        key = (self.prepared.group, cycle.keep_alive, self.gzip, token)
        return key, id(cycle.default_headers)


class FastReads:
    """The fast path of one agent's HTTP listeners."""

    def __init__(self, app: AgentApp, catalog: Catalog, store: StoreStatus, loop: Any) -> None:
        self.app = app
        self.consul = app.consul
        self.catalog = catalog
        self.store = store
        self.state = catalog.state
        self.watches = catalog.watches
        consul = app.consul
        self._planners: dict[Any, Planner] = {
            consul.health_service: consul.health_service_read,
            consul.catalog_service: consul.catalog_service_read,
        }
        self._prepared: dict[tuple[str, str, bytes], _Prepared | int] = {}
        self._prebuilt: ByteBoundedCache[_Prebuilt] = ByteBoundedCache(
            PREBUILT_BYTES, lambda p: len(p.data)
        )
        # Per topic, its parked queries by request line (a wake-up decides per
        # line), then by answer (_Query.seen: it finds each answer once per group).
        self._topics: dict[Topic, dict[_Prepared, dict[Seen, set[_Query]]]] = {}
        # Per watched topic, the future listened on and the callback registered on it.
        self._listening: dict[Topic, tuple[asyncio.Future[None], Callable[[Any], None]]] = {}
        self._wheel: TimerWheel[_Query] = TimerWheel(loop, self._expired)
        self.fanout = FanOut()
        self.answered = 0  # statistics: requests answered here
        self.built = 0  # answers encoded (the others reused a prebuilt one)
        self.packed_off_loop = 0  # of them, compressed on a worker thread
        self._packing: dict[tuple[Any, ...], _Packing] = {}
        self.loop = loop
        self.fallbacks = 0  # requests to a fast route sent the normal way

    # -- a request arrives -------------------------------------------------

    def serve(self, cycle: RequestResponseCycle, fd: int = -1) -> _Query | bool:
        """Answer `cycle`'s request (True), park it (the parked query: its
        connection releases it if it closes), or False: go the normal way.
        `fd`: fanout.plain_fd of the connection's transport."""
        prepared = self._understand(cycle)
        if not isinstance(prepared, _Prepared):
            self.fallbacks += prepared  # DECLINED counts, OTHER_ROUTE does not
            return False
        request = prepared.request if self.app.guard is None else self._authorized(cycle, prepared)
        if request is None:
            self.fallbacks += 1
            return False
        query = _Query(cycle, prepared, request, fd)
        wait = prepared.wait
        jittered = wait + self.consul.rng.uniform(0, wait / 16)  # as ConsulApi.block
        if jittered <= 0 or not self._would_block(prepared.plan[0], prepared.min_index):
            self._answer([(query.seen, (query,))])
            return True
        query.slot = self._wheel.add(query, self.loop.time() + jittered)
        self._park(query)
        self.catalog.parked += 1
        return query

    def _understand(self, cycle: RequestResponseCycle) -> _Prepared | int:
        """The request's plan, or why there is none (OTHER_ROUTE, DECLINED)."""
        scope: dict[str, Any] = cycle.scope  # type: ignore[assignment]
        line = (scope["method"], scope["path"], scope["query_string"])
        prepared = self._prepared.get(line)
        if prepared is None:
            if len(self._prepared) >= PREPARED_LIMIT:
                self._prepared.clear()  # clients name services: keep the table bounded
            prepared = self._prepared[line] = self._prepare(*line)
        if not isinstance(prepared, _Prepared):
            return prepared
        if cycle.flow.write_paused or _declined(scope["headers"]):
            return DECLINED  # a client not reading its answers waits for them the normal way
        if access_log.isEnabledFor(logging.DEBUG):
            return DECLINED  # the normal path logs each request
        return prepared

    def _authorized(self, cycle: RequestResponseCycle, prepared: _Prepared) -> http.Request | None:
        """With ACLs on: this request (its headers carry the token) through the
        same Guard as the normal path; None for any refusal, which the normal
        path then answers (401/403).

        The guard's verdict for a line depends only on the token's authorizer,
        which the resolver keeps until an ACL change (and checks for expiry at
        every resolve): a request whose token resolves to the authorizer a
        verdict was given for reuses it, a dict lookup instead of a new
        Request (its query parsed again) and the route's declaration.
        """
        guard = self.app.guard
        assert guard is not None
        secret = token_in(prepared.request.query, cycle.scope["headers"]) or guard.default_token()
        try:
            authz = guard.resolver.resolve(secret)
        except WaypostError:
            return None
        admitted = prepared.admitted.get(secret)
        if admitted is not None and admitted.authz is authz:
            return admitted
        request = http.Request(cycle.scope, _no_body)  # type: ignore[arg-type]
        try:
            pending = guard.enforce(request, prepared.rest, prepared.access)
        except WaypostError:
            return None
        if pending is not None:  # a declaration that reads the body: not these reads
            getattr(pending, "close", lambda: None)()
            return None
        if len(prepared.admitted) >= ADMITTED_LIMIT:
            prepared.admitted.clear()
        prepared.admitted[secret] = request
        return request

    def _prepare(self, method: str, path: str, query: bytes) -> _Prepared | int:
        if method not in _METHODS:
            return OTHER_ROUTE
        try:
            handler, rest, declared = self.app.router.route(method, path)
        except http.HttpError:
            return OTHER_ROUTE
        planner = self._planners.get(handler)
        if planner is None:
            return OTHER_ROUTE
        # Shared by every request of this line: no headers (no route here reads
        # them but the ACL guard, which gets each request's own) and no connection.
        scope = {"method": method, "path": path, "query_string": query, "headers": []}
        request = http.Request(scope, _no_body)
        if not _UNDERSTOOD.issuperset(request.query):
            return DECLINED
        try:
            min_index, wait = decode.index_and_wait(request)
            plan = planner(request, rest)
        except ValidationError:
            return DECLINED  # the normal path answers the 400
        return _Prepared(request, (rest, declared), plan, min_index, wait)

    def _would_block(self, topics: tuple[Topic, ...], min_index: int) -> bool:
        """Catalog.block's conditions for waiting at all (see there)."""
        if min_index <= 0 or min_index > self.state.highest_index() or self.watches.closed:
            return False
        return self.state.index_of(topics) <= min_index

    def _park(self, query: _Query) -> None:
        """One entry per topic; one registration per topic on its shared future."""
        prepared, seen = query.prepared, query.seen
        for topic in prepared.plan[0]:
            lines = self._topics.get(topic)
            if lines is None:
                lines = self._topics[topic] = {}
                future = self.watches.listen(topic)
                callback = functools.partial(self._fired, topic)
                future.add_done_callback(callback)
                self._listening[topic] = (future, callback)
            answers = lines.get(prepared)
            if answers is None:
                answers = lines[prepared] = {}
            parked = answers.get(seen)
            if parked is None:
                parked = answers[seen] = set()
            parked.add(query)

    def _stop_listening(self, topic: Topic) -> None:
        future, callback = self._listening.pop(topic)
        future.remove_done_callback(callback)  # the topic may fire later: not for us
        self.watches.unlisten(topic)

    # -- a parked query ends -----------------------------------------------

    def _fired(self, topic: Topic, future: asyncio.Future[None]) -> None:
        listening = self._listening.get(topic)
        if listening is None or listening[0] is not future:
            return  # a registration since dropped (its connections went away)
        self._stop_listening(topic)
        # Thousands of queries repeat a few lines: decided once per line.
        ready: list[tuple[Seen, Collection[_Query]]] = []
        for prepared, answers in self._topics.pop(topic).items():
            if not self._would_block(prepared.plan[0], prepared.min_index):
                ready += answers.items()
                continue
            for parked in answers.values():
                for query in parked:  # its index has not passed yet: wait on
                    self._park(query)
        if _size(ready) < DEFER_MIN:
            self._answer(ready, unpark=True)  # at most ~1 ms: the write's answer waits for it
        else:
            # After the write that fired it: its task, woken by the same
            # commit, runs first and acknowledges it, instead of its client
            # waiting for these answers too (~0.1 s at 10,000 queries). Not
            # for a few: the next loop turn comes after the other clients'
            # requests read meanwhile (1-7 ms later under 1,000 writes/s).
            self.loop.call_soon(self._answer_still_parked, ready)

    def _answer_still_parked(self, ready: list[tuple[Seen, Collection[_Query]]]) -> None:
        """`_fired`'s answers, but for the queries that left the wheel
        meanwhile: their connection closed, their wait ran out, the shutdown
        answered them, or another topic of theirs fired first."""
        groups: list[tuple[Seen, Collection[_Query]]] = []
        for seen, parked in ready:
            still = [query for query in parked if query.slot]
            if still:
                groups.append((seen, still))
        if groups:
            self._answer(groups, unpark=True)

    def _expired(self, query: _Query) -> None:
        self._forget(query)
        self.catalog.parked -= 1
        self._answer([(query.seen, (query,))])

    def release(self, query: _Query) -> None:
        """The client closed its connection: drop its parked query."""
        if query.slot:
            self._unpark(query)

    def answer_now(self, query: _Query) -> None:
        """Answer a parked query with what is there now (the server shuts down)."""
        if query.slot:
            self._unpark(query)
            query.seen = query.keyed()  # the shutdown ended its keep-alive: another answer
            self._answer([(query.seen, (query,))])

    def _unpark(self, query: _Query) -> None:
        self._wheel.remove(query, query.slot)
        self._forget(query)
        self.catalog.parked -= 1

    def _forget(self, query: _Query) -> None:
        query.slot = 0
        for topic in query.prepared.plan[0]:
            lines = self._topics.get(topic)
            if lines is not None and _drop(lines, query):
                del self._topics[topic]
                self._stop_listening(topic)

    # -- answering ---------------------------------------------------------

    def _answer(self, groups: list[tuple[Seen, Collection[_Query]]], unpark: bool = False) -> None:
        """Write each group's answer (the queries of a group have the same
        `_Query.seen`), prebuilt once for every query asking the same question
        while its index, the store's health and uvicorn's Date header stand
        still; a large batch from two threads (api/fanout.py).
        `unpark`: the queries are still parked; they leave the wheel and their
        topics after the writes (the first answers go sooner), before their
        cycles finish (which may start a pipelined request that parks again).

        At 10,000 queries this loop is what stands between the change and the
        first send(): per query it only checks the connection and files the
        group's bytes for it; what else it needs, each query worked out when it
        came (_Query) and its connection when it opened (its fd)."""
        health = self.store.health()
        # Most calls answer one query (a read that does not block): nothing
        # here may cost it more than the batch needs (each line below is ~1-3k
        # instructions of a ~100k read when done for nothing).
        count = _size(groups)
        beside = count >= PARALLEL_MIN and self.fanout.parallel
        batch = Batch() if beside else _NOTHING_BESIDE  # nothing is added to it then
        fds, owners = batch.fds, batch.owners
        ready: list[_Query] = []
        runs: list[tuple[_Prebuilt, int]] = []
        packings: list[_Packing] = []
        add_fd, add_owner, add_ready = fds.append, owners.append, ready.append
        try:
            # A group's key names its Connection header: a query's keep-alive
            # only changes at shutdown, and answer_now re-keys it before it
            # comes here.
            for seen, parked in groups:
                pre: _Prebuilt | _Packing | None = None
                for query in parked:  # the first open connection's query builds it
                    if not query.transport.is_closing():
                        pre = self._prebuilt_for(query, seen[0], health)
                        break
                if pre is None:
                    continue  # every connection of the group is closing
                if isinstance(pre, _Packing):  # answered once its body is compressed
                    packings.append(pre)
                    pre.waiting += [q for q in parked if not q.transport.is_closing()]
                    continue
                # The one loop that runs 10,000 times before the first send:
                # per query only its connection's two checks and the appends
                # (a closing transport covers a lost connection: it is closed
                # before connection_lost runs). Batch.add, inline.
                data, before, start = pre.data, len(fds), len(ready)
                try:
                    for query in parked:
                        transport = query.transport
                        if transport.is_closing():
                            continue
                        fd = query.fd
                        if beside and fd >= 0 and not transport.get_write_buffer_size():
                            add_fd(fd)
                            add_owner(transport)
                        else:
                            transport.write(data)
                        add_ready(query)
                finally:  # the group's answers so far, whatever happened
                    if len(fds) > before:
                        batch.datas += [data] * (len(fds) - before)
                    runs.append((pre, len(ready) - start))
        except BaseException:
            # Some answers may be written already (through their transports):
            # those queries, and those waiting for a compression, leave the
            # wheel now, so that their expiry cannot answer them a second
            # time; the others stay parked and are answered when their wait ends.
            # Two groups may share one compression (one key, two Date lists): once each.
            answered = dict.fromkeys(ready + [q for p in packings for q in p.waiting])
            self._write(batch, ready, runs, [q for q in answered if q.slot] if unpark else ())
            raise
        self._write(batch, ready, runs, (q for _, g in groups for q in g) if unpark else ())

    def _write(
        self,
        batch: Batch,
        ready: list[_Query],
        runs: list[tuple[_Prebuilt, int]],
        unpark: Iterable[_Query] = (),
    ) -> None:
        """Send `batch` (what is left of `ready`'s answers: those not written
        already through their transports), then finish their cycles. `runs`:
        each answer and how many queries of `ready`, in turn, got it."""
        try:
            if batch.fds:
                self.fanout.send(batch)
        finally:  # whatever was written: never parked again, never answered twice
            for query in unpark:
                self._unpark(query)
            # One clock read for the batch: the later answers' latency is exact,
            # the earlier ones' over by at most the batch's writes (~0.1 s at 10,000).
            now = time.perf_counter()
            observe = self.app.metrics.observe
            start = 0
            for pre, count in runs:
                status = pre.status
                for query in ready[start : start + count] if len(runs) > 1 else ready:
                    wire.finished(query.cycle)
                    observe(query.prepared.group[0], status, now - query.started)
                start += count
            self.answered += len(ready)

    def _prebuilt_for(
        self, query: _Query, key: tuple[Any, ...], health: Any
    ) -> _Prebuilt | _Packing:
        """The prebuilt answer kept for `key` if it still holds, else a new one
        (or the compression under way that will give it)."""
        prepared, authz, cycle = query.prepared, query.request.authz, query.cycle
        state = self.state
        # With ACLs on, an answer is the token's, as in ConsulApi.answer's cache.
        acl = authz.generation if authz is not None else 0  # as ConsulApi.answer
        # A plain tuple: it equals (and hashes as) a _Stamp of the same parts,
        # and a read of a prebuilt answer need not pay for making one.
        now = (state.index_of(prepared.plan[0]), state.outputs, acl, health)
        pre = self._prebuilt.get(key)
        if pre is not None and pre.defaults is cycle.default_headers and pre.stamp == now:
            return pre
        packing = self._packing.get((key, now))
        if packing is not None:
            return packing
        return self._build(query, key, _Stamp(*now))

    def _build(self, query: _Query, key: tuple[Any, ...], stamp: _Stamp) -> _Prebuilt | _Packing:
        try:
            response = self.consul.answer(query.request, stamp.at, query.prepared.plan[1])
        except Exception as exc:  # as AgentApp: every error becomes an answer
            response = http.error_response(exc)
        plain = compress.encode_or_defer(response, query.gzip)
        if plain is None or query.prepared.group[0] == "HEAD":  # HEAD: no body to compress
            return self._encoded(query, key, response, stamp)
        # Past compress.OFF_LOOP (a service of ~1,000 instances): gzip takes
        # tens of ms, which would stall every connection; a worker does it.
        packed = self.loop.run_in_executor(None, compress.pack, plain)
        packing = self._packing[(key, stamp)] = _Packing(response, plain, stamp)
        packed.add_done_callback(functools.partial(self._packed, key, packing))
        self.packed_off_loop += 1
        return packing

    def _packed(
        self, key: tuple[Any, ...], packing: _Packing, packed: asyncio.Future[bytes]
    ) -> None:
        """A body compressed off the loop: answer the queries that waited for it."""
        del self._packing[(key, packing.stamp)]
        response = packing.response
        try:
            response.body = packed.result()
            compress.keep(packing.plain, response.body)
        except asyncio.CancelledError:  # the executor shut down: still an answer
            response = http.error_response(RuntimeError("the compression was cancelled"))
        except Exception as exc:  # as AgentApp: every error becomes an answer
            response = http.error_response(exc)
        # One encoding per Date and Connection (shutdown may have ended
        # keep-alive meanwhile); only one that matches `key` is kept.
        encoded: dict[tuple[int, bool], _Prebuilt] = {}
        beside = self.fanout.parallel and len(packing.waiting) >= PARALLEL_MIN
        batch, ready, runs = Batch(), [], []
        for query in packing.waiting:
            cycle = query.cycle
            if query.transport.is_closing():  # closed before its connection_lost
                continue
            seen = (id(cycle.default_headers), cycle.keep_alive)
            pre = encoded.get(seen)
            if pre is None:
                keep = cycle.keep_alive == key[1]
                pre = encoded[seen] = self._encoded(query, key, response, packing.stamp, keep)
            batch.add(query.transport, query.fd if beside else -1, pre.data)
            ready.append(query)
            runs.append((pre, 1))
        self._write(batch, ready, runs)

    def _encoded(
        self,
        query: _Query,
        key: tuple[Any, ...],
        response: http.Response,
        stamp: _Stamp,
        keep: bool = True,
    ) -> _Prebuilt:
        """`response` (compressed if it is to be) as bytes for `query`'s
        connection, kept for `key` if `keep`; `stamp`: what it was read at."""
        self.built += 1
        cycle = query.cycle
        if query.prepared.group[0] == "HEAD":
            response.body = b""
        data = wire.encode(response, cycle.default_headers, cycle.keep_alive)
        pre = _Prebuilt(stamp, cycle.default_headers, data, response.status)
        if keep:
            self._prebuilt.put(key, pre)
        return pre

    def statistics(self) -> dict[str, float]:
        return {
            "fast_answered": self.answered,
            "fast_fallbacks": self.fallbacks,
            "fast_parked": len(self._wheel),
            "fast_fanout_batches": self.fanout.batches,
            "fast_answers_built": self.built,
            "fast_compressed_off_loop": self.packed_off_loop,
        }


def _size(groups: list[tuple[Seen, Collection[_Query]]]) -> int:
    """The queries of a wake-up's groups (most answers are of one group)."""
    return len(groups[0][1]) if len(groups) == 1 else sum([len(g) for _, g in groups])


def _drop(lines: dict[_Prepared, dict[Seen, set[_Query]]], query: _Query) -> bool:
    """Take `query` out of one topic's parked queries; True if none are left."""
    answers = lines.get(query.prepared)
    parked = answers.get(query.seen) if answers is not None else None
    if answers is None or parked is None:
        return False
    parked.discard(query)
    if not parked:
        del answers[query.seen]
        if not answers:
            del lines[query.prepared]
    return not lines


def _declined(headers: list[tuple[bytes, bytes]]) -> bool:
    """A request the normal path takes: it has a body, or names an Enterprise
    scope (ConsulApi.check_scope refuses it there)."""
    for name, value in headers:
        if name in wire.CYCLE_BODY_HEADERS or (name == b"content-length" and value.strip() != b"0"):
            return True
        if len(name) == 18 and name in SCOPE_HEADERS and value:  # both are 18 bytes
            return True
    return False


def _question(request: http.Request) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The query less the blocking parameters: queries that differ only in
    them get the same answer."""
    return tuple((k, tuple(v)) for k, v in sorted(request.query.items()) if k not in _BLOCKING)


_BLOCKING = frozenset({"index", "wait", "token"})  # the token: the answer's key holds its identity


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}
