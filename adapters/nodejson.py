"""Node's ``JSON.parse`` as the EML server's body-parser calls it: the same verdicts and error messages.

V8 reads JSON one token at a time and names the first token it cannot take, with a position counted in
UTF-16 code units (``Expected property name or '}' in JSON at position 1``). :func:`parse` does exactly
that, in Python: the reference, iterative so depth costs no stack, but slow on large texts.

:func:`members` gives the same verdict at C speed whatever the body, as refusing one must cost about
what msgspec costs. msgspec judges the body without building it; where it refuses, it judges a copy of
the same length in which lone surrogate escapes (V8 takes them, msgspec does not) are made harmless, so
the byte where it stops is V8's first bad token, give or take a byte. Nested deeper than msgspec can
recurse, the copy is judged in windows, each opened by a synthetic prefix standing for the containers
open there and closed by the closers of those left open. Then the reference parser, resumed at the last
structural byte before that point, reads the few tokens to V8's error and words the message; the
containers it closes there are named by a short scan back, or by asking msgspec which closer it takes.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from json import JSONDecodeError
from json.decoder import scanstring
from typing import Any

import msgspec

_WS = re.compile(r"[ \t\n\r]*")
_RUN = re.compile(r'[^"\\\x00-\x1f]*')
_DIGITS = re.compile(r"[0-9]*")
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_HEX = "0123456789abcdefABCDEF"
_CONTEXT = 10  # V8's kMaxContextCharacters
_SPECIAL = ("[object Object]", "undefined", "Infinity", "NaN")
_INT_DIGITS = 4300  # Python's int() refuses longer numerals; V8 makes them Infinity

EOS = "Unexpected end of JSON input"
PROP_OR_RBRACE = "Expected property name or '}'"
DOUBLE_QUOTED_PROP = "Expected double-quoted property name"
COMMA_OR_RBRACE = "Expected ',' or '}' after property value"
COMMA_OR_RBRACK = "Expected ',' or ']' after array element"
AFTER_JSON = "Unexpected non-whitespace character after JSON"
COLON = "Expected ':' after property name"

# What the parser expects next.
_VALUE, _ARRAY, _OBJECT, _KEY, _AFTER = range(5)

# The kind of the k-th innermost open container (0: the innermost), or None past the top level.
Kinds = Callable[[int], "str | None"]


class NodeJSONError(ValueError):
    """The text is not JSON to Node; the message is Node's."""


