"""Evaluating a compiled `?filter=`: the predicates the parser (filter.py) builds.

A predicate takes the record and the values the enclosing `any`/`all`
collection expressions bound (`env`, a tuple: each collection adds two
slots, the index or key and the value). A selector starts either at the
record (slot -1) or at one of those slots, and its path is a list of field
names, map keys and list indexes (ints). Every rule here is go-bexpr's:
through a list of records a match means any element; a missing map key is
empty and equal to nothing; a missing collection makes `any` false and `all`
true.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .filter_fields import BOOL, NUMBER, STRING, Field, ListOf, MapOf, Record

Env = tuple[Any, ...]


class Pred(Protocol):
    """A compiled test: the record, and the values bound so far (none at the
    top level, so the record alone is a call too)."""

    def __call__(self, record: Any, env: Env = (), /) -> bool: ...


Test = Callable[[Any], bool]
Part = str | int  # a field or map key, or a list index
RECORD = -1  # a selector that starts at the record, not at a bound variable


def field_types(path: list[Part], root: Field) -> list[Field]:
    """The type of the value at each depth of `path` (the parser resolved it:
    every step is valid). A list of records is walked through implicitly."""
    fields: list[Field] = [root]
    for part in path:
        field = fields[-1]
        if isinstance(part, int):
            assert isinstance(field, ListOf)
            fields.append(field.item)
            continue
        while isinstance(field, ListOf) and isinstance(field.item, Record):
            field = field.item
        fields.append(field.fields[part] if isinstance(field, Record) else field.item)  # type: ignore[union-attr]
    return fields


def matcher(
    path: list[Part], root: Field, slot: int, test: Test, missing: bool, negate: bool
) -> Pred:
    """Walk `path` from the record (or from bound slot `slot`) and apply `test`
    at its end. A field the encoder left out counts as its zero value; a key
    absent from a map answers `missing`. A negated operator (`!=`, `not in`...)
    is negated at the end of the path, so through a list it means "some element
    does not": go-bexpr's rule."""
    if negate:
        test, missing = _opposite(test), not missing
    fields = field_types(path, root)
    zeros = [zero(f) for f in fields]
    # Per step: a list index (int), or a name with whether its container is a map.
    steps = [(p, isinstance(p, int), isinstance(fields[d], MapOf)) for d, p in enumerate(path)]
    end = len(path)

    def walk(value: Any, depth: int) -> bool:
        while True:
            if value is None:
                value = zeros[depth]
            if depth == end:
                return test(value)
            part, index, in_map = steps[depth]
            if index:
                value = value[part] if part < len(value) else None  # type: ignore[operator]
            elif isinstance(value, list):  # a list of records: true if any element matches
                return any(walk(item, depth) for item in value)
            elif part in value:
                value = value[part]
            elif in_map:
                return missing
            else:
                value = None
            depth += 1

    if slot == RECORD:
        return lambda record, env=(): walk(record, 0)
    return lambda record, env=(): walk(env[slot], 0)


def getter(path: list[Part], root: Field, slot: int) -> Callable[[Any, Env], Any]:
    """The one value at the end of `path` (the parser refuses collection
    selectors that pass through a list of records); None when it is missing."""

    def get(record: Any, env: Env) -> Any:
        value = record if slot == RECORD else env[slot]
        for part in path:
            if value is None:
                return None
            if isinstance(part, int):
                value = value[part] if part < len(value) else None
            else:
                value = value.get(part)
        return value

    return get


def collection(get: Callable[[Any, Env], Any], is_map: bool, every: bool, inner: Pred) -> Pred:
    """`any`/`all SELECTOR as ... { inner }`: `inner` runs with two more slots,
    the index (or key) and the value of each element; stops at the first
    element that decides."""

    def check(record: Any, env: Env = ()) -> bool:
        found = get(record, env)
        if not found:
            return every  # missing or empty: any is false, all is true
        pairs = found.items() if is_map else enumerate(found)
        for key, value in pairs:
            if inner(record, (*env, key, value)) is not every:
                return not every
        return every

    return check


def zero(field: Field) -> Any:
    if isinstance(field, ListOf):
        return []
    if isinstance(field, MapOf | Record):
        return {}
    return {STRING: "", NUMBER: 0, BOOL: False}[field]


def _opposite(test: Test) -> Test:
    return lambda value: not test(value)


def negated(inner: Pred) -> Pred:
    return lambda record, env=(): not inner(record, env)


def any_of(terms: list[Pred]) -> Pred:
    if len(terms) == 2:  # the common case, without a generator
        first, second = terms
        return lambda record, env=(): first(record, env) or second(record, env)
    return lambda record, env=(): any(term(record, env) for term in terms)


def all_of(terms: list[Pred]) -> Pred:
    if len(terms) == 2:
        first, second = terms
        return lambda record, env=(): first(record, env) and second(record, env)
    return lambda record, env=(): all(term(record, env) for term in terms)
