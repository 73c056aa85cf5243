"""gzip on every HTTP answer whose client accepts it, as Consul's agent does.

Consul wraps its whole HTTP API in `gziphandler.GzipHandlerWithOpts(
gziphandler.MinSize(0))` (agent/http.go): every response gets `Vary:
Accept-Encoding`, and every non-empty body is gzipped when the request's
`Accept-Encoding` gives gzip a q-value above 0. Go's net/http client (Consul's
own `api` package: consul-template, Nomad, Vault, Prometheus' consul_sd) and
Python's requests and httpx ask for gzip by default, so a 10 KB
`/v1/health/service` answer is ~1 KB on the wire from Consul: without this,
every watcher here received ten times the bytes, and the agent spent most of
its time on a change writing them (docs/benchmarks.md, Agent 2 and 3).

The stdlib's zlib rather than an ASGI middleware (Starlette's GZipMiddleware):
the protocol's fast path (api/fastpath.py) never runs ASGI and must compress
an answer once for every watcher it goes to, not once per connection; and
that middleware matches "gzip" as a substring of the header, ignoring
q-values. Compressed bodies are kept by their uncompressed bytes (the
encoded-answer cache hands out the same bytes object while an index stands,
whose hash Python keeps), so a read repeated by many clients is compressed
once per change.

The header is read per RFC 9110 12.5.3: `gzip;q=0` refuses gzip; `*` stands
for gzip when gzip is not named; an explicit `identity` with a higher q-value
than gzip's is preferred. A q-value that does not parse refuses that coding
(the body goes uncompressed, which every client can read) rather than
failing the request.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Sequence

from .._bounded import ByteBoundedCache
from .http import Response

LEVEL = 6  # Go's gzip.DefaultCompression, what gziphandler uses
VARY = (b"vary", b"Accept-Encoding")
GZIP = (b"content-encoding", b"gzip")
COMPRESSED_BYTES = 16 << 20  # compressed bodies kept, keys (the plain bodies) included
_PARSED_LIMIT = 256  # distinct Accept-Encoding values remembered
# Bodies past this are compressed on a worker thread: zlib releases the GIL,
# and an 8.7 MiB answer took 65-69 ms to compress, a stall of every other
# request. Those that fit the cache (an entry may take an eighth of it: about
# 2 MiB with its compressed bytes) are kept as the smaller ones are (`keep`).
OFF_LOOP = 1 << 20

# (plain, compressed): the key is the plain body, counted in the budget too.
_compressed: ByteBoundedCache[tuple[bytes, bytes]] = ByteBoundedCache(
    COMPRESSED_BYTES, lambda pair: len(pair[0]) + len(pair[1])
)
_parsed: dict[bytes, bool] = {}


def accepts_gzip(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether a request with these (lower-cased, as ASGI gives them) headers
    takes a gzipped answer."""
    for name, value in headers:
        if name == b"accept-encoding":
            return _accepts(value)
    return False


def _accepts(value: bytes) -> bool:
    found = _parsed.get(value)
    if found is None:
        found = _prefers_gzip(_qvalues(value))
        if len(_parsed) >= _PARSED_LIMIT:
            _parsed.clear()  # clients send a handful of values: keep the table bounded
        _parsed[value] = found
    return found


def _qvalues(value: bytes) -> dict[str, float]:
    """`gzip;q=0.5, br` -> {"gzip": 0.5, "br": 1.0}; a bad q-value counts as 0."""
    codings: dict[str, float] = {}
    for item in value.decode("latin-1").split(","):
        coding, _, params = item.partition(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, raw = param.partition("=")
            if key.strip().lower() == "q":
                q = _qvalue(raw.strip())
        codings[coding] = q
    return codings


def _qvalue(raw: str) -> float:
    try:
        q = float(raw)
    except ValueError:
        return 0.0
    return q if 0.0 <= q <= 1.0 else 0.0


def _prefers_gzip(codings: dict[str, float]) -> bool:
    q = codings.get("gzip", codings.get("x-gzip", codings.get("*", 0.0)))
    identity = codings.get("identity")
    return q > 0.0 and (identity is None or q >= identity)


def gzipped(body: bytes) -> bytes:
    """`body` as a gzip member, from the cache when the same bytes came before."""
    found = _compressed.get(body)
    if found is not None:
        return found[1]
    packed = pack(body)
    _compressed.put(body, (body, packed))
    return packed


def pack(body: bytes) -> bytes:
    """`body` as a gzip member (no cache)."""
    # zlib's gzip wrapper writes mtime 0: the same body, the same bytes.
    packer = zlib.compressobj(LEVEL, zlib.DEFLATED, 31)
    return packer.compress(body) + packer.flush()


def _wanted(response: Response, gzip: bool) -> bool:
    """Consul's gziphandler on one response: `Vary` always; the body gzipped
    when the client takes it, there is one, and it is not encoded already.
    Streamed bodies (`/v1/agent/monitor`) go as they are."""
    response.headers.append(VARY)
    if not gzip or not response.body:  # a Streaming response's body is b""
        return False
    return not any(name == b"content-encoding" for name, _ in response.headers)


def encode_or_defer(response: Response, gzip: bool) -> bytes | None:
    """`_wanted`, compressed here; but a body past OFF_LOOP is returned, its
    headers already set, for the caller to `pack` on a worker thread and set
    as the body. None: the response is done."""
    if not _wanted(response, gzip):
        return None
    response.headers.append(GZIP)
    body = response.body
    if len(body) < OFF_LOOP:
        response.body = gzipped(body)
        return None
    found = _compressed.get(body)
    if found is None:
        return body
    response.body = found[1]
    return None


def keep(plain: bytes, packed: bytes) -> None:
    """A body `pack`ed off the loop, kept as `gzipped` keeps its own (the
    cache takes what fits; call it on the loop: the cache has no lock)."""
    _compressed.put(plain, (plain, packed))


async def encode_off_loop(response: Response, gzip: bool) -> None:
    """`encode_or_defer`, with the deferred body compressed on a worker thread."""
    plain = encode_or_defer(response, gzip)
    if plain is not None:
        response.body = await asyncio.to_thread(pack, plain)
        keep(plain, response.body)