class _Parser:
    def __init__(self, text: str, outer: Kinds | None = None) -> None:
        self.s = text
        self.n = len(text)
        self.i = 0
        # Resumed in the middle of a text: the containers open there, named on demand.
        self.outer = outer
        self.pulled = 0

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
        # json's C scanner accepts exactly the strings V8 accepts; V8's words for a bad one come from
        # scanning again, one escape at a time, from where json stopped.
        start = self.i
        try:
            value, self.i = scanstring(self.s, start + 1, True)
        except JSONDecodeError as exc:
            raise self._string_error(start, exc) from None
        if _SURROGATE.search(value):
            value = value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
        return value

    def _string_error(self, start: int, exc: JSONDecodeError) -> NodeJSONError:
        s, at = self.s, exc.pos
        # json reports the backslash of a bad escape, the 'u' of a bad \u escape, the control
        # character, or only the opening quote of a string that runs to the end; each but the last is
        # where an escape or a plain character begins, and at the end the parity of the trailing
        # backslashes says whether the last one begins an escape.
        if exc.msg.startswith("Invalid \\uXXXX") and s.startswith("\\u", at - 1):
            resume = at - 1
        elif (exc.msg.startswith("Invalid \\escape") and s.startswith("\\", at)) or (
            exc.msg.startswith("Invalid control") and at < self.n and s[at] < " "
        ):
            resume = at
        elif exc.msg.startswith("Unterminated"):
            tail = min(self.n - len(s.rstrip("\\")), self.n - start - 1)
            resume = self.n - tail % 2
        else:
            resume = start + 1
        for i in (resume, start + 1):
            try:
                self._scan(i, [])
            except NodeJSONError as err:
                return err
        raise AssertionError("unreachable: json found the string bad")

    def _scan(self, i: int, parts: list[str]) -> str:
        """The string's content from ``i`` (where a character or an escape begins) to its quote."""
        s, n = self.s, self.n
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
        return float(text) if is_float or len(text) > _INT_DIGITS else int(text)

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

    def _enclosing(self) -> list | None:
        """The container around the outermost one this parser opened, when resumed inside a text."""
        if self.outer is None:
            return None
        kind = self.outer(self.pulled)
        self.pulled += 1
        return None if kind is None else [kind, None, None]

    def run(self, state: int, frames: list[list]) -> Any:
        """Read from the cursor in ``state``; frames are ``[kind, container, key]``, innermost last (a
        container of None is one whose value nobody keeps). Returns the top-level value."""
        v: Any = None
        while True:
            if state == _AFTER:
                if not frames:
                    frame = self._enclosing()
                    if frame is None:
                        return v
                    frames.append(frame)
                frame = frames[-1]
                kind, container = frame[0], frame[1]
                c = self.ws()
                if kind == "{":
                    if container is not None:
                        container[frame[2]] = v
                    if c == ",":
                        self.i += 1
                        state = _KEY
                        continue
                    if c != "}":
                        raise self.fail(COMMA_OR_RBRACE)
                else:
                    if container is not None:
                        container.append(v)
                    if c == ",":
                        self.i += 1
                        state = _VALUE
                        continue
                    if c != "]":
                        raise self.fail(COMMA_OR_RBRACK)
                self.i += 1
                frames.pop()
                v = container
                continue
            if state == _KEY:
                frames[-1][2] = self.key(DOUBLE_QUOTED_PROP, first=False)
                state = _VALUE
                continue
            if state == _OBJECT:
                if self.ws() == "}":
                    self.i += 1
                    v = frames.pop()[1]
                    state = _AFTER
                    continue
                frames[-1][2] = self.key(PROP_OR_RBRACE, first=True)
                state = _VALUE
                continue
            if state == _ARRAY:
                if self.ws() == "]":
                    self.i += 1
                    v = frames.pop()[1]
                    state = _AFTER
                    continue
                state = _VALUE
                continue
            c = self.ws()
            if c == "{":
                self.i += 1
                frames.append(["{", {}, None])
                state = _OBJECT
                continue
            if c == "[":
                self.i += 1
                frames.append(["[", [], None])
                state = _ARRAY
                continue
            if c == '"':
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
            state = _AFTER


def parse(text: str) -> Any:
    """``JSON.parse(text)``: the value, or :class:`NodeJSONError` with Node's message. The reference:
    one token at a time, so slow on large texts; :func:`members` answers alike at C speed."""
    p = _Parser(text)
    value = p.run(_VALUE, [])
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


# -- at C speed -----------------------------------------------------------------------------------

_DECODER = msgspec.json.Decoder(float_hook=float)  # any float, 1e400 included, as V8 reads it: a number
_VALIDATOR = msgspec.json.Decoder(msgspec.Raw)  # judges without building values: no number is converted
_SLACK = 6  # msgspec reports an error at most a byte past V8's, or "truncated" within 3 of the end
_SCAN = 256  # characters a backward scan reads before asking msgspec instead

_BYTE = re.compile(r"\(byte (\d+)\)")
_WS_BYTES = re.compile(rb"[ \t\n\r]*")
_STRUCTURAL = re.compile(rb"[\[\]{},:]")
_RUNS = re.compile(rb"[\[{]+|[\]}]+")
_ANY_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")
# In a text whose escaped backslashes are made plain, every backslash left begins an escape.
_LONE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|\\u(?<!\\u[dD][89abAB][0-9a-fA-F]{2}\\u)[dD][c-fC-F][0-9a-fA-F]{2}"
)

