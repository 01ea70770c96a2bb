"""SPEC sections 2, 3, 7 and 8: hostile bytes on either webhook get the protocol's own answer, never a 5xx.

Bodies are built at the byte level: raw bytes, invalid UTF-8 inside string values, valid bodies cut short,
numbers of thousands of digits, deep nesting, NaN-like tokens and random byte edits.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from adapters import Rejected, smartrouting
from bench import fuzz as bench_fuzz
from core.query import RoutingQuery
from tests.conftest import ROOT, Gateway

SR_HEADERS = {"X-Benemen-APIKey": "1234", "content-type": "application/json"}
SR_STATUSES = {200, 204, 400, 413, 415}
EML_STATUSES = {201, 400, 413, 415}
SR_KEYS = {
    "InitialTarget",
    "FailTarget",
    "RequiredTarget",
    "AllocationTargets",
    "Priority",
    "ExtraPriority",
    "CustomTTS",
    "CustomMSI",
}
# Every SmartRouting refusal: fixed words, msgspec's type names and our own field names. Nothing sent.
SR_REASON = re.compile(
    r"body is not a JSON object|body is not valid UTF-8|body is nested too deeply|request body too large"
    r"|content type must be application/json|charset must be utf-8"
    r"|invalid field: (Expected `[a-z |]+`, got `[a-z]+`|Integer value out of range|Number out of range)"
    r" - at `\$\.(anum|bnum|targetid|extradata(\[\.\.\.\])?)`"
)

# --- bodies ---------------------------------------------------------------------------------------

# The same hostile bytes and tokens as the long-run script, so the two never drift apart.
BAD_UTF8, ODD_TOKENS = list(bench_fuzz.BAD_UTF8), list(bench_fuzz.ODD_TOKENS)


def _inner(text: str) -> bytes:
    """``text`` as the inside of a JSON string, raw UTF-8 where it can be."""
    return json.dumps(text, ensure_ascii=False)[1:-1].encode()


# A UTF-8 lead byte with nothing after it is never valid, whatever comes before it.
bad_bytes = st.sampled_from(BAD_UTF8) | st.binary(max_size=5).map(lambda b: b + b"\xc3")
short_text = st.text(max_size=12)
bad_strings = st.builds(
    lambda a, bad, b: b'"' + _inner(a) + bad + _inner(b) + b'"', short_text, bad_bytes, short_text
)
huge_numbers = st.builds(
    lambda minus, lead, digits, tail: minus + lead + digits + tail,
    st.sampled_from([b"", b"-"]),
    st.sampled_from([b"1", b"9", b"0"]),
    # Around the limits that matter (64 bits, Python's 4,300 digits), and anywhere.
    (st.sampled_from([18, 19, 20, 99, 100, 101, 4298, 4299, 4300, 4301, 8000]) | st.integers(0, 12_000)).map(
        lambda n: b"7" * n
    ),
    st.sampled_from([b""] * 6 + [b".5", b".", b"e5", b"e-99999", b"E+400", b"." + b"3" * 5000]),
)
nestings = st.builds(
    lambda shape, depth, closed: shape[0] * depth + shape[2] + (shape[1] * depth if closed else b""),
    st.sampled_from([(b"[", b"]", b""), (b'{"a":', b"}", b"1"), (b'[{"a":', b"}]", b"0")]),
    st.sampled_from([64, 999, 1000, 1001, 5000, 30_000]) | st.integers(1, 30_000),
    st.booleans(),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
).map(lambda v: json.dumps(v, ensure_ascii=False).encode())  # NaN and Infinity as Python writes them
values = st.one_of(json_values, bad_strings, huge_numbers, nestings, st.sampled_from(ODD_TOKENS))
FIELDS = ["anum", "bnum", "targetid", "extradata", "callID", "rclassification", "customerID", "callTime"]
names = st.sampled_from([*FIELDS, "x", "IsInternalCaller", ""]).map(lambda n: f'"{n}"'.encode()) | bad_strings


@st.composite
def objects(draw) -> bytes:
    members = []
    for name in draw(st.lists(names, max_size=5)):
        if name == b'"extradata"' and draw(st.booleans()):
            inner = draw(st.lists(st.tuples(names, values), max_size=4))
            value = b"{" + b",".join(k + b":" + v for k, v in inner) + b"}"
        else:
            value = draw(values)
        members.append(name + b":" + value)
    return b"{" + b",".join(members) + b"}"


valid_smartrouting = st.fixed_dictionaries(
    {},
    optional={
        "anum": st.sampled_from(["+358501231234", "+358500000003", "+46701234567", ""]) | short_text,
        "bnum": st.sampled_from(["+358 9 123 456", "+4612345"]) | short_text,
        "targetid": st.sampled_from(["SALES_QUEUE", "OPEN_Q", "CLOSED_Q"]) | short_text,
        "extradata": st.dictionaries(
            st.sampled_from(["CallId", "IsInternalCaller", "DYN_PAR_Culture"]),
            st.booleans() | st.integers() | short_text,
            max_size=3,
        ),
    },
)
valid_eml = st.fixed_dictionaries(
    {},
    optional={
        "callID": short_text,
        "rclassification": st.sampled_from(["Sales", "Support", "Nope"]) | short_text,
        "customerID": st.none() | st.just("ACME") | short_text,
        "callTime": st.sampled_from(["35", "00:10:00", ""]) | short_text,
    },
)
valid = (valid_smartrouting | valid_eml).map(lambda d: json.dumps(d, ensure_ascii=False).encode())


@st.composite
def edited(draw, bodies) -> bytes:
    """A body cut short, with a bit flipped, bytes put in, or bytes taken out."""
    body = draw(bodies)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(body)))
        op = draw(st.sampled_from(["cut", "flip", "insert", "delete", "prefix"]))
        if op == "cut":
            body = body[:at]
        elif op == "flip" and at < len(body):
            body = body[:at] + bytes([body[at] ^ (1 << draw(st.integers(0, 7)))]) + body[at + 1 :]
        elif op == "insert":
            body = (
                body[:at] + draw(bad_bytes | st.sampled_from(ODD_TOKENS) | st.binary(max_size=4)) + body[at:]
            )
        elif op == "delete":
            body = body[:at] + body[at + draw(st.integers(1, 8)) :]
        elif op == "prefix":
            body = draw(st.sampled_from([b"\xef\xbb\xbf", b"\xfe\xff", b"\x00", b" \r\n"])) + body
    return body


# One hostile value in a field either protocol reads, among ordinary members: the bodies most likely to
# get past the first checks.
in_a_field = st.builds(
    lambda before, name, value, after: (
        b"{"
        + b"".join(k + b":" + v + b"," for k, v in before)
        + name
        + b":"
        + value
        + b"".join(b"," + k + b":" + v for k, v in after)
        + b"}"
    ),
    st.lists(st.tuples(names, json_values), max_size=2),
    st.sampled_from(FIELDS).map(lambda n: f'"{n}"'.encode()),
    st.one_of(bad_strings, huge_numbers, nestings, st.sampled_from(ODD_TOKENS)),
    st.lists(st.tuples(names, json_values), max_size=2),
)
hostile = st.one_of(
    st.binary(max_size=600),
    in_a_field,
    in_a_field,
    objects(),
    edited(valid),
    edited(objects()),
    values,
)

# --- the parser itself ----------------------------------------------------------------------------


def _check_refusal(exc: Rejected) -> None:
    reply = exc.reply
    assert reply.status == 400 and reply.content_type == "application/json"
    body = json.loads(reply.body)
    assert list(body) == ["error"] and SR_REASON.fullmatch(body["error"]), body


@settings(max_examples=2500, deadline=None)
@given(body=hostile)
@example(body=b'{"anum":"\xff"}')
@example(body=b'{"extradata":{"\xc3(":1}}')
@example(body=b'{"extradata":{"a":' + b"9" * 5000 + b"}}")
@example(body=b'{"x":' + b"[" * 50_000 + b"}")
def test_parse_refuses_only_with_its_own_400(body):
    try:
        query = smartrouting.parse(body, "application/json")
    except Rejected as exc:
        _check_refusal(exc)
    else:
        assert isinstance(query, RoutingQuery)
        assert all(v is None or isinstance(v, str | bool | int | float) for v in query.attributes.values())


@pytest.mark.parametrize(
    "body",
    [
        b'{"anum":"+35850\xff1234"}',
        b'{"bnum":"\xc3"}',
        b'{"targetid":"SALES\xed\xa0\x80QUEUE"}',
        b'{"extradata":{"CallId":"ab\xf4\x90\x80\x80"}}',
        b'{"extradata":{"\xfeKey":true}}',
        b'{"platformField":"\x80"}',
    ],
)
def test_parse_invalid_utf8_is_a_400_that_shows_nothing_sent(body):
    with pytest.raises(Rejected) as caught:
        smartrouting.parse(body, "application/json")
    assert caught.value.reply.body == b'{"error":"body is not valid UTF-8"}'


@pytest.mark.parametrize(
    ("number", "reason"),
    [
        (b"-" + b"9" * 4300, "invalid field: Integer value out of range - at `$.extradata[...]`"),
        (b"9" * 40_000, "invalid field: Integer value out of range - at `$.extradata[...]`"),
        (b"1e999", "invalid field: Number out of range - at `$.extradata[...]`"),
        (b"9" * 400 + b".5", "invalid field: Number out of range - at `$.extradata[...]`"),
        (b"NaN", "body is not a JSON object"),
        (b"-Infinity", "body is not a JSON object"),
        (b"0x10", "body is not a JSON object"),
    ],
)
def test_parse_numbers_out_of_range_are_a_400(number, reason):
    with pytest.raises(Rejected) as caught:
        smartrouting.parse(b'{"extradata":{"CallId":' + number + b"}}")
    assert json.loads(caught.value.reply.body) == {"error": reason}


def test_parse_reads_long_numbers_in_range_exactly():
    query = smartrouting.parse(b'{"extradata":{"I":' + b"9" * 4299 + b',"F":' + b"1" * 300 + b".5e-3}}")
    assert query.attributes == {"I": int("9" * 4299), "F": float("1" * 300 + ".5e-3")}


# --- over HTTP, through the real server -----------------------------------------------------------


def _check_smartrouting(r) -> None:
    assert r.status_code in SR_STATUSES, (r.status_code, r.text)
    if r.status_code == 204:
        assert r.content == b""
    elif r.status_code == 200:
        assert r.json() and set(r.json()) <= SR_KEYS
    else:
        body = r.json()
        assert list(body) == ["error"] and SR_REASON.fullmatch(body["error"]), body


def _check_eml(r) -> None:
    assert r.status_code in EML_STATUSES, (r.status_code, r.text)
    body = r.json()
    if r.status_code == 201:
        keys = (
            ["rclassification", "number", "callID", "mqID", "success"]
            if body["success"]
            else ["success", "message"]
        )
        assert list(body) == keys
    elif r.status_code == 400:
        assert list(body) == ["message", "error", "statusCode"] and body["error"] == "Bad Request"
        assert body["statusCode"] == 400
        assert isinstance(body["message"], str) or all(isinstance(m, str) for m in body["message"])
    elif r.status_code == 413:
        assert r.content == b'{"statusCode":413,"message":"request entity too large"}'
    else:
        assert list(body) == ["statusCode", "message"] and body["statusCode"] == 415


SLOW = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]
CHECK = {"/smartrouting": _check_smartrouting, "/call/request": _check_eml}
ENDPOINTS = pytest.mark.parametrize("path", ["/smartrouting", "/call/request"])
content_types = st.sampled_from(
    ["application/json"] * 6
    + ["application/json; charset=utf-8", "application/json; charset=latin1", "text/plain", None]
)


def _post(e2e, path: str, body: bytes, ctype: str | None = "application/json"):
    headers = {"content-type": ctype} if ctype else {}
    if path == "/smartrouting":
        headers["X-Benemen-APIKey"] = "1234"
    r = e2e.client.post(path, content=body, headers=headers)
    CHECK[path](r)
    assert e2e.proc.poll() is None


@pytest.mark.e2e
@ENDPOINTS
@settings(max_examples=400, deadline=None, suppress_health_check=SLOW)
@given(body=hostile, ctype=content_types)
def test_fuzz_over_http(e2e, path, body, ctype):
    _post(e2e, path, body, ctype)


# Each protocol's real body with one field (or an extradata value) replaced by hostile bytes.
HOLE = b'"\\u0000HOLE\\u0000"'
BASES = {
    "/smartrouting": {
        "anum": "+358501231234",
        "bnum": "+3589",
        "targetid": "SALES_QUEUE",
        "extradata": {"CallId": "c-1", "IsInternalCaller": False},
    },
    "/call/request": {
        "callID": "fuzz-1",
        "rclassification": "Support",
        "customerID": "ACME",
        "callTime": "35",
    },
}
HOLES = {
    "/smartrouting": ["anum", "bnum", "targetid", "extradata", "extradata.CallId", "x"],
    "/call/request": ["callID", "rclassification", "customerID", "callTime", "x"],
}


def _with_hole(path: str, field: str) -> bytes:
    body = json.loads(json.dumps(BASES[path]))
    where, _, key = field.rpartition(".")
    (body[where] if where else body)[key] = "\x00HOLE\x00"
    return json.dumps(body).encode()


@pytest.mark.e2e
@ENDPOINTS
@settings(max_examples=250, deadline=None, suppress_health_check=SLOW)
@given(data=st.data(), value=st.one_of(huge_numbers, bad_strings, nestings, st.sampled_from(ODD_TOKENS)))
def test_hostile_value_in_a_field_over_http(e2e, path, data, value):
    field = data.draw(st.sampled_from(HOLES[path]), label="field")
    _post(e2e, path, _with_hole(path, field).replace(HOLE, value))


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("path", "field", "value"),
    [
        ("/smartrouting", "anum", b'"+35850\xff1234"'),
        ("/smartrouting", "extradata.CallId", b"7" * 4500),
        ("/smartrouting", "x", b"[" * 30_000),
        ("/call/request", "callID", b'"a\xff"'),
        ("/call/request", "callTime", b"7" * 4301),
        ("/call/request", "x", b"-" + b"7" * 5000),
    ],
)
def test_known_hostile_bodies_over_http(e2e, path, field, value):
    _post(e2e, path, _with_hole(path, field).replace(HOLE, value))


@pytest.mark.e2e
@pytest.mark.parametrize("field", ["anum", "bnum", "targetid", "CallId"])
def test_smartrouting_invalid_utf8_in_a_field_is_a_400_over_http(e2e, field):
    value = b'"SECRET-358\xff501"'
    body = (
        b'{"extradata":{"CallId":%s}}' % value
        if field == "CallId"
        else b'{"%s":%s}' % (field.encode(), value)
    )
    r = e2e.client.post("/smartrouting", content=body, headers=SR_HEADERS)
    assert r.status_code == 400
    assert r.content == b'{"error":"body is not valid UTF-8"}'


CRM_CONFIG = """
[server]
deadline_ms = 1500

