"""Benchmark: both webhooks over real HTTP against a ``routing-gateway serve`` process.

    .venv/bin/python bench/webhooks.py [--callers 100000] [--requests 10000] [--concurrency 1,32] [--redis URL]

Generates a directory CSV of ``--callers`` callers, times loading the config, starts the gateway on a
free port, and sends ``--requests`` requests of each kind from one client process (keep-alive, a fixed
number in flight, on a minimal HTTP/1.1 client), reporting throughput and latency percentiles as a Markdown table. Client and server
share the machine, so the figures are a floor, not a ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.config import load

CONFIG = """
[server]
deadline_ms = 1500
[store]
redis_url = "{redis}"
key_prefix = "bench{stamp}:"
[eml]
retry_window_s = 600
[directory]
files = ["callers.csv"]
[services.Sales]
numbers = ["100", "101", "102"]
strategy = "round_robin"
[services.VIP_QUEUE]
numbers = ["vip-queue"]
[schedules.office]
timezone = "Europe/Helsinki"
mon = ["08:00-17:00"]
tue = ["08:00-17:00"]
[[rules]]
name = "blocked"
when = {{ tag = "blocked" }}
then = {{ disconnect = true }}
[[rules]]
name = "vip"
when = {{ protocol = "smartrouting", tag = "vip" }}
then = {{ service = "VIP_QUEUE", required_agent = "{{caller.agent}}", extra_priority = 100 }}
[[rules]]
name = "swedish"
when = {{ protocol = "smartrouting", caller_prefix = "+46" }}
then = {{ priority = 10 }}
[[rules]]
name = "sales-closed"
when = {{ protocol = "eml", service = "Sales", closed = "office" }}
then = {{ service = "Sales" }}
"""


def write_callers(path: Path, n: int) -> None:
    with path.open("w") as f:
        f.write("number,tags,agent,language\n")
        for i in range(n):
            tag = "vip" if i % 10 == 0 else "regular"
            f.write(f"+35850{i:07d},{tag},agent{i % 50}@customer.com,fi-FI\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def run(port: int, kind: str, n: int, concurrency: int, callers: int) -> list[float]:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams: light enough that the gateway, not
    the client, is what is measured (httpx spends more CPU per request than the gateway does)."""
    latencies: list[float] = []
    counter = iter(range(n))

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in counter:
            if kind == "smartrouting":
                anum = f"+35850{random.randrange(max(callers, 1)):07d}"
                raw = request(
                    "/smartrouting", b'{"anum":"%s","bnum":"+3589000","targetid":"Q"}' % anum.encode()
                )
            else:
                raw = request(
                    "/call/request", b'{"callID":"bench-%d","rclassification":"Sales","callTime":"12"}' % i
                )
            began = time.perf_counter()
            writer.write(raw)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - began)
            assert status in (200, 201, 204), head
        writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--callers", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--concurrency", default="1,32", help="comma-separated; one run each")
    ap.add_argument("--redis", default="")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_callers(tmp / "callers.csv", args.callers)
        (tmp / "config.toml").write_text(CONFIG.format(redis=args.redis, stamp=int(time.time())))
        began = time.perf_counter()
        load(tmp / "config.toml")
        load_s = time.perf_counter() - began
        port = free_port()
        binary = Path(sys.executable).parent / "routing-gateway"
        log = open(tmp / "gateway.log", "wb")  # noqa: SIM115 - the server's log for its lifetime
        began = time.perf_counter()
        proc = subprocess.Popen(
            [binary, "serve", "--config", tmp / "config.toml", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        url = f"http://127.0.0.1:{port}"
        while True:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        start_s = time.perf_counter() - began
        rss_kb = int(Path(f"/proc/{proc.pid}/status").read_text().split("VmRSS:")[1].split()[0])
        print(
            f"directory: {args.callers} callers; config load {load_s:.2f} s; "
            f"gateway ready in {start_s:.2f} s; RSS {rss_kb // 1024} MiB; store: {args.redis or 'in-process'}"
        )
        print()
        print("| protocol | requests | concurrency | req/s | p50 ms | p99 ms | max ms |")
        print("|---|---|---|---|---|---|---|")
        try:
            for kind in ("smartrouting", "eml"):
                for concurrency in (int(c) for c in args.concurrency.split(",")):
                    asyncio.run(run(port, kind, 500, concurrency, args.callers))  # warm up
                    began = time.perf_counter()
                    lat = asyncio.run(run(port, kind, args.requests, concurrency, args.callers))
                    took = time.perf_counter() - began
                    print(
                        f"| {kind} | {args.requests} | {concurrency} | {args.requests / took:,.0f} | "
                        f"{pct(lat, 0.5):.2f} | {pct(lat, 0.99):.2f} | {max(lat) * 1000:.2f} |"
                    )
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
