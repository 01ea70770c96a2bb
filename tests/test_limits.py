"""SPEC section 8, the server's part: header limits, slow clients, connection limit, shutdown.

Through a real ``routing-gateway serve`` and raw sockets, since what is tested is what a client sees on
the wire: a status line, or the connection closing.
"""

from __future__ import annotations

import itertools
import re
import signal
import socket
import ssl
import subprocess
import threading
import time

import httpx
import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.e2e

KEY = "limits-key-4d2f"
ENV = {"LIMITS_SR_KEY": KEY}
WEBHOOK = '[smartrouting]\napi_keys = ["${LIMITS_SR_KEY}"]\n'


def config(**server) -> str:
    lines = [f"{name} = {value}" for name, value in server.items()]
    return "[server]\n" + "\n".join(lines) + "\n" + WEBHOOK


def connect(gw) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gw.port), timeout=10)


def read_all(sock: socket.socket, timeout: float = 10) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else 0


def seconds_until_closed(sock: socket.socket, limit: float) -> float:
    """How long until the server closes ``sock`` (fails if it is still open after ``limit``)."""
    began = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"connection still open after {limit} s")
    return time.monotonic() - began


def head(target: str = "/healthz", *headers: str, method: str = "GET") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: gateway", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def padded(size: int) -> bytes:
    """A GET /healthz head of exactly ``size`` bytes (request line plus headers), closing after."""
    bare = head("/healthz", "Connection: close", "X-Pad: ")
    return head("/healthz", "Connection: close", "X-Pad: " + "a" * (size - len(bare)))


def answers(raw: bytes) -> list[tuple[int, str]]:
    """Each answer's status and X-Request-Id, in the order they came."""
    found = []
    for match in re.finditer(rb"HTTP/1\.1 (\d{3}) [^\r]*\r\n((?:[^\r\n]+\r\n)*)\r\n", raw):
        rid = re.search(rb"(?im)^x-request-id: (\S+)", match[2])
        found.append((int(match[1]), rid[1].decode() if rid else ""))
    return found


def webhook(body: bytes = b"{}", *headers: str) -> bytes:
    return (
        head(
            "/smartrouting",
            f"X-Benemen-APIKey: {KEY}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            *headers,
            method="POST",
        )
        + body
    )


# --- Header size and count --------------------------------------------------------------------------


@pytest.mark.parametrize("piece", [None, 700], ids=["one-write", "in-pieces"])
def test_a_head_over_max_header_bytes_gets_431_and_the_connection_closed(start_gateway, piece):
    gw = start_gateway(config(max_header_bytes=4096), env=ENV)

    def send(data: bytes) -> bytes:
        with connect(gw) as s:
            for i in range(0, len(data), piece or len(data)):
                s.sendall(data[i : i + (piece or len(data))])
            return read_all(s)

    assert len(padded(4096)) == 4096
    assert status(send(padded(4096))) == 200
    refused = send(padded(4097))  # read_all returned: the server closed the connection
    assert status(refused) == 431
    assert refused.endswith(b'\r\n\r\n{"error":"request header fields too large"}')
    assert b"connection: close" in refused.lower() and b"application/json" in refused
    # The limit is the head's: a body far larger, arriving with the head, is not counted.
    body = b" " * 20_000 + b"{}"
    assert status(send(webhook(body, "Connection: close"))) == 204
    end = time.monotonic() + 10  # through uvicorn's logger, written behind the answer
    while "Request header fields too large." not in gw.logs() and time.monotonic() < end:
        time.sleep(0.05)
    assert "Request header fields too large." in gw.logs()


def test_more_headers_than_max_headers_gets_431(start_gateway):
    gw = start_gateway(config(max_headers=10), env=ENV)
    allowed = [f"X-H{i}: v" for i in range(8)]  # with Host and Connection: 10

    def send(data: bytes) -> bytes:
        with connect(gw) as s:
            s.sendall(data)
            return read_all(s)

    assert status(send(head("/healthz", "Connection: close", *allowed))) == 200
    refused = send(head("/healthz", "Connection: close", *allowed, "X-H8: v"))
    assert status(refused) == 431
    assert refused.endswith(b'{"error":"request header fields too large"}')


