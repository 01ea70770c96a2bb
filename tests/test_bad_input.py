"""SPEC section 7: every bad input gets the protocol's own error, never a 500, a trace or a hang."""

from __future__ import annotations

import json
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.e2e

SIX = [
    "callID should not be empty",
    "callID must be a string",
    "rclassification should not be empty",
    "rclassification must be a string",
    "callTime should not be empty",
    "callTime must be a string",
]
SR_HEADERS = {"X-Benemen-APIKey": "1234", "content-type": "application/json"}
JSON = {"content-type": "application/json"}


def nest_error(message):
    return {"message": message, "error": "Bad Request", "statusCode": 400}


# --- SmartRouting ------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"{", b"not json", b"[]", b"null", b"42", b'"x"', b"", b"\xff\xfe"])
def test_smartrouting_not_an_object(e2e, body):
    r = e2e.client.post("/smartrouting", content=body, headers=SR_HEADERS)
    assert r.status_code == 400
    assert set(r.json()) == {"error"}


@pytest.mark.parametrize(
    "body",
    [{"anum": 5}, {"bnum": ["x"]}, {"targetid": {}}, {"extradata": []}, {"extradata": {"a": {"b": 1}}}],
)
def test_smartrouting_wrong_types(e2e, body):
    r = e2e.client.post("/smartrouting", json=body, headers=SR_HEADERS)
    assert r.status_code == 400
    assert r.json()["error"].startswith("invalid field")


def test_smartrouting_deep_nesting(e2e):
    body = b'{"extradata":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = e2e.client.post("/smartrouting", content=body[:100_000], headers=SR_HEADERS)
    assert r.status_code == 400
    deep = b'{"x":' + b"[" * 40_000 + b"]" * 40_000 + b"}"
    r = e2e.client.post("/smartrouting", content=deep, headers=SR_HEADERS)
    assert r.status_code == 400 and r.json() == {"error": "body is nested too deeply"}


def test_smartrouting_wrong_content_type(e2e):
    r = e2e.client.post("/smartrouting", content=b"{}", headers={**SR_HEADERS, "content-type": "text/plain"})
    assert r.status_code == 415
    r = e2e.client.post(
        "/smartrouting",
        content=b"{}",
        headers={**SR_HEADERS, "content-type": "application/json; charset=latin-1"},
    )
    assert r.status_code == 415


def test_smartrouting_wrong_method(e2e):
    r = e2e.client.get("/smartrouting", headers=SR_HEADERS)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json() == {"error": "method not allowed; use POST"}


def test_smartrouting_huge_body(e2e):
    r = e2e.client.post("/smartrouting", content=b"{" + b" " * 200_000 + b"}", headers=SR_HEADERS)
    assert r.status_code == 413 and r.json() == {"error": "request body too large"}


def test_huge_body_refused_before_it_is_read(e2e):
    # A declared length over the limit is refused at once: the gateway does not wait for the body.
    with socket.create_connection(("127.0.0.1", e2e.port), timeout=5) as s:
        s.sendall(
            b"POST /smartrouting HTTP/1.1\r\nHost: x\r\nX-Benemen-APIKey: 1234\r\n"
            b"Content-Type: application/json\r\nContent-Length: 50000000\r\n\r\n{"
        )
        head = s.recv(4096)
    assert head.startswith(b"HTTP/1.1 413")


def test_huge_chunked_body(e2e):
    def chunks():
        for _ in range(50):
            yield b" " * 10_000

    r = e2e.client.post("/smartrouting", content=chunks(), headers=SR_HEADERS)
    assert r.status_code == 413


