"""Node's ``JSON.parse`` as the EML server's body-parser calls it: the same verdicts and error messages.

Only the slow path: a body that msgspec rejects (or cannot nest deep enough for) comes here, to get
Node's message (``Expected property name or '}' in JSON at position 1``) or, where Node accepts
what msgspec does not (lone surrogate escapes, 1e400, deep nesting), its value. Iterative, so depth
costs no stack. Positions and context are counted in UTF-16 code units, as V8 counts them.
"""

from __future__ import annotations

import re
from typing import Any

_WS = re.compile(r"[ \t\n\r]*")
_RUN = re.compile(r'[^"\\\x00-\x1f]*')
_DIGITS = re.compile(r"[0-9]*")
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_HEX = "0123456789abcdefABCDEF"
_CONTEXT = 10  # V8's kMaxContextCharacters
_SPECIAL = ("[object Object]", "undefined", "Infinity", "NaN")

EOS = "Unexpected end of JSON input"
PROP_OR_RBRACE = "Expected property name or '}'"
DOUBLE_QUOTED_PROP = "Expected double-quoted property name"
COMMA_OR_RBRACE = "Expected ',' or '}' after property value"
COMMA_OR_RBRACK = "Expected ',' or ']' after array element"
AFTER_JSON = "Unexpected non-whitespace character after JSON"
COLON = "Expected ':' after property name"


class NodeJSONError(ValueError):
    """The text is not JSON to Node; the message is Node's."""