_QUOTE_BITS = bytes(ord("1") if c == ord('"') else ord("0") for c in range(256))
_BITS_TO_MASK = bytes(0xFF if c == ord("1") else 0 for c in range(256))
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")

_MIRROR = bytes.maketrans(b"[]{}", b"][}{")
_OPENERS = frozenset(b"[{")
_CLOSERS = frozenset(b"]}")


def _plain_escapes(b: bytes) -> bytes:
    """The body with every escaped backslash and quote made ``__``: each quote left delimits a string,
    each backslash left begins an escape (or is a stray outside strings). The same length."""
    return b.replace(b"\\\\", b"__").replace(b'\\"', b"__")


def _validation_text(plain: bytes) -> bytes:
    """The body as msgspec can judge it for V8, byte for byte the same length: every ``\\uD...`` escape
    made ``\\u0...``, so no surrogate escape is left (V8 takes lone ones, msgspec does not). Both are hex
    digits, so a valid escape stays valid and an invalid one invalid at the same byte."""
    return plain.replace(b"\\ud", b"\\u0").replace(b"\\uD", b"\\u0")


def _values_text(b: bytes, plain: bytes) -> bytes:
    """A valid body as msgspec can decode its strings for V8, the same length: each lone surrogate
    escape made ``\\uFFFD``, what V8's string gives back here. Found in ``plain``, where every escape
    is plain to see; changed in ``b`` bytewise, as an XOR of the two texts."""
    if not _ANY_SURROGATE.search(plain):
        return b
    fixed = _LONE.sub(rb"\\uFFFD", plain)
    n = len(b)
    delta = int.from_bytes(plain, "big") ^ int.from_bytes(fixed, "big")
    return (int.from_bytes(b, "big") ^ delta).to_bytes(n, "big")


def _error_at(exc: Exception, size: int) -> int | None:
    """Where msgspec stopped: its byte, the end when the input ran out, None for anything else."""
    message = str(exc)
    m = _BYTE.search(message)
    if m:
        return int(m[1])
    return size if message == "Input data was truncated" else None


def _valleys(skeleton: bytes) -> int:
    """How many times a run of brackets turns from closing to opening: about how many whole values
    stand in it."""
    if b"{" not in skeleton:
        return skeleton.count(b"][")
    return sum(skeleton.count(valley) for valley in (b"][", b"]{", b"}[", b"}{"))


def _reduce(skeleton: bytes) -> tuple[bytes, bytes] | None:
    """A valid run of brackets as (the closers that close containers opened before it, the openers
    left open), or None if it closes a bracket with the other kind."""
    if b"]" not in skeleton and b"}" not in skeleton:
        return b"", skeleton
    # Peel matched pairs, one level of every peak per pass in C, while many peaks remain; then walk
    # the runs left (a few tall peaks cost a pass per level, but only two runs each).
    pairs = [pair for pair in (b"[]", b"{}") if pair[:1] in skeleton]
    while _valleys(skeleton) > 32:
        for _ in range(2):
            shorter = skeleton
            for pair in pairs:
                shorter = shorter.replace(pair, b"")
            if len(shorter) == len(skeleton):
                break
            skeleton = shorter
        else:
            continue
        break
    closed = bytearray()
    open_ = bytearray()
    for run in _RUNS.findall(skeleton):
        if run[0] in _OPENERS:
            open_ += run
            continue
        take = min(len(run), len(open_))
        if bytes(open_[len(open_) - take :][::-1]).translate(_MIRROR) != run[:take]:
            return None
        del open_[len(open_) - take :]
        closed += run[take:]
    return bytes(closed), bytes(open_)