# --- EML ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "messages"),
    [
        ({}, SIX),
        (
            {"callID": None, "rclassification": "S", "callTime": "1"},
            ["callID should not be empty", "callID must be a string"],
        ),
        ({"callID": "", "rclassification": "S", "callTime": "1"}, ["callID should not be empty"]),
        ({"callID": "  ", "rclassification": "S", "callTime": "1", "customerID": None}, None),
        (
            {"callID": 1, "rclassification": True, "callTime": {}},
            ["callID must be a string", "rclassification must be a string", "callTime must be a string"],
        ),
        ({"callID": [], "rclassification": "S", "callTime": "1"}, ["callID must be a string"]),
        (
            {"callID": "a", "rclassification": "S", "callTime": "1", "customerID": 5},
            ["customerID must be a string"],
        ),
        ({"callID": "a", "rclassification": "S", "callTime": "1", "customerID": ""}, None),
        (
            {"callID": "a", "rclassification": "", "customerID": [], "callTime": None},
            [
                "rclassification should not be empty",
                "customerID must be a string",
                "callTime should not be empty",
                "callTime must be a string",
            ],
        ),
        ([], SIX),
        ([{"callID": "a"}], SIX),
    ],
)
def test_eml_validation_messages(e2e, body, messages):
    r = e2e.eml(body)
    if messages is None:
        assert r.status_code == 201
        return
    assert r.status_code == 400
    assert r.json() == nest_error(messages)
    assert list(r.json()) == ["message", "error", "statusCode"]


def test_eml_empty_body_and_other_media_types(e2e):
    r = e2e.client.post("/call/request", content=b"", headers=JSON)
    assert r.json() == nest_error(SIX)
    for ct in (None, "text/plain", "application/xml"):
        headers = {"content-type": ct} if ct else {}
        r = e2e.client.post(
            "/call/request", content=b'{"callID":"a","rclassification":"S","callTime":"1"}', headers=headers
        )
        assert r.status_code == 400 and r.json() == nest_error(SIX), ct


def test_eml_form_body(e2e):
    r = e2e.client.post(
        "/call/request", data={"callID": "form-1", "rclassification": "GOTOSUPPORT", "callTime": "3"}
    )
    assert r.status_code == 201 and r.json()["number"] == "5032505555"
    r = e2e.client.post(
        "/call/request",
        content=b"callID[a]=1&callID[b]=2&rclassification=S&callTime=1",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.json() == nest_error(["callID must be a string"])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "Expected property name or '}' in JSON at position 1"),
        (b'{"callID":', "Unexpected end of JSON input"),
        (b'{"callID":"a",}', "Expected double-quoted property name in JSON at position 14"),
        (b'{"callID" "a"}', "Expected ':' after property name in JSON at position 10"),
        (b"null", "Unexpected token 'n', \"null\" is not valid JSON"),
        (b"42", "Unexpected token '4', \"42\" is not valid JSON"),
        (b'"just a string value here"', 'Unexpected token \'"\', ""just a st"... is not valid JSON'),
        (b"true", "Unexpected token 't', \"true\" is not valid JSON"),
        (b"   ", "Unexpected end of JSON input"),
        (b'{"a":1} x', "Unexpected non-whitespace character after JSON at position 8"),
        (b'{"a":"\x01"}', "Bad control character in string literal in JSON at position 6"),
        (b'{"a":01}', "Unexpected number in JSON at position 6"),
    ],
)
def test_eml_parse_errors(e2e, body, message):
    r = e2e.client.post("/call/request", content=body, headers=JSON)
    assert r.status_code == 400
    assert r.json() == nest_error(message)


def test_eml_lenient_decoding(e2e):
    bom = b"\xef\xbb\xbf" + b'{"callID":"bom-1","rclassification":"GOTOSUPPORT","callTime":"1"}'
    r = e2e.client.post("/call/request", content=bom, headers=JSON)
    assert r.status_code == 201 and r.json()["callID"] == "bom-1"
    bad_utf8 = b'{"callID":"x\xff\xfey","rclassification":"GOTOSUPPORT","callTime":"1"}'
    r = e2e.client.post("/call/request", content=bad_utf8, headers=JSON)
    assert r.status_code == 201 and r.json()["callID"] == "x\ufffd\ufffdy"
    assert "\ufffd".encode() in r.content  # non-ASCII unescaped
    dup = b'{"callID":"d","callID":"dup-2","rclassification":"GOTOSUPPORT","callTime":"1"}'
    assert e2e.client.post("/call/request", content=dup, headers=JSON).json()["callID"] == "dup-2"


