"""`PUT /v1/txn`: many KV operations as one plan, all or nothing.

Each operation runs in order over the same Txn, so later ones see earlier
ones' writes; every key read becomes a condition of the one commit. If any
operation fails, the plan stages nothing and returns the errors (Consul rolls
back the same way and answers 409); otherwise the commit carries every write.
Each operation's result is the entries as the transaction saw them at that
operation (a get before a set shows the old value), as Consul's txnKVS reads
each one back inside its transaction; an entry the transaction had written
by then shows the commit's index (`shown`), which no later cas or index
check in the same transaction can name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import msgspec

from .._exceptions import RefusedError, ValidationError
from . import kvwrites
from .kv import KvEntry
from .txn import Txn

MAX_OPS: Final = 64


class KvOp(msgspec.Struct, kw_only=True):
    verb: str
    key: str = ""
    value: bytes = b""
    flags: int | None = None
    index: int = 0
    session: str = ""


class TxnOp(msgspec.Struct, kw_only=True):
    kv: KvOp | None = None
    node: dict[str, object] | None = None
    service: dict[str, object] | None = None
    check: dict[str, object] | None = None


class OpResult(msgspec.Struct):
    """The entries one operation shows (read, checked or written), as the
    transaction saw them then, each with whether the transaction had written
    it (its indexes are the commit's, unknown until it lands: `shown`)."""

    entries: list[tuple[KvEntry, bool]]
    values: bool = True  # False: entries are shown without their values


class OpError(msgspec.Struct):
    op_index: int
    what: str


class Outcome(msgspec.Struct):
    results: list[OpResult]
    errors: list[OpError]


def run(txn: Txn, ops: list[TxnOp]) -> Outcome:
    """The plan: every operation, in order; on any error, nothing staged."""
    if len(ops) > MAX_OPS:
        raise ValidationError(f"Transaction contains too many operations ({len(ops)} > {MAX_OPS})")
    results: list[OpResult] = []
    errors: list[OpError] = []
    for n, op in enumerate(ops):
        try:
            result = _one(txn, op)
        except (ValidationError, RefusedError) as exc:
            errors.append(OpError(n, str(exc)))
            continue
        if result is not None:
            results.append(result)
    if errors:
        txn.ops.clear()
        txn.conditions.clear()
        return Outcome([], errors)
    return Outcome(results, [])


def shown(outcome: Outcome, index: int) -> list[tuple[KvEntry, bool]]:
    """Every result's entries, with whether to show its value, the ones the
    transaction wrote carrying `index`, the index of its commit (and as their
    create index when the transaction created them), as in Consul."""
    return [
        (_landed(entry, index) if written else entry, result.values)
        for result in outcome.results
        for entry, written in result.entries
    ]


def _landed(entry: KvEntry, index: int) -> KvEntry:
    return msgspec.structs.replace(
        entry, modify_index=index, create_index=entry.create_index or index
    )


def _seen(txn: Txn, entries: list[KvEntry], values: bool = True) -> OpResult:
    """The result showing `entries` as the transaction has them now."""
    return OpResult([(e, txn.kv_rewritten(e.key)) for e in entries], values)


def _one(txn: Txn, op: TxnOp) -> OpResult | None:
    if op.kv is None:
        kind = "Node" if op.node else "Service" if op.service else "Check" if op.check else ""
        if kind:
            raise ValidationError(f"{kind} operations are not supported by waypost's /v1/txn yet")
        raise ValidationError("Operation has no KV, Node, Service or Check part")
    verb = _VERBS.get(op.kv.verb)
    if verb is None:
        raise ValidationError(f'unknown KV verb "{op.kv.verb}"')
    return verb(txn, op.kv)


def _set(txn: Txn, op: KvOp) -> OpResult:
    kvwrites.kv_set(txn, op.key, op.value, op.flags)
    return _written(txn, op.key)


def _cas(txn: Txn, op: KvOp) -> OpResult:
    if not kvwrites.kv_cas(txn, op.key, op.value, op.index, op.flags):
        raise ValidationError(f'failed to set key "{op.key}", index is stale')
    return _written(txn, op.key)


def _lock(txn: Txn, op: KvOp) -> OpResult:
    if not kvwrites.kv_acquire(txn, op.key, op.value, op.session, op.flags):
        raise ValidationError(f'failed to lock key "{op.key}", lock is already held')
    return _written(txn, op.key)


def _unlock(txn: Txn, op: KvOp) -> OpResult:
    if not kvwrites.kv_release(txn, op.key, op.value, op.session, op.flags):
        raise ValidationError(
            f'failed to unlock key "{op.key}", lock isn\'t held, or is held by another session'
        )
    return _written(txn, op.key)


def _written(txn: Txn, key: str) -> OpResult:
    entry = txn.kv(key)
    assert entry is not None  # it was just written (or held that already)
    return _seen(txn, [entry], values=False)  # Consul's results of writes carry no value


def _get(txn: Txn, op: KvOp) -> OpResult:
    kvwrites.validate_key(op.key)
    entry = txn.kv(op.key)
    if entry is None:
        raise ValidationError(f'key "{op.key}" doesn\'t exist')
    return _seen(txn, [entry])


def _get_tree(txn: Txn, op: KvOp) -> OpResult:
    return _seen(txn, txn.kv_under(op.key))


def _check_index(txn: Txn, op: KvOp) -> OpResult:
    entry = _existing(txn, op.key, "failed to check index")
    if txn.kv_rewritten(op.key):
        raise ValidationError(
            f'failed index check for key "{op.key}", current modify index '
            f"is this transaction's (an earlier operation wrote it) != {op.index}"
        )
    if entry.modify_index != op.index:
        raise ValidationError(
            f'failed index check for key "{op.key}", current modify index '
            f"{entry.modify_index} != {op.index}"
        )
    return _seen(txn, [entry], values=False)


def _check_session(txn: Txn, op: KvOp) -> OpResult:
    entry = _existing(txn, op.key, "failed to check session")
    if entry.session != op.session:
        raise ValidationError(
            f'failed session check for key "{op.key}", current session '
            f'"{entry.session}" != "{op.session}"'
        )
    return _seen(txn, [entry], values=False)


def _check_not_exists(txn: Txn, op: KvOp) -> None:
    kvwrites.validate_key(op.key)
    if txn.kv(op.key) is not None:
        raise ValidationError(f'key "{op.key}" exists')


def _delete(txn: Txn, op: KvOp) -> None:
    kvwrites.kv_delete(txn, op.key)


def _delete_tree(txn: Txn, op: KvOp) -> None:
    kvwrites.kv_delete_tree(txn, op.key)


def _delete_cas(txn: Txn, op: KvOp) -> None:
    if not kvwrites.kv_delete_cas(txn, op.key, op.index):
        raise ValidationError(f'failed to delete key "{op.key}", index is stale')


def _existing(txn: Txn, key: str, what: str) -> KvEntry:
    kvwrites.validate_key(key)
    entry = txn.kv(key)
    if entry is None:
        raise ValidationError(f'{what}, key "{key}" doesn\'t exist')
    return entry


_VERBS: Final[dict[str, Callable[[Txn, KvOp], OpResult | None]]] = {
    "set": _set,
    "cas": _cas,
    "lock": _lock,
    "unlock": _unlock,
    "get": _get,
    "get-tree": _get_tree,
    "check-index": _check_index,
    "check-session": _check_session,
    "check-not-exists": _check_not_exists,
    "delete": _delete,
    "delete-tree": _delete_tree,
    "delete-cas": _delete_cas,
}
