"""Consul's `?filter=` expressions: parse once, then test each record an endpoint returns.

The language is go-bexpr's, as Consul documents it (api-docs/features/filtering).
This is a small recursive-descent parser over the text itself (no separate
lexer: selectors, strings and keywords are read where the grammar expects
them, so every error names the exact position). Grammar, with `_` for
whitespace (required between words, optional around `==`, `!=` and brackets):

    filter     = or EOF
    or         = and { "or" and }
    and        = not { "and" not }
    not        = "not" not | "(" or ")" | collection | match
    collection = ("any" | "all") selector "as" names "{" or "}"
    names      = ident | ident "," ident | ident "," "_" | "_" "," ident
    match      = selector ( ("==" | "!=") value
                          | ["not"] ("contains" | "matches") value
                          | "is" ["not"] "empty" )
               | value ["not"] "in" selector
    selector   = ident { "." ident | "." digits | "[" string "]" }
               | '"' { "/" segment } '"'                  (a JSON Pointer, RFC 6901)
    ident      = [A-Za-z] [A-Za-z0-9_/]*
    value      = string | number | selector          (a bare selector is its own text)
    string     = '"' Go escapes '"' | '`' raw '`'
    number     = ["-"] ("0" | [1-9][0-9]*) ["." [0-9]+]

A collection expression runs its block once per element of a list or map
(`any Service.Tags as t { t == "v1" }`; `any Service.Meta as k, v { ... }`):
alone, the name is a list's value or a map's key; with two, the index (or
key) and the value, `_` for the one not wanted. go-bexpr's grammar admits it
only where a whole `or` expression stands (`any ... {} and x == 1` is its
parse error); here it may stand wherever `not` may (a superset: everything
go-bexpr accepts means the same). The names resolve before the
record's fields, innermost first (filter_eval.py evaluates them).

Compiling checks every selector against the endpoint's record shape
(`filter_fields.py`) and converts each value to the selected field's type, so
`Service.Port == "x"` or `Servcie.Tags ...` is a 400 before any record is
looked at, as in Consul. Evaluation then follows go-bexpr's rules: a selector
that passes through a list of records (`Checks.Status`) is true when any
element matches; a missing map key is empty and equal to nothing; `in` and
`contains` mean substring on a string, membership on a list, key on a map;
`matches` is a regular-expression search (Python's `re`, which agrees with
Go's RE2 on ordinary patterns; RE2-only syntax is refused as invalid).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .filter_eval import (
    RECORD,
    Part,
    Pred,
    all_of,
    any_of,
    collection,
    getter,
    matcher,
    negated,
)
from .filter_fields import BOOL, NUMBER, STRING, Field, ListOf, MapOf, Record
from .filter_lex import IDENT, POINTER, Lexer

Predicate = Callable[[Any], bool]

_GO_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_GO_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
_CACHE_LIMIT = 512

_compiled: dict[tuple[int, str], Predicate] = {}


def compile_filter(expression: str, shape: Record) -> Predicate:
    """The predicate for `expression` over records of `shape`, cached.

    Raises:
        ValidationError: the expression does not parse, names a selector the
            records do not have, or gives a value of the wrong type; the
            message names the position (1-based) and shows it under a caret.
    """
    key = (id(shape), expression)
    found = _compiled.get(key)
    if found is None:
        found = _Parser(expression, shape).parse()  # env defaults to (): no names bound yet
        if len(_compiled) >= _CACHE_LIMIT:
            _compiled.clear()
        _compiled[key] = found
    return found


class _Selector:
    """A resolved selector: its `path` starts at the record or at bound slot
    `slot` (whose type is `root`) and ends at a value of type `field`."""

    __slots__ = ("field", "path", "pos", "root", "slot", "text", "through")

    def __init__(self, text: str, path: list[Part], pos: int, field: Field) -> None:
        self.text, self.path, self.pos, self.field = text, path, pos, field
        self.root: Field = field
        self.slot = RECORD
        self.through = False  # passes through a list of records (any element)


class _Binding:
    """A name an `any`/`all` expression binds: its slot in the env, its type,
    and whether it is an index or key (a plain value, no fields below it)."""

    __slots__ = ("field", "name", "plain", "slot")

    def __init__(self, name: str, slot: int, field: Field, plain: bool) -> None:
        self.name, self.slot, self.field, self.plain = name, slot, field, plain


class _Parser(Lexer):
    def __init__(self, text: str, shape: Record) -> None:
        super().__init__(text)
        self.shape = shape
        self.scope: list[_Binding] = []  # innermost last
        self.slots = 0  # env slots the enclosing collections use

    # -- grammar -------------------------------------------------------------

    def parse(self) -> Pred:
        self.skip()
        if self.pos >= len(self.text):
            raise self.fail("the filter is empty")
        predicate = self.parse_or()
        self.skip()
        if self.pos < len(self.text):
            raise self.fail(f'expected "and", "or" or the end, found {self.found()}')
        return predicate

    def parse_or(self) -> Pred:
        terms = [self.parse_and()]
        while self.keyword_ahead("or"):
            terms.append(self.parse_and())
        return terms[0] if len(terms) == 1 else any_of(terms)

    def parse_and(self) -> Pred:
        terms = [self.parse_not()]
        while self.keyword_ahead("and"):
            terms.append(self.parse_not())
        return terms[0] if len(terms) == 1 else all_of(terms)

    def parse_not(self) -> Pred:
        self.skip()
        start = self.pos
        if self.word("not"):
            if self.skip() or self.text.startswith("(", self.pos):
                return negated(self.parse_not())
            self.pos = start  # a selector that starts with "not", such as "notes"
        found = self.parse_collection()
        if found is not None:
            return found
        if self.symbol("("):
            inner = self.parse_or()
            self.skip()
            if not self.symbol(")"):
                raise self.fail(
                    f'expected ")" to close the "(" at position {start + 1}, found {self.found()}'
                )
            return inner
        return self.parse_match()

    def parse_match(self) -> Pred:
        start = self.pos
        pointer = self.pointer_ahead()
        if pointer is not None:
            return self.parse_operator(self.resolve(*pointer, start))
        if self.pos < len(self.text) and self.text[self.pos] in '"`-0123456789':
            value = self.parse_literal()
            return self.parse_in(value, start)
        if not IDENT.match(self.text, self.pos):
            raise self.fail(f"expected a selector, a value or '(', found {self.found()}")
        text, path = self.parse_path()
        if self.peek_words(1) == ["in"] or self.peek_words(2) == ["not", "in"]:
            return self.parse_in(text, start)
        selector = self.resolve(text, path, start)
        return self.parse_operator(selector)

    def parse_in(self, value: str, value_pos: int) -> Pred:
        negate = self.keyword_ahead("not")
        if not self.keyword_ahead("in"):
            raise self.fail(f'expected "in" or "not in" after the value, found {self.found()}')
        sel_pos = self.pos
        selector = self.resolve(*self.parse_selector('after "in"'), sel_pos)
        return self.membership(selector, value, value_pos, negate)

    def parse_operator(self, selector: _Selector) -> Pred:
        self.skip()
        op_pos = self.pos
        for symbol, negate in (("==", False), ("!=", True)):
            if self.symbol(symbol):
                self.skip()
                value_pos = self.pos
                return self.equality(selector, self.parse_value(), value_pos, negate)
        words = self.peek_words(3)
        negate = words[:1] == ["not"]
        operator = words[1 if negate else 0] if len(words) > negate else ""
        if operator in ("contains", "matches"):
            self.consume_words(2 if negate else 1)
            if not self.skip():
                raise self.fail(f'expected a space and a value after "{operator}"')
            value_pos = self.pos
            value = self.parse_value()
            if operator == "contains":
                return self.membership(selector, value, value_pos, negate)
            return self.regex(selector, value, value_pos, negate)
        if words[:2] == ["is", "empty"] or words == ["is", "not", "empty"]:
            self.consume_words(len(words) if words[1] == "not" else 2)
            return self.emptiness(selector, words[1] == "not")
        raise self.fail(
            "expected an operator (==, !=, contains, not contains, matches, not matches, "
            f"in, not in, is empty, is not empty) after {selector.text}, found {self.found()}",
            op_pos,
        )

    # -- compiling against the record shape ---------------------------------

    def resolve(self, text: str, path: list[str], pos: int) -> _Selector:
        """Check `path` against the record's shape (or a bound variable's type,
        when it starts with a name an enclosing `any`/`all` bound)."""
        bound = next((b for b in reversed(self.scope) if b.name == path[0]), None)
        field: Field = self.shape if bound is None else bound.field
        if bound is not None and bound.plain and len(path) > 1:
            what = "a map key" if bound.field == STRING else "a list index"
            raise self.fail(f'"{path[0]}" is {what}, so {text} is not valid', pos)
        rest = path if bound is None else path[1:]
        resolved: list[Part] = []
        through = False
        for n, part in enumerate(rest):
            if isinstance(field, ListOf) and part.isdigit():
                resolved.append(int(part))  # an element of the list
                field = field.item
                continue
            while isinstance(field, ListOf) and isinstance(field.item, Record):
                field = field.item  # through a list of records: any element
                through = True
            if isinstance(field, Record) and part in field.fields:
                field = field.fields[part]
            elif isinstance(field, MapOf):
                field = field.item
            else:
                where = _shown(text, path[: n + 1 + (bound is not None)])
                raise self.fail(f'Selector "{where}" is not valid{_known(field)}', pos)
            resolved.append(part)
        selector = _Selector(text, resolved, pos, field)
        selector.through = through
        if bound is not None:
            selector.root, selector.slot = bound.field, bound.slot
        else:
            selector.root = self.shape
        return selector

    # -- any / all ... as ... { ... } ------------------------------------------

    def parse_collection(self) -> Pred | None:
        """go-bexpr's collection expression, or None (nothing consumed) if none
        comes next: `any|all SELECTOR as NAME|IDX, VALUE|IDX, _|_, VALUE { or }`."""
        start = self.pos
        op = self.word("any", "all")
        if (
            op is None
            or not self.skip()
            or not (POINTER.match(self.text, self.pos) or IDENT.match(self.text, self.pos))
        ):
            self.pos = start
            return None
        sel_pos = self.pos
        text, path = self.parse_selector(f'after "{op}"')
        if not self.keyword_ahead("as"):
            self.pos = start  # `any == x`, `all in Tags`...: "any" is a plain word there
            return None
        selector = self.resolve(text, path, sel_pos)
        field = selector.field
        if not isinstance(field, ListOf | MapOf) or selector.through:
            problem = "passes through a list" if selector.through else f"is {_kind(field)}"
            raise self.fail(f"{op} needs a list or a map: {text} {problem}", sel_pos)
        bindings = self.parse_bindings(isinstance(field, MapOf), field.item)
        return self.parse_block(op, selector, bindings, start)

    def parse_bindings(self, is_map: bool, item: Field) -> list[_Binding]:
        """`v` (a list's value, a map's key), `i, v`, `i, _` or `_, v`."""
        pos = self.pos
        names = []
        for n in range(2):
            if n:
                self.skip()
                if not self.symbol(","):
                    break
                self.skip()
            if self.symbol("_"):
                names.append("_")
                continue
            word = IDENT.match(self.text, self.pos)
            if word is None:
                raise self.fail(f"expected a name to bind, found {self.found()}")
            names.append(word.group())
            self.pos = word.end()
        if names == ["_"] or names == ["_", "_"]:
            raise self.fail('"_" alone binds nothing: name the index, the value or both', pos)
        if len(names) == 2 and names[0] == names[1]:
            raise self.fail(
                f'"{names[0]}" cannot be used as a placeholder for both the index and the value',
                pos,
            )
        key = STRING if is_map else NUMBER
        index_slot, value_slot = self.slots, self.slots + 1
        if len(names) == 1:  # go-bexpr: alone, it is a list's value or a map's key
            alone = (
                _Binding(names[0], index_slot, key, True)
                if is_map
                else _Binding(names[0], value_slot, item, False)
            )
            return [alone]
        found = [
            _Binding(names[0], index_slot, key, True),
            _Binding(names[1], value_slot, item, False),
        ]
        return [b for b in found if b.name != "_"]

    def parse_block(
        self, op: str, selector: _Selector, bindings: list[_Binding], start: int
    ) -> Pred:
        self.skip()
        if not self.symbol("{"):
            raise self.fail(f'expected "{{" after the names {op} binds, found {self.found()}')
        brace = self.pos - 1
        self.scope += bindings
        self.slots += 2
        inner = self.parse_or()
        self.slots -= 2
        del self.scope[len(self.scope) - len(bindings) :]
        self.skip()
        if not self.symbol("}"):
            raise self.fail(
                f'expected "}}" to close the "{{" at position {brace + 1}, found {self.found()}'
            )
        get = getter(selector.path, selector.root, selector.slot)
        return collection(get, isinstance(selector.field, MapOf), op == "all", inner)

    def coerce(self, field: Field, value: str, pos: int, what: str) -> Any:
        if field == NUMBER:
            try:
                return float(value) if "." in value else int(value, 0)
            except ValueError:
                raise self.fail(f'{what} is a number: "{value}" is not one', pos) from None
        if field == BOOL:
            if value in _GO_TRUE or value in _GO_FALSE:
                return value in _GO_TRUE
            raise self.fail(f'{what} is true or false: "{value}" is neither', pos)
        return value

    def match_at(
        self, selector: _Selector, test: Callable[[Any], bool], missing: bool, negate: bool
    ) -> Pred:
        return matcher(selector.path, selector.root, selector.slot, test, missing, negate)

    def equality(self, selector: _Selector, value: str, value_pos: int, negate: bool) -> Pred:
        field = selector.field
        if field not in (STRING, NUMBER, BOOL):
            raise self.fail(
                f"{selector.text} is {_kind(field)}: == and != compare strings, numbers and "
                'booleans (for a member, use "value" in ' + f"{selector.text})",
                selector.pos,
            )
        wanted = self.coerce(field, value, value_pos, selector.text)
        return self.match_at(selector, lambda v: v == wanted, False, negate)

    def membership(self, selector: _Selector, value: str, value_pos: int, negate: bool) -> Pred:
        field = selector.field
        if field == STRING:
            return self.match_at(selector, lambda v: value in v, False, negate)
        if isinstance(field, ListOf) and field.item in (STRING, NUMBER, BOOL):
            wanted = self.coerce(field.item, value, value_pos, f"an element of {selector.text}")
            return self.match_at(selector, lambda v: wanted in v, False, negate)
        if isinstance(field, MapOf):
            return self.match_at(selector, lambda v: value in v, False, negate)
        raise self.fail(
            f"{selector.text} is {_kind(field)}: in and contains need a string, a list or a map",
            selector.pos,
        )

    def regex(self, selector: _Selector, value: str, value_pos: int, negate: bool) -> Pred:
        if selector.field != STRING:
            raise self.fail(
                f"{selector.text} is {_kind(selector.field)}: matches needs a string", selector.pos
            )
        try:
            pattern = re.compile(value)
        except re.error as exc:
            raise self.fail(f"invalid regular expression {value!r}: {exc}", value_pos) from None
        search = pattern.search
        return self.match_at(selector, lambda v: search(v) is not None, False, negate)

    def emptiness(self, selector: _Selector, negate: bool) -> Pred:
        if selector.field in (NUMBER, BOOL) or isinstance(selector.field, Record):
            raise self.fail(
                f"{selector.text} is {_kind(selector.field)}: is empty needs a string, a list "
                "or a map",
                selector.pos,
            )
        return self.match_at(selector, lambda v: len(v) == 0, True, negate)


def _shown(text: str, path: list[str]) -> str:
    """A selector's first parts, written as it was (dotted or a JSON Pointer)."""
    if text.startswith('"'):
        return "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in path)
    return ".".join(path)


def _known(field: Field) -> str:
    if isinstance(field, Record):
        return f" (valid here: {', '.join(field.fields)})"
    return f" ({_kind(field)} has no fields)"


def _kind(field: Field) -> str:
    if isinstance(field, ListOf):
        return "a list"
    if isinstance(field, MapOf):
        return "a map"
    if isinstance(field, Record):
        return "a record"
    return {STRING: "a string", NUMBER: "a number", BOOL: "a boolean"}[field]
