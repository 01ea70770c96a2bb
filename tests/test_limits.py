"""SPEC section 8, the server's part: header limits, slow clients, connection limit, shutdown.

Through a real ``routing-gateway serve`` and raw sockets, since what is tested is what a client sees on
the wire: a status line, or the connection closing.
"""

from __future__ import annotations

import itertools
import signal
import socket
import ssl
import subprocess
import threading
import time

import httpx
import pytest

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
    assert "Request header fields too large." in gw.logs()  # through uvicorn's logger


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
        began = time.monotonic()
        with connect(gw) as s:
            s.sendall(head("/healthz", "Connection: close"))
            return status(read_all(s)), time.monotonic() - began

    # Five connections, each held open by a head that has not finished arriving.
    holders = [connect(gw) for _ in range(5)]
    try:
        for h in holders:
            h.sendall(b"GET /healthz HTTP/1.1\r\n")
        code, took = probe()
        assert code == 503 and took < 2, (code, took)
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
