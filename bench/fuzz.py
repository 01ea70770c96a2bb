"""Fuzz both webhooks of a running gateway with hostile bytes; fail on any 5xx.

    .venv/bin/python bench/fuzz.py --url http://127.0.0.1:8080 [--requests 100000] [--seed 1]
        [--concurrency 16] [--time-limit 900] [--api-key KEY] [--failures DIR] [--replay I]

Sends ``--requests`` POSTs, alternating ``/smartrouting`` (with ``X-Benemen-APIKey``) and ``/call/request``,
each body one of: raw bytes, invalid UTF-8 inside a string value, a valid body cut short, numbers of
thousands of digits, deep nesting, NaN-like tokens, random byte edits of a valid body, and valid bodies.
Body ``i`` depends only on ``--seed`` and ``i``: ``--replay I`` prints it. Prints requests, answers by
endpoint and status, 5xx count, undocumented answers and requests/s; exits 1 on any 5xx, connection
error or undocumented answer. Loopback addresses only: it is a load a production gateway must not get.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ipaddress
import json
import random
import re
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

SMARTROUTING = "/smartrouting"
EML = "/call/request"
DOCUMENTED = {SMARTROUTING: {200, 204, 400, 413, 415}, EML: {201, 400, 413, 415}}
EXAMPLES = 20
# SmartRouting's refusals name the problem in fixed words and field names; none holds anything sent.
SMARTROUTING_REASON = re.compile(
    r"body is not a JSON object|body is not valid UTF-8|body is nested too deeply|request body too large"
    r"|content type must be application/json|charset must be utf-8"
    r"|invalid field: (Expected `[a-z |]+`, got `[a-z]+`|Integer value out of range|Number out of range)"
    r" - at `\$\.(anum|bnum|targetid|extradata(\[\.\.\.\])?)`"
)

BAD_UTF8 = (
    b"\xff",
    b"\xfe",
    b"\x80",
    b"\xbf",
    b"\xc3",
    b"\xc3(",
    b"\xe2\x82",
    b"\xe2(\xa1",
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xc0\xaf",
    b"\xe0\x80\xaf",
    b"\xf4\x90\x80\x80",
    b"\xf5\x80\x80\x80",
    b"\xf0\x9f\x98",
    b"\xf8\x88\x80\x80\x80",
    b"\xef\xbf",
)
ODD_TOKENS = (
    b"NaN",
    b"-NaN",
    b"nan",
    b"Infinity",
    b"-Infinity",
    b"inf",
    b"1e999",
    b"-1e999",
    b"1e-99999",
    b"0x10",
    b"01",
    b"+1",
    b".5",
    b"1.",
    b"1e",
    b"-",
    b"--1",
    b"1_000",
    b"-0",
    b"1E+2",
    b"undefined",
    b"True",
    b"nul",
    b"'x'",
    b'"\\ud800"',
    b'"\\udfff x"',
    b'"\\u12"',
    b'"\\x41"',
    b'"\\',
    b'"a\x00b"',
    b'"\x1f"',
    b'"\\u0000"',
    b"[1,]",
    b"{,}",
    b'{"a"}',
    b"[",
    b"{",
)
OPENERS = (
    (b"[", b"]", b""),
    (b'{"a":', b"}", b"1"),
    (b'[{"a":', b"}]", b"0"),
    (b'{"extradata":', b"}", b"{}"),
)
SR_FIELDS = ("anum", "bnum", "targetid", "extradata")
EML_FIELDS = ("callID", "rclassification", "customerID", "callTime")
ALL_FIELDS = SR_FIELDS + EML_FIELDS + ("x", "DYN_PAR_Culture", "")


def _text(rng: random.Random, size: int = 12) -> str:
    pool = 'abcXYZ019 +-_:./@"\\é€😀\t\n\u2028'
    return "".join(rng.choice(pool) for _ in range(rng.randrange(size + 1)))


def _valid(rng: random.Random, path: str) -> dict:
    if path == SMARTROUTING:
        body = {
            "anum": rng.choice(["+358501231234", "+358500000003", "+46701234567", "", _text(rng)]),
            "bnum": rng.choice(["+358 9 123 456", "+4612345", _text(rng)]),
            "targetid": rng.choice(["SALES_QUEUE", "OPEN_Q", "CLOSED_Q", "", _text(rng)]),
            "extradata": {
                "CallId": _text(rng),
                "IsInternalCaller": rng.random() < 0.2,
                "DYN_PAR_Culture": rng.choice(["en-GB", "fi-FI", _text(rng)]),
                "Number": rng.choice([0, -1, 2**63, 1.5, 10**30]),
            },
        }
    else:
        body = {
            "callID": f"fuzz-{rng.randrange(10**9)}",
            "rclassification": rng.choice(["Sales", "Support", "GOTOSUPPORT", "Closed", "Nope", _text(rng)]),
            "customerID": rng.choice(["ACME", "", None, _text(rng)]),
            "callTime": rng.choice(["35", "00:10:00", "1:02:03", "", _text(rng)]),
        }
    for key in list(body):
        if rng.random() < 0.2:
            del body[key]
    return body


def _dump(value: object, rng: random.Random) -> bytes:
    return json.dumps(value, ensure_ascii=rng.random() < 0.5).encode()


def _huge_number(rng: random.Random) -> bytes:
    digits = rng.choice(
        (rng.randrange(1, 30), rng.randrange(30, 5000), rng.randrange(4000, 4700), rng.randrange(5000, 40000))
    )
    body = rng.choice(b"123456789").to_bytes() + bytes(
        rng.choice(b"0123456789") for _ in range(min(digits, 64))
    )
    body = (body * (digits // len(body) + 1))[:digits]
    tail = rng.choice((b"", b"", b".5", b".", b"e5", b"e-99999", b"E+400", b"." + b"9" * digits))
    return (b"-" if rng.random() < 0.3 else b"") + body + tail


def _nesting(rng: random.Random) -> bytes:
    opener, closer, inner = rng.choice(OPENERS)
    depth = rng.choice((rng.randrange(1, 200), rng.randrange(200, 5000), rng.randrange(5000, 60000)))
    closed = rng.random() < 0.6
    return opener * depth + inner + (closer * depth if closed else b"")


def _bad_string(rng: random.Random) -> bytes:
    left = json.dumps(_text(rng), ensure_ascii=False)[1:-1].encode()
    right = json.dumps(_text(rng), ensure_ascii=False)[1:-1].encode()
    bad = rng.choice(BAD_UTF8) if rng.random() < 0.7 else bytes(rng.randrange(128, 256) for _ in range(3))
    return b'"' + left + bad + right + b'"'


def _value(rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        return _bad_string(rng)
    if kind == 1:
        return _huge_number(rng)
    if kind == 2:
        return _nesting(rng)
    if kind == 3:
        return rng.choice(ODD_TOKENS)
    if kind == 4:
        return (
            b"{"
            + b",".join(
                _member(rng, ("CallId", "IsInternalCaller", "DYN_X", "")) for _ in range(rng.randrange(4))
            )
            + b"}"
        )
    return _dump(rng.choice((None, True, 0, -3, 1.5, "x", "", [], {}, ["a", 1], {"a": None})), rng)


def _member(rng: random.Random, names: tuple[str, ...]) -> bytes:
    name = json.dumps(rng.choice(names)).encode() if rng.random() < 0.9 else _bad_string(rng)
    return name + b":" + _value(rng)


def _mutate(rng: random.Random, body: bytes) -> bytes:
    op = rng.randrange(5)
    at = rng.randrange(len(body) + 1)
    if op == 0:
        return body[:at]
    if op == 1 and body:
        at = min(at, len(body) - 1)
        return body[:at] + bytes([body[at] ^ (1 << rng.randrange(8))]) + body[at + 1 :]
    if op == 2:
        return body[:at] + rng.choice(BAD_UTF8 + ODD_TOKENS) + body[at:]
    if op == 3:
        return body[:at] + body[at + rng.randrange(1, 8) :]
    return rng.choice((b"\xef\xbb\xbf", b" \r\n\t", b"\x00", b"\xfe\xff")) + body


def make_body(seed: int, i: int) -> tuple[str, bytes]:
    """Request ``i`` of run ``seed``: the endpoint and the body."""
    rng = random.Random(f"{seed}:{i}")
    path = SMARTROUTING if i % 2 == 0 else EML
    kind = rng.randrange(10)
    if kind == 0:
        size = rng.choice((rng.randrange(64), rng.randrange(512), rng.randrange(8192)))
        return path, rng.randbytes(size)
    if kind == 1:  # invalid UTF-8 inside a string value of a real field
        body = _valid(rng, path)
        body[rng.choice(SR_FIELDS[:3] if path == SMARTROUTING else EML_FIELDS)] = "\x00MARK\x00"
        raw = _dump(body, rng)
        return path, raw.replace(b"\\u0000MARK\\u0000", _bad_string(rng)[1:-1])
    if kind == 2:  # a valid body cut short
        raw = _dump(_valid(rng, path), rng)
        return path, raw[: rng.randrange(len(raw) + 1)]
    if kind in (3, 4, 5):  # one hostile value in a field (huge number, nesting, token, bad string, ...)
        fields = SR_FIELDS if path == SMARTROUTING else EML_FIELDS
        members = [_member(rng, ALL_FIELDS) for _ in range(rng.randrange(3))]
        members.insert(
            rng.randrange(len(members) + 1),
            json.dumps(rng.choice(fields)).encode()
            + b":"
            + (_huge_number(rng) if kind == 3 else _nesting(rng) if kind == 4 else _value(rng)),
        )
        if path == SMARTROUTING and rng.random() < 0.5:
            members.append(b'"extradata":{"k":' + _value(rng) + b"}")
        return path, b"{" + b",".join(members) + b"}"
    if kind == 6:  # a hostile document at the top
        return path, rng.choice((_huge_number, _nesting, _bad_string))(rng)
    if kind in (7, 8):
        raw = _dump(_valid(rng, path), rng)
        for _ in range(rng.randrange(1, 4)):
            raw = _mutate(rng, raw)
        return path, raw
    return path, _dump(_valid(rng, path), rng)


class Tally:
    def __init__(self) -> None:
        self.status: collections.Counter = collections.Counter()
        self.errors: collections.Counter = collections.Counter()
        self.undocumented = 0
        self.examples: list[str] = []
        self.sent = 0

    def example(self, text: str) -> None:
        if len(self.examples) < EXAMPLES:
            self.examples.append(text)


def _shape_ok(path: str, status: int, body: bytes) -> bool:
    """The answer is the protocol's own: SmartRouting's ``{"error"}``, EML's NestJS shapes."""
    if status == 204:
        return body == b""
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    if not isinstance(doc, dict):
        return False
    if path == SMARTROUTING:
        if status == 200:
            return bool(doc)
        return list(doc) == ["error"] and SMARTROUTING_REASON.fullmatch(doc["error"]) is not None
    if status == 201:
        return isinstance(doc.get("success"), bool)
    if status == 400:
        return list(doc) == ["message", "error", "statusCode"] and doc["statusCode"] == 400
    return doc.get("statusCode") == status


