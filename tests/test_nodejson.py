"""Node's JSON.parse verdicts and messages, as the EML server's clients saw them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters import Rejected, eml
from adapters.nodejson import NodeJSONError, parse, strict_error


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "Expected property name or '}' in JSON at position 1"),
        ('{"a":1', "Expected ',' or '}' after property value in JSON at position 6"),
        ('{"a" 1}', "Expected ':' after property name in JSON at position 5"),
        ('{"a":1,}', "Expected double-quoted property name in JSON at position 7"),
        ("[1", "Expected ',' or ']' after array element in JSON at position 2"),
        ("[1,]", "Unexpected token ']', \"[1,]\" is not valid JSON"),
        ("[", "Unexpected end of JSON input"),
        ("[01]", "Unexpected number in JSON at position 2"),
        ("[-]", "No number after minus sign in JSON at position 2"),
        ("[1.]", "Unterminated fractional number in JSON at position 3"),
        ("[1e+]", "Exponent part is missing a number in JSON at position 4"),
        ('["abc', "Unterminated string in JSON at position 5"),
        ('["\\x"]', "Bad escaped character in JSON at position 3"),
        ('["\\u12G4"]', "Bad Unicode escape in JSON at position 6"),
        ('["\t"]', "Bad control character in string literal in JSON at position 2"),
        ("[tru", "Unexpected end of JSON input"),
        ("[trUe]", "Unexpected token 'U', \"[trUe]\" is not valid JSON"),
        ("[1] 2", "Unexpected non-whitespace character after JSON at position 4"),
        ("[object Object]", '"[object Object]" is not valid JSON'),
        ('{"callID":"abcdefghij", x}', "Expected double-quoted property name in JSON at position 24"),
        ('[1, 2, 3, 4, 5, 6, 7, 8, x, 10, 11, 12]',
         "Unexpected token 'x', ...\" 6, 7, 8, x, 10, 11,\"... is not valid JSON"),
        ("[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, x]", "Unexpected token 'x', ...\"8, 9, 10, x]\" is not valid JSON"),
        ('["😀", x, 1, 2, 3, 4, 5, 6, 7]', "Unexpected token 'x', \"[\"😀\", x, 1, 2, 3\"... is not valid JSON"),
    ],
)
def test_messages(text, message):
    with pytest.raises(NodeJSONError) as info:
        parse(text)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("null", "Unexpected token 'n', \"null\" is not valid JSON"),
        (" 12", "Unexpected token '1', \" 12\" is not valid JSON"),
        ('"a string long enough for context"', "Unexpected token '\"', \"\"a string \"... is not valid JSON"),
        ("\n", "Unexpected end of JSON input"),
        ("{}", None),
        (" [", None),
    ],
)
def test_strict_mode(text, message):
    assert strict_error(text) == message


def test_what_node_accepts():
    assert parse('["\\ud83d\\ude00", "\\ud800", 1e400, -0.5e-3, "\\u00e9\\n"]') == ["😀", "\ufffd", float("inf"),
                                                                                    -0.0005, "é\n"]
    deep = parse("[" * 50_000 + "]" * 50_000)
    assert isinstance(deep, list)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=20)


@given(json_values)
def test_agrees_with_the_standard_library_on_valid_json(value):
    text = json.dumps(value)
    assert parse(text) == json.loads(text)
    assert parse(json.dumps(value, ensure_ascii=False, indent=1)) == value


@given(st.text(max_size=40))
def test_never_crashes_on_any_text(text):
    try:
        parse(text)
    except NodeJSONError:
        pass


ORACLE = json.loads((Path(__file__).parent / "data" / "node_oracle" / "node20.json").read_text())


def _cuts_a_surrogate_pair(message):
    # V8's 10-unit context can split an emoji; Node then sends half of it, which JSON encoders here
    # cannot carry: such messages show U+FFFD in its place instead.
    return message is not None and any(0xD800 <= ord(c) <= 0xDFFF for c in message)


@pytest.mark.parametrize(("body", "message", "stage"), ORACLE, ids=range(len(ORACLE)))
def test_matches_node20_as_the_original_server_ran_it(body, message, stage):
    if stage == "empty":
        return
    raw = body.encode("utf-8", "surrogatepass")
    try:
        eml.parse(raw, "application/json")
        got = None
    except Rejected as exc:
        reply = json.loads(exc.reply.body)
        got = reply["message"] if isinstance(reply["message"], str) else None  # a list: validation, not syntax
    if _cuts_a_surrogate_pair(message):
        assert got is not None and "\ufffd" in got
        return
    assert got == message
