"""Consul's `?filter=` expressions: parse once, then test each record an endpoint returns.

The language is go-bexpr's, as Consul documents it (api-docs/features/filtering).
This is a small recursive-descent parser over the text itself (no separate
lexer: selectors, strings and keywords are read where the grammar expects
them, so every error names the exact position). Grammar, with `_` for
whitespace (required between words, optional around `==`, `!=` and brackets):

    filter    = or EOF
    or        = and { "or" and }
    and       = not { "and" not }
    not       = "not" not | "(" or ")" | match
    match     = selector ( ("==" | "!=") value
                         | ["not"] ("contains" | "matches") value
                         | "is" ["not"] "empty" )
              | value ["not"] "in" selector
    selector  = ident { "." ident | "[" string "]" }
    ident     = [A-Za-z] [A-Za-z0-9_/]*
    value     = string | number | selector          (a bare selector is its own text)
    string    = '"' Go escapes '"' | '`' raw '`'
    number    = ["-"] ("0" | [1-9][0-9]*) ["." [0-9]+]

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

from .._exceptions import ValidationError
from .filter_fields import BOOL, NUMBER, STRING, Field, ListOf, MapOf, Record

Predicate = Callable[[Any], bool]

_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_/]*")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?")
_WS = re.compile(r"[ \t\r\n]*")
_GO_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
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
        found = _Parser(expression, shape).parse()
        if len(_compiled) >= _CACHE_LIMIT:
            _compiled.clear()
        _compiled[key] = found
    return found


class _Selector:
    __slots__ = ("field", "path", "pos", "text")

    def __init__(self, text: str, path: list[str], pos: int, field: Field) -> None:
        self.text, self.path, self.pos, self.field = text, path, pos, field


class _Parser:
    def __init__(self, text: str, shape: Record) -> None:
        self.text = text
        self.pos = 0
        self.shape = shape

    # -- errors ------------------------------------------------------------

    def fail(self, message: str, pos: int | None = None) -> ValidationError:
        at = self.pos if pos is None else pos
        caret = " " * at + "^"
        return ValidationError(
            f"Failed to create boolean expression evaluator: position {at + 1}: {message}\n"
            f"  {self.text}\n  {caret}"
        )

    def found(self) -> str:
        if self.pos >= len(self.text):
            return "end of expression"
        word = _IDENT.match(self.text, self.pos)
        return f'"{word.group()}"' if word else repr(self.text[self.pos])

    # -- lexical helpers -----------------------------------------------------

    def skip(self) -> bool:
        """Skip whitespace; True if there was some."""
        end = _WS.match(self.text, self.pos).end()  # type: ignore[union-attr]
        moved = end > self.pos
        self.pos = end
        return moved

    def word(self, *choices: str) -> str | None:
        """The next word if it is one of `choices` (consumed), else None."""
        match = _IDENT.match(self.text, self.pos)
        if match and match.group() in choices:
            self.pos = match.end()
            return match.group()
        return None

    def peek_words(self, count: int) -> list[str]:
        """The next `count` words (without consuming), for the operator lookahead."""
        words, pos = [], self.pos
        for _ in range(count):
            pos = _WS.match(self.text, pos).end()  # type: ignore[union-attr]
            match = _IDENT.match(self.text, pos)
            if not match:
                break
            words.append(match.group())
            pos = match.end()
        return words

    def symbol(self, token: str) -> bool:
        if self.text.startswith(token, self.pos):
            self.pos += len(token)
            return True
        return False

    # -- grammar -------------------------------------------------------------

    def parse(self) -> Predicate:
        self.skip()
        if self.pos >= len(self.text):
            raise self.fail("the filter is empty")
        predicate = self.parse_or()
        self.skip()
        if self.pos < len(self.text):
            raise self.fail(f'expected "and", "or" or the end, found {self.found()}')
        return predicate

    def parse_or(self) -> Predicate:
        terms = [self.parse_and()]
        while self.keyword_ahead("or"):
            terms.append(self.parse_and())
        return terms[0] if len(terms) == 1 else _any_of(terms)

    def parse_and(self) -> Predicate:
        terms = [self.parse_not()]
        while self.keyword_ahead("and"):
            terms.append(self.parse_not())
        return terms[0] if len(terms) == 1 else _all_of(terms)

    def keyword_ahead(self, keyword: str) -> bool:
        """Consume `_ keyword _` if it comes next (the space before may be consumed already)."""
        start = self.pos
        self.skip()
        spaced = self.pos > 0 and self.text[self.pos - 1] in " \t\r\n"
        if spaced and self.word(keyword) and (self.skip() or self.pos >= len(self.text)):
            return True
        self.pos = start
        return False

    def parse_not(self) -> Predicate:
        self.skip()
        start = self.pos
        if self.word("not"):
            if self.skip() or self.text.startswith("(", self.pos):
                inner = self.parse_not()
                return lambda record: not inner(record)
            self.pos = start  # a selector that starts with "not", such as "notes"
        if self.symbol("("):
            inner = self.parse_or()
            self.skip()
            if not self.symbol(")"):
                raise self.fail(
                    f'expected ")" to close the "(" at position {start + 1}, found {self.found()}'
                )
            return inner
        return self.parse_match()

    def parse_match(self) -> Predicate:
        start = self.pos
        if self.pos < len(self.text) and self.text[self.pos] in '"`-0123456789':
            value = self.parse_literal()
            return self.parse_in(value, start)
        if not _IDENT.match(self.text, self.pos):
            raise self.fail(f"expected a selector, a value or '(', found {self.found()}")
        text, path = self.parse_path()
        if self.peek_words(1) == ["in"] or self.peek_words(2) == ["not", "in"]:
            return self.parse_in(text, start)
        selector = self.resolve(text, path, start)
        return self.parse_operator(selector)

    def parse_in(self, value: str, value_pos: int) -> Predicate:
        negate = self.keyword_ahead("not")
        if not self.keyword_ahead("in"):
            raise self.fail(f'expected "in" or "not in" after the value, found {self.found()}')
        sel_pos = self.pos
        if not _IDENT.match(self.text, self.pos):
            raise self.fail(f'expected a selector after "in", found {self.found()}')
        selector = self.resolve(*self.parse_path(), sel_pos)
        return self.membership(selector, value, value_pos, negate)

    def parse_operator(self, selector: _Selector) -> Predicate:
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

    def consume_words(self, count: int) -> None:
        for _ in range(count):
            self.skip()
            self.pos = _IDENT.match(self.text, self.pos).end()  # type: ignore[union-attr]

    def parse_path(self) -> tuple[str, list[str]]:
        start = self.pos
        first = _IDENT.match(self.text, self.pos)
        assert first is not None
        path = [first.group()]
        self.pos = first.end()
        while True:
            if self.text.startswith(".", self.pos) and _IDENT.match(self.text, self.pos + 1):
                part = _IDENT.match(self.text, self.pos + 1)
                assert part is not None
                path.append(part.group())
                self.pos = part.end()
            elif self.symbol("["):
                self.skip()
                if self.pos >= len(self.text) or self.text[self.pos] not in '"`':
                    raise self.fail('expected a quoted map key after "["')
                path.append(self.parse_string())
                self.skip()
                if not self.symbol("]"):
                    raise self.fail(f'expected "]" to close the index, found {self.found()}')
            else:
                return self.text[start : self.pos], path

    def parse_value(self) -> str:
        if self.pos < len(self.text) and self.text[self.pos] in '"`-0123456789':
            return self.parse_literal()
        if _IDENT.match(self.text, self.pos):
            return self.parse_path()[0]  # bexpr: a bare selector as a value is its own text
        raise self.fail(
            f"expected a value (a quoted string, a number or a word), found {self.found()}"
        )

    def parse_literal(self) -> str:
        if self.text[self.pos] in '"`':
            return self.parse_string()
        number = _NUMBER.match(self.text, self.pos)
        after = number.end() if number else self.pos
        if not number or (after < len(self.text) and not re.match(r"[ \t\r\n)]", self.text[after])):
            raise self.fail("invalid number")
        self.pos = after
        return number.group()

    def parse_string(self) -> str:
        quote, start = self.text[self.pos], self.pos
        end = self.text.find(quote, self.pos + 1)
        if quote == '"':
            end = _closing_quote(self.text, self.pos + 1)
        if end < 0:
            raise self.fail("unterminated string", start)
        raw = self.text[start + 1 : end]
        self.pos = end + 1
        return raw if quote == "`" else self.unescape(raw, start)

    def unescape(self, raw: str, start: int) -> str:
        def one(match: re.Match[str]) -> str:
            code = match.group(1)
            if code in _GO_ESCAPES:
                return _GO_ESCAPES[code]
            if code in '\\"':
                return code
            if code[0] in "xuU":
                return chr(int(code[1:], 16))
            if code[0] in "01234567":
                return chr(int(code, 8))
            raise self.fail(f"invalid escape \\{code} in string", start)

        pattern = r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[0-7]{3}|.)"
        return re.sub(pattern, one, raw)

    # -- compiling against the record shape ---------------------------------

    def resolve(self, text: str, path: list[str], pos: int) -> _Selector:
        field: Field = self.shape
        for n, part in enumerate(path):
            while isinstance(field, ListOf) and isinstance(field.item, Record):
                field = field.item  # through a list of records: any element
            if isinstance(field, Record) and part in field.fields:
                field = field.fields[part]
            elif isinstance(field, MapOf):
                field = field.item
            else:
                where = ".".join(path[: n + 1])
                raise self.fail(f'Selector "{where}" is not valid{_known(field)}', pos)
        return _Selector(text, path, pos, field)

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

    def equality(self, selector: _Selector, value: str, value_pos: int, negate: bool) -> Predicate:
        field = selector.field
        if field not in (STRING, NUMBER, BOOL):
            raise self.fail(
                f"{selector.text} is {_kind(field)}: == and != compare strings, numbers and "
                'booleans (for a member, use "value" in ' + f"{selector.text})",
                selector.pos,
            )
        wanted = self.coerce(field, value, value_pos, selector.text)
        return _matcher(selector.path, self.shape, lambda v: v == wanted, False, negate)

    def membership(
        self, selector: _Selector, value: str, value_pos: int, negate: bool
    ) -> Predicate:
        field = selector.field
        if field == STRING:
            return _matcher(selector.path, self.shape, lambda v: value in v, False, negate)
        if isinstance(field, ListOf) and field.item in (STRING, NUMBER, BOOL):
            wanted = self.coerce(field.item, value, value_pos, f"an element of {selector.text}")
            return _matcher(selector.path, self.shape, lambda v: wanted in v, False, negate)
        if isinstance(field, MapOf):
            return _matcher(selector.path, self.shape, lambda v: value in v, False, negate)
        raise self.fail(
            f"{selector.text} is {_kind(field)}: in and contains need a string, a list or a map",
            selector.pos,
        )

    def regex(self, selector: _Selector, value: str, value_pos: int, negate: bool) -> Predicate:
        if selector.field != STRING:
            raise self.fail(
                f"{selector.text} is {_kind(selector.field)}: matches needs a string", selector.pos
            )
        try:
            pattern = re.compile(value)
        except re.error as exc:
            raise self.fail(f"invalid regular expression {value!r}: {exc}", value_pos) from None
        search = pattern.search
        return _matcher(selector.path, self.shape, lambda v: search(v) is not None, False, negate)

    def emptiness(self, selector: _Selector, negate: bool) -> Predicate:
        if selector.field in (NUMBER, BOOL) or isinstance(selector.field, Record):
            raise self.fail(
                f"{selector.text} is {_kind(selector.field)}: is empty needs a string, a list "
                "or a map",
                selector.pos,
            )
        return _matcher(selector.path, self.shape, lambda v: len(v) == 0, True, negate)


def _closing_quote(text: str, pos: int) -> int:
    while pos < len(text):
        if text[pos] == "\\":
            pos += 2
            continue
        if text[pos] == '"':
            return pos
        pos += 1
    return -1


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


def _matcher(
    path: list[str], shape: Record, test: Predicate, missing: bool, negate: bool
) -> Predicate:
    """Walk `path` through a record (the dicts and lists of the JSON answer)
    and apply `test` at its end. A field the encoder left out counts as its
    zero value; a key absent from a map answers `missing` (go-bexpr's rule).
    A negated operator (`!=`, `not in`...) is negated at the end of the path,
    so through a list it means "some element does not": go-bexpr's rule too."""
    if negate:
        test, missing = _opposite(test), not missing
    parts: list[str] = []
    fields: list[Field] = [shape]  # fields[d]: the type of the value at depth d
    for part in path:
        field = fields[-1]
        while isinstance(field, ListOf) and isinstance(field.item, Record):
            field = field.item
        parts.append(part)
        fields.append(field.fields[part] if isinstance(field, Record) else field.item)  # type: ignore[union-attr]
    end = len(parts)

    def walk(value: Any, depth: int) -> bool:
        if value is None:
            value = _zero(fields[depth])
        if depth == end:
            return test(value)
        if isinstance(value, list):  # a list of records: true if any element matches
            return any(walk(item, depth) for item in value)
        part = parts[depth]
        if part not in value:
            return missing if isinstance(fields[depth], MapOf) else walk(None, depth + 1)
        return walk(value[part], depth + 1)

    return lambda record: walk(record, 0)


def _zero(field: Field) -> Any:
    if isinstance(field, ListOf):
        return []
    if isinstance(field, MapOf | Record):
        return {}
    return {STRING: "", NUMBER: 0, BOOL: False}[field]


def _opposite(test: Predicate) -> Predicate:
    return lambda value: not test(value)


def _any_of(terms: list[Predicate]) -> Predicate:
    return lambda record: any(term(record) for term in terms)


def _all_of(terms: list[Predicate]) -> Predicate:
    return lambda record: all(term(record) for term in terms)
