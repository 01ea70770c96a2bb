"""Credentials: whitespace around a key, non-ASCII keys as UTF-8, every key compared in constant time."""

from __future__ import annotations

import base64
import hmac
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters import eml, smartrouting
from gateway.auth import Credentials


def sr(keys=(), basic=None) -> Credentials:
    return Credentials(smartrouting.API_KEY_HEADER, smartrouting.AUTH_SCHEMES, list(keys), basic or {})


def em(keys=()) -> Credentials:
    return Credentials(eml.API_KEY_HEADER, eml.AUTH_SCHEMES, list(keys), {})


def as_received(raw: bytes) -> str:
    """A header value as the app hands it over: the bytes sent, decoded as latin-1 (as ASGI does)."""
    return raw.decode("latin-1")


def basic(user: str, password: str, encoding: str = "utf-8") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode(encoding)).decode()


# Ends in "à": its UTF-8 bytes end in 0xA0, which read as latin-1 is a no-break space that str.strip()
# would take for whitespace.
UTF8_KEYS = ["sala-äö€-avain", "clé-à", "ключ", "鍵🔑"]


@pytest.mark.parametrize("padded", ["k3y-1 ", " k3y-1", "\tk3y-1 \t", "k3y-1  "])
def test_whitespace_around_the_api_key_is_not_part_of_it(padded):
    assert sr(["k3y-1"]).accept({"x-benemen-apikey": padded})
    assert em(["k3y-1"]).accept({"x-api-key": padded})


@pytest.mark.parametrize("wrong", ["k3y-1x", "k3y- 1", "k3y-", "", " ", "K3Y-1", "k3y-1\n"])
def test_only_the_key_itself_matches(wrong):
    assert not sr(["k3y-1"]).accept({"x-benemen-apikey": wrong})
    assert not em(["k3y-1"]).accept({"x-api-key": wrong, "authorization": f"Bearer {wrong}"})


@pytest.mark.parametrize("key", UTF8_KEYS)
def test_a_non_ascii_api_key_matches_as_utf8_bytes(key):
    sent = as_received(key.encode() + b" ")
    assert sr([key]).accept({"x-benemen-apikey": sent})
    assert em([key]).accept({"x-api-key": sent})


def test_a_non_ascii_api_key_sent_as_latin1_does_not_match():
    # The bytes a client sends are compared; latin-1 bytes are not the UTF-8 key.
    assert not sr(["päss-wörd"]).accept({"x-benemen-apikey": as_received("päss-wörd".encode("latin-1"))})


@pytest.mark.parametrize("key", [*UTF8_KEYS, "plain"])
@pytest.mark.parametrize("spacing", ["Bearer {}", "Bearer  {} ", " bearer  {}\t", "BEARER {}"])
def test_bearer_token_trimmed_and_compared_as_utf8(key, spacing):
    creds = em([key])
    assert creds.accept({"authorization": as_received(spacing.format(key).encode())})
    assert not creds.accept({"authorization": as_received(spacing.format(key + "x").encode())})


@pytest.mark.parametrize(
    ("user", "password"), [("enreach", "s3cret"), ("jörg", "pässwörd€"), ("ユーザー", "à")]
)
@pytest.mark.parametrize("spacing", ["{}", " {} ", "{}\t"])
def test_basic_trimmed_and_compared_as_utf8(user, password, spacing):
    creds = sr(basic={user: password})
    assert creds.accept({"authorization": as_received(spacing.format(basic(user, password)).encode())})
    assert not creds.accept({"authorization": basic(user, password + "x")})


def test_basic_sent_in_latin1_does_not_match_a_utf8_password():
    creds = sr(basic={"jörg": "pässwörd"})
    assert not creds.accept({"authorization": basic("jörg", "pässwörd", "latin-1")})


key_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40).filter(
    lambda k: k == k.strip(" \t")
)


@given(key=key_text, other=key_text, pad=st.sampled_from(["", " ", "\t", "  \t"]))
def test_any_key_matches_exactly_as_utf8(key, other, pad):
    creds = Credentials(smartrouting.API_KEY_HEADER, ("basic", "bearer"), [key], {})
    assert creds.accept({"x-benemen-apikey": as_received(pad.encode() + key.encode() + pad[::-1].encode())})
    assert creds.accept({"authorization": as_received(b"Bearer " + key.encode() + pad.encode())})
    if other != key:
        assert not creds.accept({"x-benemen-apikey": as_received(other.encode())})
        assert not creds.accept({"authorization": as_received(b"Bearer " + other.encode())})


def test_every_configured_credential_is_compared_in_constant_time(monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    keys = ["first-key", "sala-äö€", "third"]
    creds = Credentials(smartrouting.API_KEY_HEADER, ("basic", "bearer"), keys, {"u": "p"})
    for header, value, expected in [
        ("x-benemen-apikey", "first-key ", True),  # found first: the others are still compared
        ("x-benemen-apikey", "x", False),  # another length
        ("authorization", as_received(b"Bearer " + "sala-äö€".encode()), True),
        ("authorization", basic("u", "p"), True),
    ]:
        calls.clear()
        assert creds.accept({header: value}) is expected
        compared = [b for _, b in calls]
        if header == "authorization" and value.startswith("Basic"):
            assert compared == [b"u:p"]
        else:
            assert compared == [k.encode() for k in keys]


# --- through the real server -------------------------------------------------------------------------

CONFIG = """
[smartrouting]
api_keys = ["${AUTH_SR_KEY}"]

[eml]
api_keys = ["${AUTH_EML_KEY}"]

[services.Sales]
numbers = ["100"]
"""
ENV = {"AUTH_SR_KEY": "sala-äö€-avain", "AUTH_EML_KEY": "clé-à"}


def raw_post(gw, path: str, header: bytes, body: bytes) -> int:
    """POST with one header as raw bytes (clients refuse trailing spaces and non-ASCII); the status."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(head + header + b"\r\n\r\n" + body)
        reply = b""
        while b"\r\n" not in reply:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    return int(reply.split(b" ", 2)[1])


@pytest.mark.e2e
def test_server_accepts_padded_utf8_keys(start_gateway):
    gw = start_gateway(CONFIG, env=ENV)
    sr_key, eml_key = ENV["AUTH_SR_KEY"].encode(), ENV["AUTH_EML_KEY"].encode()
    sr_body = b'{"anum":"+358501231234"}'
    eml_body = b'{"callID":"a1","rclassification":"Sales","callTime":"5"}'
    assert raw_post(gw, "/smartrouting", b"X-Benemen-APIKey: " + sr_key + b" \t", sr_body) == 204
    assert raw_post(gw, "/smartrouting", b"X-Benemen-APIKey: " + sr_key, sr_body) == 204
    assert raw_post(gw, "/smartrouting", b"X-Benemen-APIKey: " + sr_key + b"x", sr_body) == 401
    assert raw_post(gw, "/call/request", b"X-API-Key: " + eml_key + b"  ", eml_body) == 201
    assert raw_post(gw, "/call/request", b"Authorization: Bearer " + eml_key + b" ", eml_body) == 201
    assert raw_post(gw, "/call/request", b"Authorization: Bearer " + eml_key + b"x", eml_body) == 401