def _descent(skeleton: bytes) -> tuple[bytes, bytes] | None:
    """A guess at what a run of brackets leaves open, right when each run of closers only closes
    some of the openers just before it (a descent with whole values beside it); None otherwise."""
    runs = _RUNS.findall(skeleton)
    skip = 1 if runs and runs[0][0] in _CLOSERS else 0
    first = runs[0] if skip else b""  # closes what was open before it
    left: list[bytes] = []
    for opened, closed in zip(runs[skip::2], runs[skip + 1 :: 2]):
        if len(closed) > len(opened):
            if left:
                return None
            first += closed[len(opened) :]  # still closing what was open before it
            continue
        left.append(opened[: len(opened) - len(closed)])
    if (len(runs) - skip) % 2:
        left.append(runs[-1])
    return first, b"".join(left)


def _synthetic(stack: bytearray, below: int, prev: int | None) -> bytes:
    """A prefix that leaves msgspec where V8 is after ``prev`` with ``stack`` open: the innermost
    container in that state, the ``below`` ones under it each inside its first value."""
    if not stack:
        return b""
    lower = bytes(stack[len(stack) - 1 - below : len(stack) - 1]).replace(b"{", b'{"":')
    array = stack[-1] == ord("[")
    if prev in _OPENERS:
        head = b"[" if array else b"{"
    elif prev == ord(","):
        head = b"[0," if array else b'{"":0,'
    elif prev == ord(":"):
        head = b'{"":'
    else:
        head = b"[0" if array else b'{"":0'
    return lower + head


def _fits(stack: bytearray, closers: bytes) -> bool:
    """Whether ``closers`` (innermost first) close the innermost containers of ``stack``."""
    return len(closers) <= len(stack) and _closers(stack, len(closers)) == closers


def _closers(stack: bytearray, k: int) -> bytes:
    """The closers of the ``k`` innermost containers of ``stack``, innermost first."""
    return bytes(stack[len(stack) - k :][::-1]).translate(_MIRROR)


def _window_end(bl: bytes, pos: int, cut: int, opens: int, closes: int, most: int) -> int:
    """Where a window from ``pos`` ends: after the first structural byte from ``cut``, or, better,
    after one of the next commas if the window then closes at least what it opens (a list of
    complete values read at one depth), while it holds at most ``most`` openers and as many closers.
    ``opens`` and ``closes`` count the brackets before ``cut``; a short window (being shrunk to fit)
    ends at once."""
    m = _STRUCTURAL.search(bl, cut)
    first = m.end() if m else len(bl)
    comma, near = cut, cut + 4096
    for _ in range(3 if cut - pos >= 64 else 0):
        start, comma = comma, bl.find(b",", comma, near) + 1
        if not comma:
            break
        opens += bl.count(b"[", start, comma) + bl.count(b"{", start, comma)
        closes += bl.count(b"]", start, comma) + bl.count(b"}", start, comma)
        if opens > most or closes > most:
            break
        if closes and opens <= closes:
            return comma
    return first


def _completion(stack: bytearray, below: int, change: tuple[bytes, bytes], last: int) -> bytes:
    """What closes a window's document: a value if ``last`` (its final byte) awaits one, then the
    closers of the containers still open, the synthetic ones included."""
    level = stack[len(stack) - 1 - below :] if stack else b""
    open_ = bytes(level[: len(level) - len(change[0])]) + change[1]
    if not open_:
        return b""  # the top level closed: what follows is for msgspec to refuse
    if last == ord(","):
        fill = b"0" if open_[-1:] == b"[" else b'"":0'
    elif last == ord(":"):
        fill = b"0"
    else:
        fill = b""
    return fill + open_[::-1].translate(_MIRROR)


def _room() -> int:
    """How deep msgspec may nest from here: what is left of the recursion limit, with a margin."""
    depth, frame = 0, sys._getframe()
    while frame is not None:
        depth += 1
        frame = frame.f_back
    return max(16, min(4000, sys.getrecursionlimit() - depth - 64))