[lookup]
url = "{url}"
timeout_ms = 800
attributes = ["agent", "language"]

[[rules]]
name = "crm-vip"
when = {{ tag = "vip" }}
then = {{ target = "VIP_QUEUE", required_agent = "{{caller.agent}}" }}
"""
digits = st.sampled_from([3, 20, 21, 300, 4000, 70_000]).map(lambda n: "+" + "4" * n)


@pytest.fixture(scope="module")
def crm_gateway(tmp_path_factory):
    """A gateway that looks every caller up in a local fake CRM."""
    from tests.crm import FakeCrm

    crm = FakeCrm()
    tmp = tmp_path_factory.mktemp("crm")
    (tmp / "config.toml").write_text(CRM_CONFIG.format(url=crm.url))
    gw = Gateway(tmp / "config.toml", tmp / "gateway.log")
    yield gw
    gw.stop()
    crm.close()


@pytest.mark.e2e
@settings(max_examples=150, deadline=None, suppress_health_check=SLOW)
@given(anum=st.text(max_size=40) | digits | st.text(alphabet="+0123456789 %/?#.-()", max_size=30))
@example(anum="+" + "4" * 70_000)
def test_smartrouting_callers_with_a_crm_lookup(crm_gateway, anum):
    """Any string as the caller, with a CRM lookup configured: never a 5xx (the number ends up in a URL)."""
    r = crm_gateway.client.post("/smartrouting", json={"anum": anum, "bnum": "+3581", "targetid": "Q"})
    _check_smartrouting(r)
    assert crm_gateway.proc.poll() is None
    assert '"event":"failed"' not in crm_gateway.logs()


@pytest.mark.e2e
def test_bench_fuzz_script_finds_no_5xx(e2e):
    """bench/fuzz.py, the long run the README quotes, here short: both endpoints, every kind of body."""
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "fuzz.py"),
            "--url",
            e2e.url,
            "--requests",
            "1500",
            "--seed",
            "8",
            "--concurrency",
            "4",
            "--time-limit",
            "40",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "1500 requests" in out.stdout, out.stdout + out.stderr
    assert "  5xx: 0; undocumented answers: 0; connection errors: 0" in out.stdout, out.stdout
    assert out.returncode == 0, out.stdout


@pytest.mark.e2e
def test_gateway_still_routes_after_the_fuzz(e2e):
    assert e2e.client.get("/healthz").status_code == 200
    r = e2e.smartrouting({"anum": "+358501231234", "bnum": "+3589", "targetid": "SALES_QUEUE"})
    assert r.status_code == 200 and r.json()["InitialTarget"] == "vip-queue"
    r = e2e.eml({"callID": "after-fuzz", "rclassification": "Support", "callTime": "300"})
    assert r.status_code == 201 and r.json()["number"] == "200"
    failed = [line for line in e2e.logs().splitlines() if '"event":"failed"' in line]
    assert not failed, failed[:3]