def test_a_streamed_huge_head_is_cut_early_and_other_webhooks_answer_promptly(start_gateway):
    gw = start_gateway(WEBHOOK, env=ENV)  # the default limit, 16 KiB
    total, chunk = 64 << 20, b"a" * (1 << 20)
    floods: list[tuple[int, bool, float]] = []  # per connection: bytes sent, cut, seconds

    def flood():
        # Connection after connection, each streaming one header of up to 64 MiB, for three seconds.
        end = time.monotonic() + 3
        while time.monotonic() < end and len(floods) < 100:
            began, sent, cut = time.monotonic(), 0, False
            with connect(gw) as s:
                try:
                    s.sendall(b"POST /smartrouting HTTP/1.1\r\nHost: gateway\r\nX-Flood: ")
                    while sent < total and time.monotonic() - began < 20:
                        s.sendall(chunk)
                        sent += len(chunk)
                except OSError:
                    cut = True
            floods.append((sent, cut, time.monotonic() - began))

    flooder = threading.Thread(target=flood)
    flooder.start()
    latencies = []
    with httpx.Client(base_url=gw.url, timeout=30) as other:
        while flooder.is_alive() or len(latencies) < 5:
            began = time.monotonic()
            r = other.post("/smartrouting", json={}, headers={"X-Benemen-APIKey": KEY})
            latencies.append(time.monotonic() - began)
            assert r.status_code == 204
    flooder.join()
    # Each is cut after what the kernel's socket buffers hold (a few MiB), not after 64 MiB.
    assert all(cut and sent < 32 << 20 and took < 10 for sent, cut, took in floods), floods[:3]
    assert max(latencies) < 2.0, sorted(latencies)[-3:]


def chunked(body: bytes, trailer: bytes = b"", *headers: str) -> bytes:
    """A webhook whose body is sent in chunks of up to two bytes (the first with an extension), then
    ``trailer`` (whole lines) and the empty line."""
    chunks = [body[i : i + 2] for i in range(0, len(body), 2)]
    framed = b"".join(
        b"%x%s\r\n%s\r\n" % (len(c), b";x=1" if not i else b"", c) for i, c in enumerate(chunks)
    )
    return (
        head(
            "/smartrouting",
            f"X-Benemen-APIKey: {KEY}",
            "Content-Type: application/json",
            "Transfer-Encoding: chunked",
            *headers,
            method="POST",
        )
        + framed
        + b"0\r\n"
        + trailer
        + b"\r\n"
    )


def test_a_pipelined_head_counts_from_its_first_byte_wherever_it_starts(start_gateway):
    # A request, and behind it in the same writes a second one whose head is about the limit or far
    # over it: the second is held to the limit exactly, however the bytes are cut, and the first is
    # answered before it.
    gw = start_gateway(config(max_header_bytes=4096), env=ENV)
    firsts = {
        "length": webhook(b'{"anum": "+358401234567"}'),
        "chunked": chunked(b'{"anum": "+358401234567"}'),
    }

    @settings(max_examples=40, deadline=None)
    @given(
        first=st.sampled_from(sorted(firsts)),
        size=st.one_of(st.integers(4090, 4100), st.integers(4097, 130_000)),
        cut=st.floats(0, 1),
    )
    def check(first, size, cut):
        data = firsts[first] + padded(size)
        at = int(len(data) * cut)
        with connect(gw) as s:
            try:
                s.sendall(data[:at])
                s.sendall(data[at:])
            except OSError:
                pass  # refused and closed while the rest was still being sent
            got = [code for code, _ in answers(read_all(s))]
        assert got == [204, 200 if size <= 4096 else 431], (first, size, at)

    check()


