"""Resources to bytes, once: what every stream that gets the same thing shares.

A catalog change rebuilds the snapshot of every connected node (server.py);
most of their resources come out the same as before, and many nodes get the
same ones (every client of `db` gets the same `upstream:db` endpoints). So:

- `Encoder` maps a resource's canonical JSON text to its version digest and
  its protobuf `Any`, for every node: a resource is parsed into protobuf
  (`json_format.ParseDict`, the costly step) once per distinct content, not
  once per node and generation. The cache is bounded by bytes (`BUDGET`, the
  text and the serialized message of each entry), the least recently used
  entries going first (a digest hit touches its entry, and every push asks
  for the digest of every resource of every node): a flood of distinct or
  large resources costs at most the budget, and what every push asks for
  stays encoded, however long ago it was first encoded (a cache cleared whole
  when full encoded every resource again at the next push).
- `Built` is one node's snapshot at one generation; it serializes the
  `DiscoveryResponse` for a (type, names) once, without a nonce, and every
  stream of that node sends those bytes with its own nonce appended: a
  serialized protobuf message followed by another one's fields parses as
  their merge, so `base + nonce field` is the full response. The server's
  gRPC method sends bytes as they are (server.py registers it so).
"""

from __future__ import annotations

import hashlib
import json

from envoy.service.discovery.v3 import discovery_pb2  # type: ignore[import-untyped]
from google.protobuf import any_pb2, json_format  # type: ignore[import-untyped]

from .._bounded import ByteBoundedCache
from . import resources as r

BUDGET = 64 << 20  # bytes of resources kept encoded (their text and message)

# A resource's canonical text -> (the text again, for its size; its version
# digest; its message, once parsed).
_Entry = tuple[str, str, any_pb2.Any | None]


def _size(entry: _Entry) -> int:
    text, _, message = entry
    return len(text) + (message.ByteSize() if message is not None else 0)


class Encoder:
    def __init__(self, budget: int = BUDGET) -> None:
        self._by_text: ByteBoundedCache[_Entry] = ByteBoundedCache(budget, _size)
        # The cache's own C methods, held here: one attribute look-up less on
        # the per-resource, per-node path pays for the touch.
        self._get = self._by_text.get
        self._touch = self._by_text.touch

    def _entry(self, text: str) -> _Entry:
        hit = self._by_text.get(text)
        if hit is None:
            hit = (text, hashlib.blake2b(text.encode(), digest_size=8).hexdigest(), None)
            self._by_text.put(text, hit)
        return hit

    def digest(self, text: str) -> str:
        hit = self._get(text)  # `_entry` inlined: this runs per resource and node
        if hit is None:
            return self._entry(text)[1]
        self._touch(text)  # in use: the last to be evicted
        return hit[1]

    def message(self, text: str, resource: r.JSON) -> any_pb2.Any:
        """A peek, no touch: `Built.response` asks for every resource's digest
        (which touches) just before its message, and a second touch per
        resource per push cost 1.5% more per push (docs/benchmarks.md)."""
        _, digest, found = self._get(text) or self._entry(text)
        if found is None:
            found = json_format.ParseDict(resource, any_pb2.Any())
            self._by_text.put(text, (text, digest, found))
        return found


class Built:
    """One node's snapshot at one generation: texts, versions and responses made once."""

    def __init__(self, snap: r.Snapshot, encoder: Encoder) -> None:
        self.snap = snap
        self.encoder = encoder
        self._text: dict[tuple[str, str], str] = {}
        self._responses: dict[tuple[str, tuple[str, ...]], tuple[str, bytes]] = {}

    def _canonical(self, type_url: str, name: str) -> str:
        key = (type_url, name)
        text = self._text.get(key)
        if text is None:
            text = self._text[key] = json.dumps(self.snap[type_url][name], sort_keys=True)
        return text

    def digest(self, type_url: str, name: str) -> str:
        return self.encoder.digest(self._canonical(type_url, name))

    def version(self, type_url: str, names: list[str]) -> str:
        """The version of these resources: a hash of their digests (content, not time)."""
        joined = "|".join(f"{n}={self.digest(type_url, n)}" for n in names)
        return hashlib.blake2b(joined.encode(), digest_size=8).hexdigest()

    def response(self, type_url: str, names: list[str]) -> tuple[str, bytes]:
        """(version, the serialized DiscoveryResponse without its nonce)."""
        key = (type_url, tuple(names))
        found = self._responses.get(key)
        if found is None:
            version = self.version(type_url, names)
            resources = [
                self.encoder.message(self._canonical(type_url, n), self.snap[type_url][n])
                for n in names
            ]
            message = discovery_pb2.DiscoveryResponse(
                version_info=version, type_url=type_url, resources=resources
            )
            found = self._responses[key] = (version, message.SerializeToString())
        return found


def with_nonce(base: bytes, nonce: str) -> bytes:
    """`base` (a serialized DiscoveryResponse) with its nonce field set."""
    return base + bytes(discovery_pb2.DiscoveryResponse(nonce=nonce).SerializeToString())
