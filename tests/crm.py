"""A real HTTP server standing in for a CRM, for the lookup tests: per-number behaviour, request counts."""

from __future__ import annotations

import gzip
import json
import re
import select
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

VIP = {
    "segment": "vip",
    "tags": ["vip"],
    "agent": "crm-agent@customer.com",
    "language": "sv-SE",
    "nested": {},
}


class FakeCrm:
    """``GET /callers/<number>``. ``modes[number]`` picks the answer:

    - ``vip``, ``gold``: 200 with tags (a list, or one string);
    - ``slow``: 4 s, then as ``vip``; ``hold``: nothing until :meth:`release` (then ``vip``) or until the
      client goes away (counted in ``dropped``);
    - ``500``, ``503``, ``400``, ``403``, ``429``: that status;
    - ``garbage`` (200, not JSON), ``array`` (200, a JSON list), ``latin1`` (200, a JSON object with a
      string that is not UTF-8), ``huge`` (200, a JSON object of 100 KiB), ``endless`` (200, a JSON
      object that never ends, sent until the client goes away: counted in ``dropped``), ``gzip`` (200,
      ``vip`` compressed although not asked for);
    - anything else: 404 for a number, 400 for what cannot be one (as a CRM validating its input would).
    """

    def __init__(self) -> None:
        self.modes: dict[str, str] = {}
        self.hits: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.headers: list[dict] = []
        self._release = threading.Event()
        crm = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                number = unquote(self.path.split("?")[0].rsplit("/", 1)[-1])
                crm.hits[number] += 1
                crm.headers.append(dict(self.headers))
                mode = crm.modes.get(number) or ("missing" if re.fullmatch(r"\+?\d+", number) else "400")
                if mode == "slow":
                    time.sleep(4)
                    mode = "vip"
                if mode == "hold":
                    if not self._held():
                        crm.dropped[number] += 1
                        return
                    mode = "vip"
                if mode in ("vip", "gold"):
                    body = {**VIP, "segment": mode, "tags": ["vip"] if mode == "vip" else "gold"}
                    self._answer(200, json.dumps(body).encode())
                elif mode.isdigit():
                    self._answer(int(mode), b'{"error":"refused"}')
                elif mode == "garbage":
                    self._answer(200, b"<html>not json")
                elif mode == "array":
                    self._answer(200, b'["vip"]')
                elif mode == "latin1":
                    self._answer(200, b'{"tags":["vip"],"agent":"J\xf6rg"}')
                elif mode == "huge":
                    self._answer(200, json.dumps({**VIP, "pad": "x" * 100 * 1024}).encode())
                elif mode == "gzip":
                    self._answer(200, gzip.compress(json.dumps(VIP).encode()), {"content-encoding": "gzip"})
                elif mode == "endless":
                    if not self._endless():
                        crm.dropped[number] += 1
                else:
                    self._answer(404, b'{"error":"not found"}')

            def _held(self) -> bool:
                """Wait for release; False when the client closed the connection first."""
                end = time.monotonic() + 30
                while time.monotonic() < end and not crm._release.is_set():
                    readable, _, _ = select.select([self.connection], [], [], 0.02)
                    if readable:
                        try:
                            if not self.connection.recv(1, socket.MSG_PEEK):
                                return False
                        except OSError:
                            return False
                return True

            def _endless(self) -> bool:
                try:
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"tags":["vip"],"pad":"')
                    chunk = b"x" * 65536
                    end = time.monotonic() + 30
                    while time.monotonic() < end:
                        self.wfile.write(chunk)
                except OSError:
                    return False
                return True

            def _answer(self, status, body, headers=None):
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/callers/{{caller}}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def release(self) -> None:
        """Let every ``hold`` request, now and later, answer."""
        self._release.set()

    def close(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()