def test_a_trailer_counts_with_its_head_against_max_header_bytes(start_gateway):
    gw = start_gateway(config(max_header_bytes=4096), env=ENV)
    body = b'{"anum": "+358401234567"}'
    bare = chunked(body, b"X-T: \r\n", "Connection: close")
    # What counts: the head, and the trailer's lines with the empty line that ends them.
    counted = bare.index(b"\r\n\r\n") + 4 + len(b"X-T: \r\n\r\n")

    def send(data: bytes) -> bytes:
        with connect(gw) as s:
            s.sendall(data)
            return read_all(s)

    assert (
        status(send(chunked(body, b"X-T: " + b"t" * (4096 - counted) + b"\r\n", "Connection: close"))) == 204
    )
    refused = send(chunked(body, b"X-T: " + b"t" * (4097 - counted) + b"\r\n", "Connection: close"))
    assert status(refused) == 431 and refused.endswith(b'{"error":"request header fields too large"}')
    # A trailer streamed without end is cut after the limit, not read for ever.
    with connect(gw) as s:
        s.sendall(chunked(body)[:-2] + b"X-Flood: ")
        sent, cut = 0, False
        try:
            while sent < 64 << 20:
                s.sendall(b"a" * 65536)
                sent += 65536
        except OSError:
            cut = True
        assert cut and sent < 32 << 20, sent
        assert gw.client.get("/healthz").status_code == 200


def test_pipelined_requests_are_read_a_few_ahead_and_answered_in_order(start_gateway):
    # One connection sends requests ahead of the answers as fast as it can. The gateway reads only a few
    # ahead: its memory stays flat, another client is served as before, and every request sent is
    # answered, in order.
    gw = start_gateway(config(keepalive_timeout_s=60), env=ENV)
    process = psutil.Process(gw.proc.pid)
    baseline = peak = process.memory_info().rss
    blob = b"".join(webhook(b"{}", f"X-Request-Id: p{i}") for i in range(1000))
    flood = connect(gw)
    flood.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
    received = bytearray()
    batches = 0

    def read():
        try:
            while chunk := flood.recv(1 << 16):
                received.extend(chunk)
        except OSError:
            pass

    def send():
        nonlocal batches
        end = time.monotonic() + 2
        while time.monotonic() < end:
            flood.sendall(blob)
            batches += 1

    reader, sender = threading.Thread(target=read), threading.Thread(target=send)
    reader.start()
    sender.start()
    latencies = []
    try:
        with httpx.Client(base_url=gw.url, timeout=30) as other:
            while sender.is_alive() or len(latencies) < 5:
                began = time.monotonic()
                assert (
                    other.post("/smartrouting", json={}, headers={"X-Benemen-APIKey": KEY}).status_code == 204
                )
                latencies.append(time.monotonic() - began)
                peak = max(peak, process.memory_info().rss)
        sender.join()
        # Unbounded, this flood queues tens of thousands of requests: hundreds of MB.
        assert peak - baseline < 30 << 20, (peak - baseline) >> 20
        assert max(latencies) < 2.0, sorted(latencies)[-3:]
        expected = batches * 1000
        end = time.monotonic() + 60
        while received.count(b"HTTP/1.1 ") < expected and time.monotonic() < end:
            time.sleep(0.1)
    finally:
        flood.close()
        reader.join()
    got = answers(bytes(received))
    assert len(got) == expected
    assert got == [(204, f"p{i % 1000}") for i in range(expected)]


def test_pipelined_requests_of_any_framing_cut_anywhere_are_each_answered_once_in_order(start_gateway):
    gw = start_gateway(config(keepalive_timeout_s=60), env=ENV)
    one = st.tuples(
        st.sampled_from(["length", "chunked"]),
        st.sampled_from([2, 1000, 70_000, 110_000]),  # over max_body_bytes (100 KiB): 413
        st.sampled_from([1, 3, 100, 5000, 70_000]),  # the chunks' size
        st.sampled_from([b"", b"X-T: 1\r\n", b"A: 1\r\nB: 2\r\n"]),
    )

    def framed(i: int, kind: str, size: int, piece: int, trailer: bytes) -> bytes:
        body = b"{" + b" " * (size - 2) + b"}"
        if kind == "length":
            return webhook(body, f"X-Request-Id: r{i}")
        chunks = [body[at : at + piece] for at in range(0, size, piece)]
        return (
            head(
                "/smartrouting",
                f"X-Benemen-APIKey: {KEY}",
                "Transfer-Encoding: chunked",
                f"X-Request-Id: r{i}",
                method="POST",
            )
            + b"".join(b"%x;n=%d\r\n%s\r\n" % (len(c), n, c) for n, c in enumerate(chunks))
            + b"0\r\n"
            + trailer
            + b"\r\n"
        )

    @settings(max_examples=25, deadline=None)
    @given(st.lists(one, min_size=1, max_size=12), st.lists(st.floats(0, 1), max_size=10))
    def check(requests, cuts):
        data = b"".join(framed(i, *r) for i, r in enumerate(requests))
        received = bytearray()
        with connect(gw) as s:

            def read():
                try:
                    while received.count(b"HTTP/1.1 ") < len(requests) and (chunk := s.recv(1 << 16)):
                        received.extend(chunk)
                except OSError:
                    pass

            reader = threading.Thread(target=read)
            reader.start()
            at = 0
            for cut in [*sorted(int(len(data) * c) for c in cuts), len(data)]:
                s.sendall(data[at:cut])
                at = max(at, cut)
            reader.join(30)
        expected = [(413 if size > 102_400 else 204, f"r{i}") for i, (_, size, _, _) in enumerate(requests)]
        assert answers(bytes(received)) == expected

    check()


