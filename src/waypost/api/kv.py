"""Consul's KV store and transactions over HTTP: `/v1/kv/<key>`, `/v1/txn`.

Parsing and encoding only: every write is a plan of `catalog/kvwrites.py`
(or `catalog/kvtxn.py`) run through `Catalog.write`, and every read blocks
through `ConsulApi.block` on the key's or the prefix's own topic.
"""

from __future__ import annotations

import base64
from typing import Any, Final

import msgspec

from .._exceptions import ValidationError
from ..catalog import Catalog, kvwrites
from ..catalog.aclrules import READ, WRITE
from ..catalog.kv import KvEntry, key_topic, prefix_topic
from ..catalog.kvtxn import MAX_OPS, TxnOp, run, shown
from . import access, decode
from .access import Perm
from .consul import ConsulApi
from .http import HttpError, Request, Response, Router, json

_ENCODER = msgspec.json.Encoder()
# ?raw serves a stored value as is: as Consul does, no browser may sniff it
# into HTML or run it (a KV value must not become a script on the agent's origin).
_RAW: Final = (
    (b"content-type", b"text/plain"),
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", b"sandbox"),
)
JSON = dict[str, Any]
MAX_TXN_BODY = MAX_OPS * (kvwrites.MAX_VALUE * 4 // 3 + 1024)  # base64 values


def entry_json(e: KvEntry, with_value: bool = True) -> JSON:
    """A KV entry in Consul's shape; `Value` is base64, null when empty or left out."""
    value = base64.b64encode(e.value).decode() if with_value and e.value else None
    out: JSON = {"LockIndex": e.lock_index, "Key": e.key, "Flags": e.flags, "Value": value}
    if e.session:
        out["Session"] = e.session  # omitted when unlocked, as Consul does
    out["CreateIndex"] = e.create_index
    out["ModifyIndex"] = e.modify_index
    return out


class KvApi:
    def __init__(self, consul: ConsulApi, catalog: Catalog) -> None:
        self.consul = consul
        self.catalog = catalog
        self.kv = catalog.state.kv

    def routes(self, r: Router) -> None:
        """Writes take PUT (and DELETE) only, as Consul's: see ConsulApi.routes.
        ACLs as Consul's: `key:read` for a key, lists filtered by `key:read`,
        `key:write` to change one (and every key under a deleted prefix)."""
        r.add("GET HEAD", "/v1/kv/", self.get, _READ)
        r.add("GET HEAD", "/v1/kv", self.get, _READ)
        r.add("PUT", "/v1/kv/", self.put, access.need("key", WRITE))
        r.add("DELETE", "/v1/kv/", self.delete, access.custom(_delete_needs))
        r.add("PUT", "/v1/txn", self.txn, access.custom(_txn_needs))

    # -- reads ---------------------------------------------------------------

    async def get(self, req: Request, key: str) -> Response:
        if req.has("keys"):
            return await self._keys(req, key)
        if req.has("recurse"):
            return await self._recurse(req, key)
        if not key:
            raise ValidationError("Missing key name")
        index = await self.consul.block(req, (key_topic(key),))
        entry = self.kv.get(key)
        headers = self.consul.read_headers(index, req)
        if entry is None:
            return Response(404, b"", headers)
        if req.has("raw"):
            return Response(200, entry.value, [*_RAW, *headers])
        return json([entry_json(entry)], headers)

    async def _recurse(self, req: Request, prefix: str) -> Response:
        index = await self.consul.block(req, (prefix_topic(prefix),))
        entries = self.kv.under(prefix)
        headers = self.consul.read_headers(index, req)
        if not entries:
            return Response(404, b"", headers)
        shown, filtered = access.apply_filter(req, [entry_json(e) for e in entries])
        return json(shown, [*headers, access.FILTERED_HEADER] if filtered else headers)

    async def _keys(self, req: Request, prefix: str) -> Response:
        separator = req.arg("separator") or req.arg("seperator")  # Consul reads both spellings
        index = await self.consul.block(req, (prefix_topic(prefix),))
        keys = self.kv.keys(prefix, separator)
        headers = self.consul.read_headers(index, req)
        if not keys and prefix:
            return Response(404, b"", headers)
        shown, filtered = access.apply_filter(req, keys)
        return json(shown, [*headers, access.FILTERED_HEADER] if filtered else headers)

    # -- writes --------------------------------------------------------------

    async def put(self, req: Request, key: str) -> Response:
        _one_of(req, "cas", "acquire", "release")
        flags = _uint(req, "flags") if req.has("flags") else None
        value = await _value(req)
        if req.has("acquire"):
            plan_result = await self.catalog.write(
                kvwrites.kv_acquire, key, value, req.arg("acquire"), flags
            )
        elif req.has("release"):
            plan_result = await self.catalog.write(
                kvwrites.kv_release, key, value, req.arg("release"), flags
            )
        elif req.has("cas"):
            cas = _uint(req, "cas")
            plan_result = await self.catalog.write(kvwrites.kv_cas, key, value, cas, flags)
        else:
            plan_result = await self.catalog.write(kvwrites.kv_set, key, value, flags)
        return json(plan_result)

    async def delete(self, req: Request, key: str) -> Response:
        _one_of(req, "recurse", "cas")
        if req.has("recurse"):
            return json(await self.catalog.write(kvwrites.kv_delete_tree, key))
        if req.has("cas"):
            return json(await self.catalog.write(kvwrites.kv_delete_cas, key, _uint(req, "cas")))
        return json(await self.catalog.write(kvwrites.kv_delete, key))

    # -- transactions ----------------------------------------------------------

    async def txn(self, req: Request, _: str) -> Response:
        ops = _txn_ops(await req.body(MAX_TXN_BODY))
        outcome, index = await self.catalog.write_at(run, ops)
        if outcome.errors:
            body = {
                "Results": None,
                "Errors": [{"OpIndex": e.op_index, "What": e.what} for e in outcome.errors],
            }
            return Response(409, _ENCODER.encode(body), [(b"content-type", b"application/json")])
        headers = [(b"x-consul-index", str(index or self.catalog.state.index).encode())]
        results = [{"KV": entry_json(e, values)} for e, values in shown(outcome, index)]
        return json({"Results": results or None, "Errors": None}, headers)


async def _value(req: Request) -> bytes:
    """The body, refused past Consul's 512 KB before it is all read."""
    try:
        return await req.body(kvwrites.MAX_VALUE)
    except HttpError as exc:
        if exc.status != 413:
            raise
        raise HttpError(
            413,
            f"Request body too large, max size: {kvwrites.MAX_VALUE} bytes "
            "(Consul's kv_max_value_size); nothing was written",
        ) from None


def _one_of(req: Request, *flags: str) -> None:
    given = [f for f in flags if req.has(f)]
    if len(given) > 1:
        raise ValidationError(f"Conflicting flags: {', '.join(given)} cannot be used together")


def _uint(req: Request, name: str) -> int:
    text = req.arg(name)
    if not (text.isascii() and text.isdigit()) or len(text) > 20 or int(text) >= 1 << 64:
        raise ValidationError(f'Invalid {name} "{text}": expected an unsigned integer')
    return int(text)


def _txn_ops(raw: bytes) -> list[TxnOp]:
    try:
        data = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ValidationError(f"Failed to parse body: {exc}") from exc
    except RecursionError:
        raise ValidationError("Failed to parse body: nested too deeply") from None
    if not isinstance(data, list):
        raise ValidationError("Failed to parse body: expected a JSON list of operations")
    if len(data) > MAX_OPS:
        raise HttpError(413, f"Transaction contains too many operations ({len(data)} > {MAX_OPS})")
    try:
        return msgspec.convert([decode.fold(op) for op in data], list[TxnOp])
    except msgspec.ValidationError as exc:
        raise ValidationError(f"Failed to parse body: {exc}") from exc


# -- ACLs (api/access.py): what each KV route needs ------------------------------

_KV_READS = frozenset({"get", "get-tree", "check-index", "check-session", "check-not-exists"})


def _key_of(item: Any) -> tuple[tuple[str, str], ...]:
    """An entry of `?recurse`, or a key of `?keys`."""
    return (("key", item["Key"] if isinstance(item, dict) else item),)


def _read_needs(ctx: access.Ctx) -> tuple[Perm, ...]:
    if ctx.req.has("recurse") or ctx.req.has("keys"):
        return ()  # lists are filtered by key:read instead
    return (("key", ctx.rest, READ),)


def _under(ctx: access.Ctx, prefix: str) -> list[Perm]:
    """Deleting a tree needs write on its prefix and on every key it holds."""
    return [("key", prefix, WRITE), *(("key", e.key, WRITE) for e in ctx.state.kv.under(prefix))]


def _delete_needs(ctx: access.Ctx) -> list[Perm]:
    if ctx.req.has("recurse"):
        return _under(ctx, ctx.rest)
    return [("key", ctx.rest, WRITE)]


async def _txn_needs(ctx: access.Ctx) -> list[Perm]:
    """Each KV operation's key; a body that does not parse needs nothing here
    (the handler answers 400), and other operation kinds are refused there."""
    try:
        ops = _txn_ops(await ctx.req.body(MAX_TXN_BODY))
    except ValidationError:
        return []
    perms: list[Perm] = []
    for op in ops:
        if op.kv is None:
            continue
        if op.kv.verb == "delete-tree":
            perms += _under(ctx, op.kv.key)
        else:
            perms.append(("key", op.kv.key, READ if op.kv.verb in _KV_READS else WRITE))
    return perms


_READ = access.filtered(access.items(_key_of), _read_needs)