def _request(host: str, path: str, body: bytes, key: str) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    if path == SMARTROUTING:
        head += f"X-Benemen-APIKey: {key}\r\n"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def _exchange(conn, raw: bytes, timeout: float) -> tuple[int, bytes, bool]:
    reader, writer = conn
    writer.write(raw)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    status = int(head[9:12])
    length, close = 0, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            close = True
    body = await asyncio.wait_for(reader.readexactly(length), timeout) if length else b""
    return status, body, close


async def run(args, host: str, port: int, tally: Tally) -> float:
    counter = iter(range(args.requests))
    stop_at = time.monotonic() + args.time_limit
    began = time.perf_counter()
    failures = Path(args.failures) if args.failures else None
    if failures:
        failures.mkdir(parents=True, exist_ok=True)

    async def worker() -> None:
        conn = None
        for i in counter:
            if time.monotonic() > stop_at:
                return
            path, body = make_body(args.seed, i)
            raw = _request(host, path, body, args.api_key)
            try:
                if conn is None:
                    conn = await asyncio.open_connection(host, port)
                status, answer, close = await _exchange(conn, raw, args.timeout)
            except (
                OSError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
                TimeoutError,
                ValueError,
            ) as exc:
                tally.errors[type(exc).__name__] += 1
                tally.example(f"{type(exc).__name__} on {path} #{i}: {body[:160]!r}")
                if conn is not None:
                    conn[1].close()
                conn = None
                continue
            finally:
                tally.sent += 1
            tally.status[(path, status)] += 1
            if status >= 500 or status not in DOCUMENTED[path] or not _shape_ok(path, status, answer):
                tally.undocumented += status < 500
                tally.example(
                    f"{status} on {path} #{i} ({len(body)} bytes): {body[:160]!r} -> {answer[:160]!r}"
                )
                if failures:
                    (failures / f"{status}-{path.strip('/').replace('/', '_')}-{i}.bin").write_bytes(body)
            if close or status == 413:
                conn[1].close()
                conn = None
        if conn is not None:
            conn[1].close()

    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    return time.perf_counter() - began