def test_a_request_behind_one_being_answered_is_not_timed_out(start_gateway, crm):
    # The first request takes a second to decide (its CRM lookup never answers), three times the read
    # timeout; the next request has begun to arrive. The first is answered; the next one's time starts
    # then, and only then is the connection closed.
    crm.modes["+358401234567"] = "hold"
    gw = start_gateway(
        config(read_timeout_ms=300, deadline_ms=3000) + f'[lookup]\nurl = "{crm.url}"\ntimeout_ms = 1000\n',
        env=ENV,
    )
    request = webhook(b'{"anum": "+358401234567"}', "X-Request-Id: first")
    with connect(gw) as s:
        began = time.monotonic()
        s.sendall(request + request[:10])
        raw = read_all(s)
        took = time.monotonic() - began
    assert crm.hits["+358401234567"] == 1
    assert [rid for _, rid in answers(raw)] == ["first"]
    assert 0.8 < took < 8, took


# --- Slow clients ------------------------------------------------------------------------------------


def dribble(sock: socket.socket, data: bytes, every: float, stop: threading.Event) -> None:
    """Send ``data`` a byte at a time, until it is sent, the connection fails or ``stop`` is set."""
    try:
        for i in range(len(data)):
            if stop.wait(every):
                return
            sock.sendall(data[i : i + 1])
    except OSError:
        pass


SLOW = {
    "nothing-sent": (b"", b""),
    "partial-head": (b"POST /smartrouting HTTP/1.1\r\nHost: gateway\r\n", b""),
    "head-dribbled": (b"", webhook()),
    "short-body": (webhook(b'{"anum": "+358401234567"}')[:-10], b""),
    "body-dribbled": (webhook(b'{"anum": "' + b"1" * 100 + b'"}')[:-100], b"1" * 100),
}


@pytest.mark.parametrize("case", list(SLOW))
def test_a_slow_client_is_closed_after_read_timeout(start_gateway, case):
    gw = start_gateway(config(read_timeout_ms=500, keepalive_timeout_s=60), env=ENV)
    first, slowly = SLOW[case]
    stop = threading.Event()
    with connect(gw) as s:
        s.sendall(first)
        sender = threading.Thread(target=dribble, args=(s, slowly, 0.1, stop))
        sender.start()
        try:
            took = seconds_until_closed(s, 8)
        finally:
            stop.set()
            sender.join()
    assert 0.3 < took < 4, took
    assert gw.client.get("/healthz").status_code == 200