class _Parser:
    def __init__(self, text: str) -> None:
        self.s = text
        self.n = len(text)
        self.i = 0

    # -- errors -------------------------------------------------------------------------------

    def _u16(self) -> bytes:
        return self.s.encode("utf-16-le", "surrogatepass")

    def _pos(self, i: int) -> int:
        return len(self.s[:i].encode("utf-16-le", "surrogatepass")) // 2

    def fail(self, message: str) -> NodeJSONError:
        return NodeJSONError(f"{message} in JSON at position {self._pos(self.i)}")

    def unexpected(self) -> NodeJSONError:
        """V8's message for the token at the cursor, which it names by the class of its first character."""
        if self.i >= self.n:
            return NodeJSONError(EOS)
        c = self.s[self.i]
        if c == "-" or "0" <= c <= "9":
            return self.fail("Unexpected number")
        if c == '"':
            return self.fail("Unexpected string")
        if self.s in _SPECIAL:
            return NodeJSONError(f'"{self.s}" is not valid JSON')
        units = self._u16()
        length = len(units) // 2
        pos = self._pos(self.i)

        def sub(a: int, b: int) -> str:
            return units[2 * a : 2 * b].decode("utf-16-le", "replace")

        char = sub(pos, pos + 1)
        if length < 2 * _CONTEXT + 1:
            return NodeJSONError(f"Unexpected token '{char}', \"{self.s}\" is not valid JSON")
        if pos < _CONTEXT:
            context = f'"{sub(0, pos + _CONTEXT)}"...'
        elif pos < length - _CONTEXT:
            context = f'..."{sub(pos - _CONTEXT, pos + _CONTEXT)}"...'
        else:
            context = f'..."{sub(pos - _CONTEXT, length)}"'
        return NodeJSONError(f"Unexpected token '{char}', {context} is not valid JSON")

    # -- scanning -----------------------------------------------------------------------------

    def ws(self) -> str:
        self.i = _WS.match(self.s, self.i).end()
        return self.s[self.i] if self.i < self.n else ""

    def key(self, missing: str, first: bool) -> str:
        if self.ws() != '"':
            raise self.fail(missing)
        key = self.string()
        if self.ws() != ":":
            # V8 names the missing colon only after an object's first key; after a comma it names
            # whatever token it found instead.
            raise self.fail(COLON) if first else self.unexpected()
        self.i += 1
        return key

    def string(self) -> str:
        s, n = self.s, self.n
        i = self.i + 1
        parts = []
        surrogates = False
        while True:
            m = _RUN.match(s, i)
            parts.append(m.group())
            i = m.end()
            if i >= n:
                self.i = n
                raise self.fail("Unterminated string")
            c = s[i]
            if c == '"':
                self.i = i + 1
                text = "".join(parts)
                if surrogates:
                    text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
                return text
            if c != "\\":
                self.i = i
                raise self.fail("Bad control character in string literal")
            i += 1
            if i >= n:
                self.i = n
                raise NodeJSONError(EOS)
            e = s[i]
            if e in _ESCAPES:
                parts.append(_ESCAPES[e])
                i += 1
            elif e == "u":
                for _ in range(4):
                    i += 1
                    if i >= n or s[i] not in _HEX:
                        self.i = i
                        raise self.fail("Bad Unicode escape")
                code = int(s[i - 3 : i + 1], 16)
                surrogates = surrogates or 0xD800 <= code <= 0xDFFF
                parts.append(chr(code))
                i += 1
            else:
                self.i = i
                if ord(e) > 0xFF:
                    raise self.unexpected()
                raise self.fail("Bad escaped character")

    def number(self) -> int | float:
        s, n = self.s, self.n
        start = i = self.i
        if s[i] == "-":
            i += 1
        if i < n and s[i] == "0":
            i += 1
            if i < n and s[i].isascii() and s[i].isdigit():
                self.i = i
                raise self.unexpected()
        else:
            end = _DIGITS.match(s, i).end()
            if end == i:
                self.i = i
                raise self.fail("No number after minus sign")
            i = end
        is_float = False
        if i < n and s[i] == ".":
            is_float = True
            end = _DIGITS.match(s, i + 1).end()
            if end == i + 1:
                self.i = i + 1
                raise self.fail("Unterminated fractional number")
            i = end
        if i < n and s[i] in "eE":
            is_float = True
            i += 1
            if i < n and s[i] in "+-":
                i += 1
            end = _DIGITS.match(s, i).end()
            if end == i:
                self.i = i
                raise self.fail("Exponent part is missing a number")
            i = end
        self.i = i
        text = s[start:i]
        return float(text) if is_float else int(text)

    def literal(self, word: str, value: Any) -> Any:
        s, i = self.s, self.i
        if s.startswith(word, i):
            self.i = i + len(word)
            return value
        for k in range(1, len(word)):
            self.i = i + k
            if self.i >= self.n:
                raise NodeJSONError(EOS)
            if s[self.i] != word[k]:
                raise self.unexpected()
        raise AssertionError("unreachable")

    def value(self) -> Any:
        # Containers under construction: (dict, key) or (list, None).
        stack: list[tuple[Any, str | None]] = []
        while True:
            c = self.ws()
            if c == "{":
                self.i += 1
                if self.ws() == "}":
                    self.i += 1
                    v: Any = {}
                else:
                    stack.append(({}, self.key(PROP_OR_RBRACE, first=True)))
                    continue
            elif c == "[":
                self.i += 1
                if self.ws() == "]":
                    self.i += 1
                    v = []
                else:
                    stack.append(([], None))
                    continue
            elif c == '"':
                v = self.string()
            elif c == "-" or ("0" <= c <= "9"):
                v = self.number()
            elif c == "t":
                v = self.literal("true", True)
            elif c == "f":
                v = self.literal("false", False)
            elif c == "n":
                v = self.literal("null", None)
            else:
                raise self.unexpected()
            while True:
                if not stack:
                    return v
                container, key = stack[-1]
                c = self.ws()
                if key is not None:
                    container[key] = v
                    if c == ",":
                        self.i += 1
                        stack[-1] = (container, self.key(DOUBLE_QUOTED_PROP, first=False))
                        break
                    if c != "}":
                        raise self.fail(COMMA_OR_RBRACE)
                else:
                    container.append(v)
                    if c == ",":
                        self.i += 1
                        break
                    if c != "]":
                        raise self.fail(COMMA_OR_RBRACK)
                self.i += 1
                stack.pop()
                v = container


def parse(text: str) -> Any:
    """``JSON.parse(text)``: the value, or :class:`NodeJSONError` with Node's message."""
    p = _Parser(text)
    value = p.value()
    if p.ws():
        raise NodeJSONError(f"{AFTER_JSON} at position {p._pos(p.i)}")
    return value


def strict_error(text: str) -> str | None:
    """body-parser's strict mode: a top level other than an object or array fails with the message
    Node gives for that first character (body-parser masks the text with ``#`` and parses that).
    None when the text starts as an object or array."""
    first = _WS.match(text).end()  # leading blanks are ASCII: the same index in UTF-16 units
    if first < len(text) and text[first] in "{[":
        return None
    # JavaScript counts (and cuts) strings in UTF-16 code units.
    units = text.encode("utf-16-le", "surrogatepass")
    partial = text[:first] + "#" * (len(units) // 2 - first) if first < len(text) else ""

    def original(m: re.Match) -> str:
        return units[2 * first : 2 * (first + len(m.group()))].decode("utf-16-le", "replace")

    try:
        parse(partial)
    except NodeJSONError as exc:
        return re.sub(r"#+", original, str(exc))
    raise AssertionError("unreachable: # is never JSON")