def _bridge(a: tuple, b: tuple, low: int) -> bytes:
    """JSON that takes a reader from state ``a`` to state ``b`` (each ``(stack, prev)``) without
    leaving the container ``low`` deep: stands for text nested inside a top-level member."""
    (stack_a, prev_a), (stack_b, prev_b) = a, b
    array = stack_a[-1] == ord("[")
    if prev_a == ord(":"):
        out = [b"0"]
    elif prev_a == ord(",") or (prev_a in _OPENERS and len(stack_a) == low):
        out = [b"0" if array else b'"":0']
    else:
        out = [b""]  # an opener about to be closed closes at once; after a value nothing is missing
    out.append(bytes(stack_a[low:][::-1]).translate(_MIRROR))
    for level in range(low, len(stack_b)):  # after a value at the first, as the first value below
        key = b'"":' if stack_b[level - 1] == ord("{") else b""
        out.append((b"," if level == low else b"") + key + bytes(stack_b[level : level + 1]))
    array = stack_b[-1] == ord("[")
    if len(stack_b) > low:  # just after the innermost opener
        if prev_b == ord(","):
            out.append(b"0," if array else b'"":0,')
        elif prev_b == ord(":"):
            out.append(b'"":')
        elif prev_b not in _OPENERS:
            out.append(b"0" if array else b'"":0')
    elif prev_b == ord(","):
        out.append(b",")
    elif prev_b == ord(":"):
        out.append(b',"":')
    return b"".join(out)


_MEMBERS: dict[tuple[str, ...], msgspec.json.Decoder] = {}


def _members_decoder(names: tuple[str, ...]) -> msgspec.json.Decoder:
    """Reads a top-level object keeping only the named members, raw (the last of each, as V8 keeps);
    every other byte is still judged, but nothing else is built."""
    if names not in _MEMBERS:
        fields = [(name, msgspec.Raw, msgspec.Raw()) for name in names]
        _MEMBERS[names] = msgspec.json.Decoder(msgspec.defstruct("Members", fields))
    return _MEMBERS[names]