def _loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def _healthy(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway (loopback only)")
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=None, help="default: a random one, printed")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--time-limit", type=float, default=900, help="seconds; stop sending after it")
    ap.add_argument("--timeout", type=float, default=10, help="seconds per answer")
    ap.add_argument("--api-key", default="1234", help="X-Benemen-APIKey for /smartrouting")
    ap.add_argument("--failures", default="", help="a directory to write each failing body to")
    ap.add_argument("--replay", type=int, default=None, metavar="I", help="print body I of --seed and exit")
    args = ap.parse_args(argv)
    if args.seed is None:
        args.seed = random.randrange(10**6)
    if args.replay is not None:
        path, body = make_body(args.seed, args.replay)
        print(path)
        sys.stdout.buffer.write(body + b"\n")
        return 0
    url = urlsplit(args.url)
    host, port = url.hostname or "", url.port or 80
    if url.scheme != "http" or not _loopback(host):
        print(f"refused: {args.url} is not plain HTTP on a loopback address", file=sys.stderr)
        return 2
    if args.requests < 1 or args.concurrency < 1:
        print("refused: --requests and --concurrency must be at least 1", file=sys.stderr)
        return 2

    tally = Tally()
    took = asyncio.run(run(args, host, port, tally))
    fives = sum(n for (_, status), n in tally.status.items() if status >= 500)
    alive = _healthy(host, port)
    print(
        f"seed {args.seed}: {tally.sent} requests in {took:.1f} s, {tally.sent / took:,.0f} requests/s, "
        f"concurrency {args.concurrency}"
    )
    for path in (SMARTROUTING, EML):
        counts = {s: n for (p, s), n in sorted(tally.status.items()) if p == path}
        print(
            f"  {path}: {sum(counts.values())} answers; by status "
            + ", ".join(f"{s}: {n}" for s, n in counts.items())
        )
    print(
        f"  5xx: {fives}; undocumented answers: {tally.undocumented}; connection errors: "
        f"{sum(tally.errors.values())} {dict(tally.errors) or ''}".rstrip()
    )
    print(f"  gateway /healthz afterwards: {'200' if alive else 'NOT ANSWERING'}")
    if tally.sent < args.requests:
        print(
            f"  stopped at --time-limit {args.time_limit:g} s, {args.requests - tally.sent} requests not sent"
        )
    for text in tally.examples:
        print(f"  example: {text}")
    return 1 if fives or tally.undocumented or tally.errors or not alive else 0


if __name__ == "__main__":
    sys.exit(main())
