"""A fake Kubernetes API server that follows the real protocol, for tests and benchmarks.

No kube-apiserver (nor envtest, kind, k3s, kwok) can be installed on these
machines, so this stands in for one, over HTTPS with a CA and bearer tokens,
through exactly the requests a client makes against a cluster:

- resources: Services, Nodes (core/v1), EndpointSlices (discovery.k8s.io/v1),
  Leases (coordination.k8s.io/v1); get, list, watch, create, update
  (optimistic concurrency on metadata.resourceVersion: 409), delete; patch
  with the patch types of fakepatch.py (merge patches; strategic ones only
  where they are the same); `dryRun=All` on create, update and patch
  (answered, not stored: kubectl's --dry-run=server);
- the legacy discovery documents kubectl reads first (fakediscovery.py);
- one global resourceVersion counter, as etcd's revision;
- lists with `labelSelector`, `limit` and `continue` (each page consistent at
  the first page's version, rebuilt from the change history; a token older
  than the compacted history is 410 Expired);
- watches from a resourceVersion (`""`/`"0"`: synthetic ADDED of the current
  state first), `allowWatchBookmarks` (a BOOKMARK every `bookmark_interval`
  seconds, carrying the version the stream is consistent at), `timeoutSeconds`
  (the stream ends); a version older than the compacted history is 410, either
  as an HTTP status (`gone_as="status"`) or as an in-stream ERROR event
  (`gone_as="event"`, what the watch cache does);
- authentication: bearer tokens in `tokens`, or a client certificate issued
  by the server's CA whose common name is in `cert_users` (`client_cert()`
  issues one), as kube-apiserver's x509 authenticator does;
- faults: the next N requests answer 429 (with Retry-After) or 5xx; tokens not
  in `tokens` get 401 (rotate them to test token re-reading); `close_watches()`
  ends every stream (an API server restart).

It runs on its own thread and event loop, so tests drive it from plain code
(`put`, `delete`, `compact`) while async or sync clients talk to it. Every
request is recorded as (verb, group, resource) for the RBAC checks.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import re
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme
from aiohttp import web

from . import fakediscovery, fakepatch

Obj = dict[str, Any]

# (group, resource) -> (kind, apiVersion, namespaced)
RESOURCES: dict[tuple[str, str], tuple[str, str, bool]] = {
    ("", "services"): ("Service", "v1", True),
    ("", "nodes"): ("Node", "v1", False),
    ("discovery.k8s.io", "endpointslices"): ("EndpointSlice", "discovery.k8s.io/v1", True),
    ("coordination.k8s.io", "leases"): ("Lease", "coordination.k8s.io/v1", True),
}
BY_KIND = {kind: key for key, (kind, _, _) in RESOURCES.items()}
_PATH = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[^/]+)/v1)"
    r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<resource>[^/]+)(?:/(?P<name>[^/]+))?$"
)


@dataclass
class Change:
    rv: int
    group: str
    resource: str
    type: str
    obj: Obj
    old: Obj | None


@dataclass
class Fault:
    status: int
    remaining: int
    verb: str | None = None
    resource: str | None = None
    retry_after: int | None = None


@dataclass(eq=False)
class _Watcher:
    group: str
    resource: str
    namespace: str | None
    selector: list[tuple[str, str, str]]
    queue: asyncio.Queue[Change | None]
    rv: int


def status(code: int, reason: str, message: str) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def parse_selector(text: str) -> list[tuple[str, str, str]]:
    """`a=b,c!=d,e` -> [(a, =, b), (c, !=, d), (e, exists, '')]."""
    terms = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "!=" in part:
            key, value = part.split("!=", 1)
            terms.append((key, "!=", value))
        elif "=" in part:
            key, value = part.split("=", 1)
            terms.append((key.rstrip("="), "=", value))
        else:
            terms.append((part, "exists", ""))
    return terms


def matches(obj: Obj, selector: list[tuple[str, str, str]]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for key, op, value in selector:
        if op == "exists" and key not in labels:
            return False
        if op == "=" and labels.get(key) != value:
            return False
        if op == "!=" and labels.get(key) == value:
            return False
    return True


class FakeKubeApi:
    """The fake API server. `start()` it, then use `url`, `kubeconfig()`, `put()`..."""

    def __init__(self, *, bookmark_interval: float = 1.0, tls: bool = True) -> None:
        self.lock = threading.RLock()
        self.rv = 1
        self.objects: dict[tuple[str, str, str, str], Obj] = {}
        self.history: list[Change] = []
        self.compacted = 0  # watches and continue tokens older than this are 410
        self.gone_as = "event"
        self.tokens: set[str] | None = {"token-1"}
        self.cert_users: set[str] = set()
        self.faults: list[Fault] = []
        self.bookmark_interval = bookmark_interval
        self.requests: Counter[tuple[str, str, str]] = Counter()
        self.scopes: Counter[tuple[str, str, str | None]] = Counter()  # (verb, resource, namespace)
        self.log: list[tuple[float, str, str, dict[str, str]]] = []
        self.tls = tls
        self._watchers: set[_Watcher] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.ca: trustme.CA | None = None
        self.dir = Path()

    # -- lifecycle ---------------------------------------------------------

    def start(self, workdir: Path) -> FakeKubeApi:
        self.dir = workdir
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake API server did not start")
        return self

    def _serve(self, ready: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        loop.run_until_complete(self._runner.setup())
        ssl_ctx = None
        if self.tls:
            self.ca = trustme.CA()
            cert = self.ca.issue_cert("127.0.0.1", "localhost")
            import ssl

            ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            cert.configure_cert(ssl_ctx)
            ssl_ctx.verify_mode = ssl.CERT_OPTIONAL  # client certificates: x509 auth
            self.ca.configure_trust(ssl_ctx)
            self.ca.cert_pem.write_to_path(str(self.dir / "ca.crt"))
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ssl_ctx)
        loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}"
        ready.set()
        loop.run_forever()

    def stop(self) -> None:
        if self._loop is None:
            return
        self.close_watches()
        fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)  # type: ignore[union-attr]
        with contextlib.suppress(Exception):
            fut.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def kubeconfig(self, token: str | None = "token-1", token_file: Path | None = None) -> Path:
        """Write a kubeconfig for this server; the path."""
        user: Obj = {}
        if token_file is not None:
            user["tokenFile"] = str(token_file)
        elif token is not None:
            user["token"] = token
        cluster: Obj = {"server": self.url}
        if self.tls:
            cluster["certificate-authority"] = str(self.dir / "ca.crt")
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": cluster}],
            "users": [{"name": "tester", "user": user}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester"}}],
            "current-context": "fake",
        }
        path = self.dir / f"kubeconfig-{uuid.uuid4().hex[:8]}"
        path.write_text(json.dumps(doc))  # JSON is YAML
        return path

    # -- state, driven by tests (thread-safe) -------------------------------

    def put(self, obj: Obj) -> Obj:
        """Create or replace an object as a controller would; returns the stored copy."""
        with self.lock:
            return self._store(copy.deepcopy(obj))

    def delete(self, kind: str, namespace: str, name: str) -> None:
        group, resource = BY_KIND[kind]
        with self.lock:
            self._remove(group, resource, namespace, name)

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        group, resource = BY_KIND[kind]
        with self.lock:
            found = self.objects.get((group, resource, namespace, name))
            return copy.deepcopy(found) if found else None

    def list(self, kind: str, namespace: str | None = None) -> list[Obj]:
        group, resource = BY_KIND[kind]
        with self.lock:
            return [
                copy.deepcopy(o)
                for (g, r, ns, _), o in sorted(self.objects.items())
                if (g, r) == (group, resource) and namespace in (None, ns)
            ]

    def compact(self) -> None:
        """Forget all history: older watches and continue tokens get 410."""
        with self.lock:
            self.compacted = self.rv + 1
            self.history.clear()

    def close_watches(self) -> None:
        """End every watch stream (as an API server restart does)."""
        with self.lock:
            for watcher in list(self._watchers):
                self._send(watcher, None)

    def fail(self, status_code: int, times: int = 1, **match: Any) -> None:
        """The next `times` requests (matching verb=, resource=) answer `status_code`."""
        with self.lock:
            self.faults.append(Fault(status_code, times, **match))

    def watch_count(self) -> int:
        with self.lock:
            return len(self._watchers)

    # -- internals under the lock ------------------------------------------

    def _store(self, obj: Obj) -> Obj:
        group, resource = BY_KIND[obj["kind"]]
        kind, api_version, namespaced = RESOURCES[(group, resource)]
        meta = obj.setdefault("metadata", {})
        ns = meta.get("namespace", "default") if namespaced else ""
        if namespaced:
            meta["namespace"] = ns
        key = (group, resource, ns, meta["name"])
        old = self.objects.get(key)
        self.rv += 1
        obj["apiVersion"], obj["kind"] = api_version, kind
        meta["resourceVersion"] = str(self.rv)
        meta.setdefault("uid", old["metadata"]["uid"] if old else str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self.objects[key] = obj
        self._record(Change(self.rv, group, resource, "MODIFIED" if old else "ADDED", obj, old))
        return copy.deepcopy(obj)

    def _remove(self, group: str, resource: str, ns: str, name: str) -> Obj | None:
        old = self.objects.pop((group, resource, ns, name), None)
        if old is None:
            return None
        self.rv += 1
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = str(self.rv)
        self._record(Change(self.rv, group, resource, "DELETED", gone, old))
        return gone

    def _record(self, change: Change) -> None:
        self.history.append(change)
        for watcher in list(self._watchers):
            self._send(watcher, change)

    def _send(self, watcher: _Watcher, change: Change | None) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(watcher.queue.put_nowait, change)

    def _state_at(self, group: str, resource: str, rv: int) -> dict[tuple[str, str], Obj]:
        """The collection as it was at `rv`: the current state, changes after rv undone."""
        state = {
            (ns, n): o for (g, r, ns, n), o in self.objects.items() if (g, r) == (group, resource)
        }
        for change in reversed(self.history):
            if change.rv <= rv:
                break
            if (change.group, change.resource) != (group, resource):
                continue
            meta = change.obj["metadata"]
            key = (meta.get("namespace", ""), meta["name"])
            if change.old is None:
                state.pop(key, None)
            else:
                state[key] = change.old
        return state

    def _take_fault(self, verb: str, resource: str) -> Fault | None:
        for fault in self.faults:
            if (
                fault.remaining > 0
                and fault.verb in (None, verb)
                and fault.resource in (None, resource)
            ):
                fault.remaining -= 1
                return fault
        return None

    # -- HTTP ----------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and (found := fakediscovery.document(request.path, RESOURCES)):
            return _json(200, found)  # what kubectl asks before anything else
        m = _PATH.match(request.path)
        if m is None or (m["group"] or "", m["resource"]) not in RESOURCES:
            return _json(404, status(404, "NotFound", f"the server could not find {request.path}"))
        group, resource, ns, name = m["group"] or "", m["resource"], m["ns"], m["name"]
        query = dict(request.query)
        verb = _verb(request.method, name, query)
        self.log.append((time.monotonic(), verb, resource, query))
        with self.lock:
            self.requests[(verb, group, resource)] += 1
            self.scopes[(verb, resource, ns)] += 1
            denied = self._auth(request)
            fault = None if denied else self._take_fault(verb, resource)
        if denied is not None:
            return denied
        if fault is not None:
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after else {}
            reason = "TooManyRequests" if fault.status == 429 else "InternalError"
            return _json(fault.status, status(fault.status, reason, "injected fault"), headers)
        if verb == "watch":
            return await self._watch(request, group, resource, ns, query)
        if verb == "patch" and name is not None:
            patch = await _body(request)
            with self.lock:
                return self._patch(group, resource, ns, name, request.content_type, patch, query)
        with self.lock:
            return self._handle(verb, group, resource, ns, name, query, await _body(request))

    def client_cert(self, user: str, **kwargs: Any) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) of a client certificate for `user`, from the CA."""
        assert self.ca is not None
        issued = self.ca.issue_cert(common_name=user, **kwargs)
        return issued.cert_chain_pems[0].bytes(), issued.private_key_pem.bytes()

    def _auth(self, request: web.Request) -> web.Response | None:
        if self.tokens is None:
            return None
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        names = {v for rdn in (peer or {}).get("subject", ()) for k, v in rdn if k == "commonName"}
        if names & self.cert_users:
            return None
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer ") and header[7:] in self.tokens:
            return None
        return _json(401, status(401, "Unauthorized", "Unauthorized"))

    def _handle(
        self,
        verb: str,
        group: str,
        resource: str,
        ns: str | None,
        name: str | None,
        query: dict[str, str],
        body: Obj | None,
    ) -> web.Response:
        namespaced = RESOURCES[(group, resource)][2]
        ns_key = (ns or "default") if namespaced else ""
        if verb == "list":
            return self._list(group, resource, ns, query)
        assert name is not None or verb == "create"
        key = (group, resource, ns_key, name or "")
        if verb == "get":
            found = self.objects.get(key)
            if found is None:
                return _json(404, status(404, "NotFound", f'{resource} "{name}" not found'))
            return _json(200, found)
        if verb == "delete":
            gone = self._remove(group, resource, ns_key, name or "")
            if gone is None:
                return _json(404, status(404, "NotFound", f'{resource} "{name}" not found'))
            return _json(200, gone)
        return self._write(verb, group, resource, ns_key, body, query)

    def _patch(
        self,
        group: str,
        resource: str,
        ns: str | None,
        name: str,
        kind: str,
        patch: Obj | None,
        query: dict[str, str],
    ) -> web.Response:
        """PATCH: the patch types of fakepatch.py, onto the stored object."""
        ns_key = (ns or "default") if RESOURCES[(group, resource)][2] else ""
        current = self.objects.get((group, resource, ns_key, name))
        if current is None:
            return _json(404, status(404, "NotFound", f'{resource} "{name}" not found'))
        try:
            patched = fakepatch.apply(kind, group, resource, copy.deepcopy(current), patch)
        except fakepatch.PatchError as exc:
            return _json(exc.code, status(exc.code, exc.reason, exc.message))
        meta = patched.setdefault("metadata", {})
        wanted = meta.get("resourceVersion")  # a patch may carry one: a precondition
        if wanted and wanted != current["metadata"]["resourceVersion"]:
            return _json(409, status(409, "Conflict", "the object has been modified"))
        if (meta.get("name"), meta.get("namespace", ns_key)) != (name, ns_key):
            return _json(422, status(422, "Invalid", "metadata.name and namespace are immutable"))
        meta["uid"] = current["metadata"]["uid"]
        meta.pop("resourceVersion", None)
        return _json(200, self._commit(patched, query))

    def _write(
        self,
        verb: str,
        group: str,
        resource: str,
        ns: str,
        body: Obj | None,
        query: dict[str, str],
    ) -> web.Response:
        kind = RESOURCES[(group, resource)][0]
        if not isinstance(body, dict) or body.get("kind", kind) != kind:
            return _json(400, status(400, "BadRequest", f"body is not a {kind}"))
        meta = body.setdefault("metadata", {})
        if ns:
            meta["namespace"] = ns
        body["kind"] = kind
        key = (group, resource, ns, meta.get("name", ""))
        current = self.objects.get(key)
        if verb == "create" and current is not None:
            return _json(409, status(409, "AlreadyExists", f'{resource} "{key[3]}" already exists'))
        if verb == "update":
            if current is None:
                return _json(404, status(404, "NotFound", f'{resource} "{key[3]}" not found'))
            wanted = meta.get("resourceVersion")
            if wanted and wanted != current["metadata"]["resourceVersion"]:
                return _json(409, status(409, "Conflict", "the object has been modified"))
            meta["uid"] = current["metadata"]["uid"]
        meta.pop("resourceVersion", None)
        return _json(201 if verb == "create" else 200, self._commit(body, query))

    def _commit(self, obj: Obj, query: dict[str, str]) -> Obj:
        """Store `obj`; with `dryRun=All` (kubectl's --dry-run=server) only show it."""
        if query.get("dryRun") != "All":
            return self._store(obj)
        kind, api_version, _ = RESOURCES[BY_KIND[obj["kind"]]]
        obj["apiVersion"], obj["kind"] = api_version, kind
        meta = obj["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))  # as the server does; no resourceVersion
        meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        return obj

    def _list(
        self, group: str, resource: str, ns: str | None, query: dict[str, str]
    ) -> web.Response:
        kind, api_version, _ = RESOURCES[(group, resource)]
        selector = parse_selector(query.get("labelSelector", ""))
        limit = int(query.get("limit") or 0)
        snapshot, start = self.rv, ""
        if query.get("continue"):
            token = json.loads(base64.b64decode(query["continue"]))
            snapshot, start = int(token["rv"]), token["start"]
            if snapshot < self.compacted:
                return _json(
                    410,
                    status(
                        410,
                        "Expired",
                        "The provided continue parameter is too old "
                        "to display a consistent list result.",
                    ),
                )
        state = self._state_at(group, resource, snapshot)
        keys = sorted(k for k, o in state.items() if ns in (None, k[0]) and matches(o, selector))
        keys = [k for k in keys if f"{k[0]}/{k[1]}" > start]
        page = keys[:limit] if limit else keys
        meta: Obj = {"resourceVersion": str(snapshot)}
        if limit and len(keys) > limit:
            last = f"{page[-1][0]}/{page[-1][1]}"
            meta["continue"] = base64.b64encode(
                json.dumps({"rv": snapshot, "start": last}).encode()
            ).decode()
            meta["remainingItemCount"] = len(keys) - limit
        items = [
            {k: v for k, v in state[k].items() if k not in ("kind", "apiVersion")} for k in page
        ]
        return _json(
            200,
            {"kind": f"{kind}List", "apiVersion": api_version, "metadata": meta, "items": items},
        )

    async def _watch(
        self, request: web.Request, group: str, resource: str, ns: str | None, query: dict[str, str]
    ) -> web.StreamResponse:
        kind, api_version, _ = RESOURCES[(group, resource)]
        raw_rv = query.get("resourceVersion", "")
        timeout = float(query.get("timeoutSeconds") or 1800)
        bookmarks = query.get("allowWatchBookmarks") == "true"
        selector = parse_selector(query.get("labelSelector", ""))
        with self.lock:
            since = int(raw_rv) if raw_rv not in ("", "0") else None
            if since is not None and since < self.compacted - 1:
                gone = status(
                    410, "Expired", f"too old resource version: {since} ({self.compacted})"
                )
                if self.gone_as == "status":
                    return _json(410, gone)
                backlog: list[Obj] = [{"type": "ERROR", "object": gone}]
                watcher = None
            else:
                watcher = _Watcher(group, resource, ns, selector, asyncio.Queue(), self.rv)
                backlog = self._backlog(watcher, since)
                self._watchers.add(watcher)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        try:
            for event in backlog:
                await response.write(json.dumps(event).encode() + b"\n")
            if watcher is not None:
                await self._stream(response, watcher, kind, api_version, timeout, bookmarks)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            if watcher is not None:
                with self.lock:
                    self._watchers.discard(watcher)
        with contextlib.suppress(Exception):
            await response.write_eof()
        return response

    def _backlog(self, watcher: _Watcher, since: int | None) -> list[Obj]:
        if since is None:  # "" or "0": the current state as ADDED, then changes
            state = self._state_at(watcher.group, watcher.resource, self.rv)
            return [
                {"type": "ADDED", "object": o}
                for (ns, _), o in sorted(state.items())
                if watcher.namespace in (None, ns) and matches(o, watcher.selector)
            ]
        events = []
        for change in self.history:
            if change.rv > since:
                events.extend(self._events_for(watcher, change))
        return events

    def _events_for(self, watcher: _Watcher, change: Change) -> list[Obj]:
        if (change.group, change.resource) != (watcher.group, watcher.resource):
            return []
        ns = change.obj["metadata"].get("namespace", "")
        if watcher.namespace not in (None, ns):
            return []
        now = change.type != "DELETED" and matches(change.obj, watcher.selector)
        before = change.old is not None and matches(change.old, watcher.selector)
        if change.type == "DELETED":
            return [{"type": "DELETED", "object": change.obj}] if before else []
        if now:
            return [{"type": "MODIFIED" if before else "ADDED", "object": change.obj}]
        if before:  # labels no longer match: gone from this watch
            return [{"type": "DELETED", "object": change.obj}]
        return []

    async def _stream(
        self,
        response: web.StreamResponse,
        watcher: _Watcher,
        kind: str,
        api_version: str,
        timeout: float,
        bookmarks: bool,
    ) -> None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                change = await asyncio.wait_for(
                    watcher.queue.get(), min(left, self.bookmark_interval)
                )
            except TimeoutError:
                if bookmarks and time.monotonic() < deadline:
                    mark = {
                        "kind": kind,
                        "apiVersion": api_version,
                        "metadata": {"resourceVersion": str(watcher.rv)},
                    }
                    await response.write(
                        json.dumps({"type": "BOOKMARK", "object": mark}).encode() + b"\n"
                    )
                continue
            if change is None:
                return
            watcher.rv = change.rv
            for event in self._events_for(watcher, change):
                await response.write(json.dumps(event).encode() + b"\n")


def _verb(method: str, name: str | None, query: dict[str, str]) -> str:
    if method == "GET":
        if query.get("watch") in ("1", "true"):
            return "watch"
        return "get" if name else "list"
    return {"POST": "create", "PUT": "update", "DELETE": "delete", "PATCH": "patch"}.get(
        method, method
    )


async def _body(request: web.Request) -> Obj | None:
    if not request.can_read_body:
        return None
    try:
        doc = await request.json()
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _json(code: int, body: Obj, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=code, text=json.dumps(body), content_type="application/json", headers=headers
    )