def test_eml_deep_nesting_is_a_validation_error(e2e):
    body = b'{"callID":' + b"[" * 30_000 + b"]" * 30_000 + b',"rclassification":"S","callTime":"1"}'
    r = e2e.client.post("/call/request", content=body, headers=JSON)
    assert r.status_code == 400 and r.json() == nest_error(["callID must be a string"])


def test_eml_what_node_accepts_and_msgspec_does_not(e2e):
    body = b'{"callID":"s-\\ud800","rclassification":"GOTOSUPPORT","callTime":"1","x":1e400}'
    r = e2e.client.post("/call/request", content=body, headers=JSON)
    assert r.status_code == 201 and r.json()["number"] == "5032505555"


def test_eml_charset(e2e):
    r = e2e.client.post(
        "/call/request", content=b"{}", headers={"content-type": "application/json; charset=ISO-8859-1"}
    )
    assert r.status_code == 415
    assert r.content == b'{"statusCode":415,"message":"unsupported charset \\"ISO-8859-1\\""}'
    ok = e2e.client.post(
        "/call/request",
        content=b'{"callID":"cs","rclassification":"GOTOSUPPORT","callTime":"1"}',
        headers={"content-type": "application/json; charset=UTF-8"},
    )
    assert ok.status_code == 201


def test_eml_too_large(e2e):
    r = e2e.client.post("/call/request", content=b'{"callID":"' + b"a" * 200_000 + b'"}', headers=JSON)
    assert r.status_code == 413
    assert r.content == b'{"statusCode":413,"message":"request entity too large"}'


def test_bad_requests_lose_nothing_stored(e2e):
    first = e2e.eml({"callID": "keep-1", "rclassification": "Sales", "callTime": "1"}).json()
    for body in (b'{"callID":"keep-1"}', b'{"callID":"keep-1","rclassification":5,"callTime":"1"}', b"{"):
        e2e.client.post("/call/request", content=body, headers=JSON)
    assert e2e.eml({"callID": "keep-1", "rclassification": "Sales", "callTime": "1"}).json() == first


# --- random input ------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    ["anum", "bnum", "targetid", "extradata", "callID", "rclassification", "customerID", "callTime", "x"]
)
bodies = st.one_of(
    st.binary(max_size=300),
    st.dictionaries(field_names, json_values, max_size=6).map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
)
content_types = st.sampled_from(
    [
        None,
        "application/json",
        "application/json; charset=utf-8",
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/json; charset=latin1",
        "multipart/form-data; boundary=x",
        "application/problem+json",
        "garbage;;==",
    ]
)
# Printable ASCII without surrounding blanks: what an HTTP client will send at all.
header_values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(
    str.strip
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=bodies,
    ctype=content_types,
    key=header_values,
    auth=header_values,
    path=st.sampled_from(["/smartrouting", "/call/request", "/call/request/", "/CALL/request"]),
    method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT"]),
)
def test_random_requests_never_fail_the_server(e2e, body, ctype, key, auth, path, method):
    headers = {"X-Benemen-APIKey": key, "Authorization": auth, "X-API-Key": key}
    if ctype:
        headers["content-type"] = ctype
    r = e2e.client.request(method, path, content=body, headers=headers)
    assert r.status_code < 500, r.text
    assert r.status_code in (200, 201, 204, 400, 401, 404, 405, 413, 415)
    if r.status_code != 204:
        r.json()  # every answer is JSON


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=st.dictionaries(field_names, json_values, max_size=6))
def test_random_eml_objects_follow_the_validation_rules(e2e, fields):
    r = e2e.eml(fields)
    required_ok = all(
        isinstance(fields.get(f), str) and fields.get(f) != ""
        for f in ("callID", "rclassification", "callTime")
    )
    customer_ok = fields.get("customerID") is None or isinstance(fields.get("customerID"), str)
    if required_ok and customer_ok:
        assert r.status_code == 201
        assert r.json()["success"] in (True, False)
    else:
        assert r.status_code == 400
        assert r.json()["error"] == "Bad Request" and r.json()["message"]