def test_the_head_and_then_the_body_each_have_read_timeout(start_gateway):
    # The head takes 1.6 s and the body 1.6 s more, of a 3 s read timeout: 3.2 s in all, and answered.
    gw = start_gateway(config(read_timeout_ms=3000), env=ENV)
    request = webhook(b'{"anum": "+358401234567"}', "Connection: close")
    head_end = request.index(b"\r\n\r\n") + 4
    cuts = [0, head_end // 2, head_end - 1, head_end, head_end + 10, len(request)]
    with connect(gw) as s:
        for i, (start, stop) in enumerate(itertools.pairwise(cuts)):
            if i:
                time.sleep(0.8)  # pacing the sender: the promise is about time
            s.sendall(request[start:stop])
        assert status(read_all(s)) == 204


def test_an_idle_keepalive_connection_is_closed_after_keepalive_timeout(start_gateway):
    gw = start_gateway(config(keepalive_timeout_s=1), env=ENV)
    with connect(gw) as s:
        s.sendall(head("/healthz"))
        answer = b""
        while not answer.endswith(b'{"status":"alive"}'):
            answer += s.recv(65536)
        assert status(answer) == 200
        assert 0.5 < seconds_until_closed(s, 8) < 3.5  # uvicorn's own default is 5 s


# --- Connection limit --------------------------------------------------------------------------------


def test_beyond_max_connections_new_requests_get_503_at_once(start_gateway):
    gw = start_gateway(config(max_connections=5, read_timeout_ms=30000), env=ENV)
    gw.client.close()  # its keep-alive connection would count

    def probe() -> tuple[int, float]:
        return status((answer := probe_raw())[0]), answer[1]

    def probe_raw() -> tuple[bytes, float]:
        began = time.monotonic()
        with connect(gw) as s:
            s.sendall(head("/healthz", "Connection: close"))
            return read_all(s), time.monotonic() - began

    # Five connections, each held open by a head that has not finished arriving.
    holders = [connect(gw) for _ in range(5)]
    try:
        for h in holders:
            h.sendall(b"GET /healthz HTTP/1.1\r\n")
        raw, took = probe_raw()
        assert status(raw) == 503 and took < 2, (raw, took)
        assert b"content-type: application/json" in raw
        assert raw.endswith(b'\r\n\r\n{"error":"service unavailable: too many connections"}')
        # With one closed, the probe is the fifth open connection: it is served.
        holders.pop().close()
        end = time.monotonic() + 10
        while (code := probe()[0]) != 200 and time.monotonic() < end:
            time.sleep(0.05)
        assert code == 200
        holders.append(connect(gw))
        holders[-1].sendall(b"GET /healthz HTTP/1.1\r\n")
        end = time.monotonic() + 10
        while (code := probe()[0]) != 503 and time.monotonic() < end:
            time.sleep(0.05)
        assert code == 503
    finally:
        for h in holders:
            h.close()
    end = time.monotonic() + 10
    while (code := probe()[0]) != 200 and time.monotonic() < end:
        time.sleep(0.05)
    assert code == 200


def tls_gateway(start_gateway, tmp_path, *args: str, **server) -> tuple:
    """A gateway serving HTTPS with a certificate of a CA of its own; and a client context trusting it."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    tls = 'tls_cert = "server.pem"\ntls_key = "server.key"\n'
    text = config(**server).replace("[server]\n", "[server]\n" + tls)
    return start_gateway(text, *args, env=ENV, scheme="https", verify=context), context


def test_a_tls_connection_counts_from_its_accept_and_its_handshake_has_read_timeout(start_gateway, tmp_path):
    gw, context = tls_gateway(start_gateway, tmp_path, max_connections=3, read_timeout_ms=4000)
    gw.client.close()  # its keep-alive connection would count
    # Three connections that never begin the handshake.
    silent = [connect(gw) for _ in range(3)]
    opened = time.monotonic()
    try:
        with context.wrap_socket(connect(gw), server_hostname="127.0.0.1") as client:
            client.sendall(head("/healthz", "Connection: close"))
            refused = read_all(client)
        assert status(refused) == 503, refused
        for s in silent:
            seconds_until_closed(s, 15)
        took = time.monotonic() - opened
    finally:
        for s in silent:
            s.close()
    assert 3 < took < 10, took  # the loop's own default is 60 s
    with context.wrap_socket(connect(gw), server_hostname="127.0.0.1") as client:
        client.sendall(head("/healthz", "Connection: close"))
        assert status(read_all(client)) == 200


def test_workers_bound_the_tls_handshake_too(start_gateway, tmp_path):
    gw, _ = tls_gateway(start_gateway, tmp_path, "--workers", "2", read_timeout_ms=2000)
    silent = [connect(gw) for _ in range(4)]  # new connections, so that both workers take some
    opened = time.monotonic()
    try:
        for s in silent:
            seconds_until_closed(s, 15)
    finally:
        for s in silent:
            s.close()
    assert 1 < time.monotonic() - opened < 8
    assert gw.client.get("/healthz").status_code == 200


def test_a_request_the_parser_refuses_gets_400_in_json(start_gateway):
    gw = start_gateway(WEBHOOK, env=ENV)
    for garbage in (
        b"NOT HTTP\r\n\r\n",
        b"GET / HTTP/1.1\nHost: x\n\n",
        chunked(b"{}").replace(b"\r\n2", b"\r\nzz"),
    ):
        with connect(gw) as s:
            s.sendall(garbage)
            refused = read_all(s)
        assert status(refused) == 400, refused
        assert b"content-type: application/json" in refused
        assert refused.endswith(b'\r\n\r\n{"error":"invalid HTTP request"}')
    # After an answered request, on the same connection: the answer comes first.
    with connect(gw) as s:
        s.sendall(webhook(b"{}", "X-Request-Id: before") + b"NOT HTTP\r\n\r\n")
        assert answers(read_all(s)) == [(204, "before"), (400, "")]


# --- Shutdown ----------------------------------------------------------------------------------------


def stop_timed(gw, limit: float) -> tuple[int, float]:
    """SIGTERM; the exit code and how long the process took to end."""
    began = time.monotonic()
    gw.signal(signal.SIGTERM)
    try:
        code = gw.proc.wait(limit)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {limit} s after SIGTERM")
    return code, time.monotonic() - began


def test_sigterm_cuts_a_stuck_body_within_shutdown_timeout(start_gateway):
    gw = start_gateway(config(shutdown_timeout_s=2, read_timeout_ms=60000), env=ENV)
    with connect(gw) as stuck:
        stuck.sendall(webhook(b'{"anum": "+358401234567"}')[:-10])
        assert gw.client.get("/healthz").status_code == 200
        code, took = stop_timed(gw, 2 + 6)
        assert seconds_until_closed(stuck, 1) < 1
    assert code == 0 and took < 2 + 2, (code, took)
    assert '"event":"stopped"' in gw.logs()


def test_sigterm_with_nothing_in_flight_exits_at_once(start_gateway):
    gw = start_gateway(config(shutdown_timeout_s=30, keepalive_timeout_s=60), env=ENV)
    assert gw.client.get("/healthz").status_code == 200  # an idle keep-alive connection stays
    code, took = stop_timed(gw, 10)
    assert code == 0 and took < 3, (code, took)


def test_sigterm_with_an_idle_tls_keepalive_client_exits_at_once(start_gateway, tmp_path):
    gw, context = tls_gateway(start_gateway, tmp_path, keepalive_timeout_s=60)
    with context.wrap_socket(connect(gw), server_hostname="127.0.0.1") as idle:
        idle.sendall(head("/healthz"))
        answer = b""
        while not answer.endswith(b'{"status":"alive"}'):
            answer += idle.recv(65536)
        assert status(answer) == 200  # and the connection stays open, idle, never reading again
        code, took = stop_timed(gw, 10 + 6)
    # Ten seconds is the default shutdown_timeout_s: an idle client is not waited for at all.
    assert code == 0 and took < 3, (code, took)


# --- Workers ------------------------------------------------------------------------------------------


def test_workers_get_the_same_limits(start_gateway):
    gw = start_gateway(
        config(max_header_bytes=2048, shutdown_timeout_s=2, read_timeout_ms=60000), "--workers", "2", env=ENV
    )
    for _ in range(4):  # new connections, so that both workers take some
        with connect(gw) as s:
            s.sendall(padded(2049))
            assert status(read_all(s)) == 431
    with connect(gw) as stuck:
        stuck.sendall(webhook(b'{"anum": "+358401234567"}')[:-10])
        assert gw.client.get("/healthz").status_code == 200
        code, took = stop_timed(gw, 2 + 8)
    assert code == 0 and took < 2 + 3, (code, took)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_access_log_is_written_when_asked_for_and_only_then(start_gateway, workers):
    on = start_gateway(config(access_log="true"), "--workers", workers, env=ENV)
    off = start_gateway(WEBHOOK, "--workers", workers, env=ENV)
    for gw in (on, off):
        assert gw.client.get("/healthz?probe=access").status_code == 200
    end = time.monotonic() + 10
    while "GET /healthz?probe=access HTTP/1.1" not in on.logs() and time.monotonic() < end:
        time.sleep(0.05)
    assert "GET /healthz?probe=access HTTP/1.1" in on.logs()
    assert off.stop() in (0, -signal.SIGTERM)  # its last lines are written
    assert "GET /healthz" not in off.logs()
