"""The lexical half of the `?filter=` parser (filter.py): words, symbols,
strings with Go's escapes, numbers, selectors (dotted or JSON Pointer), and
errors that name the position. There is no separate token stream: the parser
asks for what its grammar expects where it expects it, so an error can say
exactly what was found instead.
"""

from __future__ import annotations

import re

from .._exceptions import ValidationError

IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_/]*")
_INDEX = re.compile(r"[0-9]+")
# A JSON Pointer selector (RFC 6901) in double quotes, go-bexpr's segment characters.
POINTER = re.compile(r'"((?:/[\w\-.~:|]+)+)"')
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?")
_WS = re.compile(r"[ \t\r\n]*")
_GO_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


class Lexer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

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
        word = IDENT.match(self.text, self.pos)
        return f'"{word.group()}"' if word else repr(self.text[self.pos])

    def skip(self) -> bool:
        """Skip whitespace; True if there was some."""
        end = _WS.match(self.text, self.pos).end()  # type: ignore[union-attr]
        moved = end > self.pos
        self.pos = end
        return moved

    def word(self, *choices: str) -> str | None:
        """The next word if it is one of `choices` (consumed), else None."""
        match = IDENT.match(self.text, self.pos)
        if match and match.group() in choices:
            self.pos = match.end()
            return match.group()
        return None

    def peek_words(self, count: int) -> list[str]:
        """The next `count` words (without consuming), for the operator lookahead."""
        words, pos = [], self.pos
        for _ in range(count):
            pos = _WS.match(self.text, pos).end()  # type: ignore[union-attr]
            match = IDENT.match(self.text, pos)
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

    def keyword_ahead(self, keyword: str) -> bool:
        """Consume `_ keyword _` if it comes next (the space before may be consumed already)."""
        start = self.pos
        self.skip()
        spaced = self.pos > 0 and self.text[self.pos - 1] in " \t\r\n"
        if spaced and self.word(keyword) and (self.skip() or self.pos >= len(self.text)):
            return True
        self.pos = start
        return False

    def consume_words(self, count: int) -> None:
        for _ in range(count):
            self.skip()
            self.pos = IDENT.match(self.text, self.pos).end()  # type: ignore[union-attr]

    def parse_selector(self, where: str) -> tuple[str, list[str]]:
        """A dotted selector or a quoted JSON Pointer, wherever one must come."""
        pointer = self.pointer_ahead(always=True)
        if pointer is not None:
            return pointer
        if not IDENT.match(self.text, self.pos):
            raise self.fail(f"expected a selector {where}, found {self.found()}")
        return self.parse_path()

    def pointer_ahead(self, always: bool = False) -> tuple[str, list[str]] | None:
        """A JSON Pointer selector (`"/Service/Meta/env"`) if one comes next and,
        unless `always`, is not the value of an `in` (`"/x" in Service.Tags`);
        `~1` and `~0` stand for `/` and `~` in a segment (RFC 6901)."""
        match = POINTER.match(self.text, self.pos)
        if match is None:
            return None
        saved, self.pos = self.pos, match.end()
        if not always and (self.peek_words(1) == ["in"] or self.peek_words(2) == ["not", "in"]):
            self.pos = saved
            return None
        parts = match.group(1).split("/")[1:]
        return match.group(), [p.replace("~1", "/").replace("~0", "~") for p in parts]

    def parse_path(self) -> tuple[str, list[str]]:
        start = self.pos
        first = IDENT.match(self.text, self.pos)
        assert first is not None
        path = [first.group()]
        self.pos = first.end()
        while True:
            part = self.text.startswith(".", self.pos) and (
                IDENT.match(self.text, self.pos + 1) or _INDEX.match(self.text, self.pos + 1)
            )
            if part:  # `.Name`, or go-bexpr's `.0` for a list's element
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
        if IDENT.match(self.text, self.pos):
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


def _closing_quote(text: str, pos: int) -> int:
    while pos < len(text):
        if text[pos] == "\\":
            pos += 2
            continue
        if text[pos] == '"':
            return pos
        pos += 1
    return -1
