"""A real HTTP server standing in for a CRM, for the lookup tests: per-number behaviour, request counts."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote


class FakeCrm:
    """``GET /callers/<number>``. ``modes[number]`` picks the answer: ``vip``, ``gold`` (200 with tags),
    ``slow`` (4 s, then 200), ``500``, ``garbage`` (200, not JSON), ``array`` (200, a JSON list);
    any other number is 404."""

    def __init__(self) -> None:
        self.modes: dict[str, str] = {}
        self.hits: Counter[str] = Counter()
        self.headers: list[dict] = []
        crm = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                number = unquote(self.path.rsplit("/", 1)[-1])
                crm.hits[number] += 1
                crm.headers.append(dict(self.headers))
                mode = crm.modes.get(number, "missing")
                if mode == "slow":
                    time.sleep(4)
                    mode = "vip"
                if mode in ("vip", "gold"):
                    body = json.dumps({"segment": mode, "tags": ["vip"] if mode == "vip" else "gold",
                                       "agent": "crm-agent@customer.com", "language": "sv-SE", "nested": {}})
                    self._answer(200, body.encode())
                elif mode == "500":
                    self._answer(500, b"oops")
                elif mode == "garbage":
                    self._answer(200, b"<html>not json")
                elif mode == "array":
                    self._answer(200, b'["vip"]')
                else:
                    self._answer(404, b'{"error":"not found"}')

            def _answer(self, status, body):
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
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

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