def _values(found: Any, names: tuple[str, ...]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in names:
        raw = getattr(found, name)
        if raw:
            try:
                values[name] = _DECODER.decode(raw)
            except (msgspec.DecodeError, RecursionError):
                values[name] = ...  # a number Python will not convert
    return values


class _Refused:
    """A text msgspec refused: Node's verdict on it, at C speed."""

    def __init__(self, text: str, b: bytes) -> None:
        self.text = text
        self.b = b
        self.plain = _plain_escapes(b)
        self.vt = _validation_text(self.plain)
        self._bl: bytes | None = None

    def members(self, names: tuple[str, ...]) -> dict[str, Any]:
        try:
            _VALIDATOR.decode(self.vt)
        except RecursionError:
            return self._windows(names)
        except msgspec.DecodeError as exc:
            at = _error_at(exc, len(self.vt))
            if at is None:
                return self._reference(names)
            z = self._sync(at - _SLACK, -1)
            return self._explain(z, self._kinds_before(z), names)
        # Valid: msgspec refused only what V8 takes (a lone surrogate escape, a huge integer).
        return self._named(_values_text(self.b, self.plain), names)

    # -- the message --------------------------------------------------------------------------

    def _sync(self, limit: int, floor: int) -> int:
        """The last structural character outside strings before ``limit``, not before ``floor``."""
        vt = self.vt
        end = max(limit, floor + 1)
        while end > floor + 1:
            z = max(vt.rfind(c, floor + 1, end) for c in (b"[", b"]", b"{", b"}", b",", b":"))
            if z < 0:
                break
            if vt.count(b'"', 0, z) % 2 == 0:
                return z
            end = vt.rfind(b'"', 0, z)  # the quote opening the string that holds it
        return floor

    def _message(self, z: int, kinds: Kinds) -> NodeJSONError | None:
        """Node's error, read by the reference parser resumed after the structural byte ``z`` (-1: the
        start) with the containers open there named by ``kinds``; None if it finds none."""
        c = self.vt[z] if z >= 0 else None
        if c is None:
            state, frames = _VALUE, []
        elif c in _OPENERS:
            state, frames = (_ARRAY if c == ord("[") else _OBJECT), [[chr(c), None, None]]
        elif c == ord(":"):
            state, frames = _VALUE, [["{", None, None]]
        elif c == ord(","):
            kind = kinds(0)
            state, frames = (_VALUE if kind == "[" else _KEY), [[kind, None, None]]
        else:
            state, frames = _AFTER, []
        p = _Parser(self.text, kinds)
        p.i = z + 1 if len(self.b) == len(self.text) else len(self.b[: z + 1].decode())
        p.pulled = len(frames)
        try:
            p.run(state, frames)
            if p.ws():
                return NodeJSONError(f"{AFTER_JSON} at position {p._pos(p.i)}")
        except NodeJSONError as exc:
            return exc
        return None

    def _kinds_before(self, z: int) -> Kinds:
        """The containers open after byte ``z`` of a prefix msgspec took: found scanning back, or, far
        back, by asking msgspec which closer it takes there."""
        found: list[str] = []
        more = self._scan_back(z, found)

        def kinds(k: int) -> str | None:
            while len(found) <= k:
                kind = next(more, None)
                if kind is None:
                    return None
                found.append(kind)
            return found[k]

        return kinds

    def _scan_back(self, z: int, found: list[str]):
        vt = self.vt
        last = {c: vt.rfind(bytes([c]), 0, z + 1) for c in b'[]{}"'}
        inside = False
        unmatched = 0
        for _ in range(_SCAN):
            p = max(last.values())
            if p < 0:
                return
            c = vt[p]
            last[c] = vt.rfind(bytes([c]), 0, p)
            if c == ord('"'):
                inside = not inside
            elif inside:
                continue
            elif c in _CLOSERS:
                unmatched += 1
            elif unmatched:
                unmatched -= 1
            else:
                yield chr(c)
        while True:
            kind = self._probe(z, found)
            if kind is None:
                return
            yield kind

    def _probe(self, z: int, found: list[str]) -> str | None:
        """The kind of the container around those in ``found``: whether msgspec takes a ``]`` after
        their closers (an array), takes nothing more (the top level closed), or refuses it (an object)."""
        c = self.vt[z]
        if c == ord(","):  # the innermost awaits a value: an element, unless it is an object
            fill = b"0" if not found or found[0] == "[" else b'"":0'
        else:
            fill = b"0" if c == ord(":") else b""
        closers = "".join(found).encode().translate(_MIRROR)  # innermost first
        try:
            _VALIDATOR.decode(self.vt[: z + 1] + fill + closers + b"]")
        except RecursionError:
            return None
        except msgspec.DecodeError as exc:
            message = str(exc)
            if message.startswith("JSON is malformed: trailing characters"):
                return None
            if message != "Input data was truncated":
                return "{"
        return "["

    # -- deep nesting ---------------------------------------------------------------------------

    def _structure(self) -> bytes:
        """The validation text with every byte inside a string zeroed: brackets, commas and colons
        left are structure. Quote parity is a prefix XOR, done on one integer."""
        if self._bl is None:
            self._bl = self._zero_strings()
        return self._bl

    def _zero_strings(self) -> bytes:
        vt = self.vt
        n = len(vt)
        if b'"' not in vt:
            return vt
        bits = int(vt.translate(_QUOTE_BITS), 2)
        shift = 1
        while shift < n:
            bits ^= bits >> shift
            shift <<= 1
        mask = int.from_bytes(format(bits, f"0{n}b").encode().translate(_BITS_TO_MASK), "big")
        whole = int.from_bytes(vt, "big")
        return (whole ^ (whole & mask)).to_bytes(n, "big")

    def _windows(self, names: tuple[str, ...]) -> dict[str, Any]:
        """Nested deeper than msgspec recurses: read in windows that nest no deeper than it can, each
        after a structural byte, opened by a synthetic prefix standing for the containers open there
        that the window closes, and closed by the closers of those still open at its end."""
        vt, n = self.vt, len(self.vt)
        room = _room()
        stack = bytearray()
        pos, prev, size = 0, None, room
        kept: list[Any] = []  # for the values: (start, end) kept, or a bridge over deep windows
        deep: tuple | None = None  # where windows inside one top-level member began, and how low
        while pos < n:
            if prev is not None and not stack:
                if _WS_BYTES.match(vt, pos).end() < n:
                    return self._explain(pos - 1, lambda k: None, names)
                break
            step = self._window(stack, pos, prev, size, room)
            if step is None:
                return self._reference(names)
            if isinstance(step, int):  # too deep for one reading: a smaller window
                if size == 1:
                    return self._reference(names)  # unreachable: one byte and a token nest no deeper
                size = min(step, size // 2)
                continue
            end, change, low, error, used = step
            if error is not None:
                z = self._sync(error - _SLACK, pos - 1)
                return self._explain(z, self._kinds_in(stack, pos, z), names)
            if low >= 2:
                deep = ((bytes(stack), prev), low) if deep is None else (deep[0], min(deep[1], low))
            else:
                if deep is not None:
                    kept.append((deep[0], (bytes(stack), prev), deep[1]))
                    deep = None
                kept.append((pos, end))
            del stack[len(stack) - len(change[0]) :]
            stack += change[1]
            pos, prev, size = end, vt[end - 1], max(64, min(2 * (end - pos), (end - pos) * room // used))
        first = _WS_BYTES.match(vt).end()
        if stack or first == n:  # unreachable: msgspec's verdict on the last window names the error
            return self._reference(names)
        if vt[first] != ord("{"):
            return {}
        xt = _values_text(self.b, self.plain)
        doc = b"".join(xt[part[0] : part[1]] if len(part) == 2 else _bridge(*part) for part in kept)
        return self._named(doc, names)

    def _window(self, stack: bytearray, pos: int, prev: int | None, size: int, room: int) -> Any:
        """Reads one window from ``pos`` of about ``size`` bytes: its end, the change it makes to the
        open containers, how low it goes (or a bound below that), the byte of its first error (or
        None) and how much of the room it used; a smaller size if it would nest too deep; None if the
        fast reading meets what it does not expect."""
        vt, bl, n = self.vt, self._structure(), len(self.vt)
        while True:  # fewer openers than the room, and fewer closers
            cut = min(n, pos + size)
            opens = bl.count(b"[", pos, cut) + bl.count(b"{", pos, cut)
            closes = bl.count(b"]", pos, cut) + bl.count(b"}", pos, cut)
            if (opens < room - 1 and closes < room - 1) or size == 1:
                break
            size = max(1, min(size - 1, size * (room - 2) // max(opens, closes)))
        if closes and cut < n:  # values closed within it: leave room to end after a whole one
            cut = pos + (cut - pos) * 3 // 4
            opens = bl.count(b"[", pos, cut) + bl.count(b"{", pos, cut)
            closes = bl.count(b"]", pos, cut) + bl.count(b"}", pos, cut)
        end = _window_end(bl, pos, cut, opens, closes, room - 1)
        skeleton = bl[pos:end].translate(None, _NOT_BRACKETS)
        opens = skeleton.count(b"[") + skeleton.count(b"{")
        closes = len(skeleton) - opens
        change: tuple[bytes, bytes] | None
        if not closes:
            change, exact = (b"", skeleton), True
        elif opens <= closes <= len(stack) - 2:
            # Closes what it opens, and more: if the closers of the containers left fit, the kinds
            # left are those (a window that opened others of other kinds would not fit).
            change, exact = (_closers(stack, closes - opens), b""), False
        else:
            change, exact = (_descent(skeleton) if _valleys(skeleton) <= 128 else None), False
            if change is None:
                change, exact = _reduce(skeleton), True
        while True:
            fits = change is not None and _fits(stack, change[0])
            if not fits and not exact:  # a wrong guess: work the change out
                change, exact = _reduce(skeleton), True
                continue
            # msgspec nests through the containers the window closes, then at most its openers.
            pops = len(change[0]) if fits else closes
            used = pops + opens + 1
            if used > room and end - pos > 1 and end < n:
                return max(1, (end - pos) * room // (2 * used))
            below = min(len(stack) - 1, pops) if stack else 0
            synth = _synthetic(stack, below, prev)
            # A window whose closers do not fit errs within it; the last one has nothing after it.
            tail = _completion(stack, below, change, vt[end - 1]) if fits and end < n else b""
            doc = synth + vt[pos:end] + tail
            try:
                _VALIDATOR.decode(doc)
            except RecursionError:
                return max(1, (end - pos) // 2) if end - pos > 1 else None
            except msgspec.DecodeError as exc:
                if not exact:  # the guess at the kinds left was wrong: work them out
                    change, exact = _reduce(skeleton), True
                    continue
                at = _error_at(exc, len(doc))
                if at is None:
                    return None
                if str(exc).startswith("JSON is malformed: trailing characters") and below < len(stack) - 1:
                    return None  # unreachable: the prefix holds every container it closes
                # An error in the window, or at its end: a token there cut short (msgspec reads five
                # bytes to refuse "f}"), or the closers refused after it. The reference words it.
                return end, None, 0, pos + min(at, len(doc) - len(tail)) - len(synth), used
            if not fits:
                return None
            # How low it goes: exactly, or no lower than its closers could take it.
            low = len(stack) - (len(change[0]) if exact else closes)
            return end, change, low, None, max(used, len(skeleton) // 2)

    def _kinds_in(self, stack: bytearray, pos: int, z: int) -> Kinds:
        """The containers open after byte ``z`` of a window that starts at ``pos`` with ``stack``."""
        open_ = bytearray(stack)
        if z >= pos:
            change = _reduce(self._structure_of(pos, z + 1))
            if change is not None:
                del open_[len(open_) - len(change[0]) :]
                open_ += change[1]
        kinds = open_.decode()
        return lambda k: kinds[-1 - k] if k < len(kinds) else None

    def _structure_of(self, start: int, end: int) -> bytes:
        return self._structure()[start:end].translate(None, _NOT_BRACKETS)

    # -- values ---------------------------------------------------------------------------------

    def _named(self, doc: bytes, names: tuple[str, ...]) -> dict[str, Any]:
        """The named members of a valid body's top-level object, from ``doc`` that msgspec reads."""
        try:
            return _values(_members_decoder(names).decode(doc), names)
        except msgspec.ValidationError:
            return {}  # the top level is an array
        except (msgspec.DecodeError, RecursionError):
            return self._reference(names)

    def _reference(self, names: tuple[str, ...]) -> dict[str, Any]:
        """The reference parser's answer: only where the fast reading meets what it does not expect."""
        value = parse(self.text)
        return value if isinstance(value, dict) else {}

    def _explain(self, z: int, kinds: Kinds, names: tuple[str, ...]) -> dict[str, Any]:
        error = self._message(z, kinds)
        if error is None:  # the fast reading and the resumed one disagree: the reference decides
            return self._reference(names)
        raise error


def members(text: str, names: tuple[str, ...]) -> dict[str, Any]:
    """``JSON.parse(text)`` as a reader of a top-level object needs it: the named members of the object
    (``{}`` for any other value), or :class:`NodeJSONError` with Node's message. Strings and null are
    exactly V8's (a lone surrogate as U+FFFD), other values msgspec's, or ``...`` for a number Python
    will not convert. Costs about what msgspec costs, whatever the text."""
    try:
        return _values(_members_decoder(names).decode(text), names)
    except msgspec.ValidationError:  # not an object: judged whole all the same
        try:
            _VALIDATOR.decode(text)
            return {}
        except (msgspec.DecodeError, RecursionError, UnicodeEncodeError):
            pass
    except (msgspec.DecodeError, RecursionError, UnicodeEncodeError):
        pass
    try:
        b = text.encode()
    except UnicodeEncodeError:  # a lone surrogate in the text itself: only the reference reads it
        value = parse(text)
        return {name: value[name] for name in names if name in value} if isinstance(value, dict) else {}
    return _Refused(text, b).members(names)
