"""Benchmark: both webhooks over real HTTP against a ``routing-gateway serve`` process.

    .venv/bin/python bench/webhooks.py [--callers 100000] [--requests 10000] [--warmup 500]
        [--concurrency 1,32] [--protocols smartrouting,eml] [--redis URL] [--gateway-log PATH]

Generates a directory CSV of ``--callers`` callers, times loading the config, starts the gateway on a
free port, and sends ``--requests`` requests of each kind from one client process (keep-alive, a fixed
number in flight, on a minimal HTTP/1.1 client), reporting throughput and latency percentiles as a
Markdown table. Client and server share the machine, so the figures are a floor, not a ceiling.

Every EML request, warm-up included, carries a callID of its own, made unique across runs by a run
tag: the EML rows measure new calls (allocation and call record), never retries answered from a stored
decision. With ``--redis``, the gateway keeps its keys under a prefix of the run's own
(``bench:<tag>:``), and the script deletes exactly the keys under it once the gateway has stopped (SCAN
and UNLINK), on success, failure, Ctrl-C or SIGTERM alike; nothing else in that Redis is touched.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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
key_prefix = "{prefix}"
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

PROTOCOLS = ("smartrouting", "eml")


def run_tag() -> str:
    """A tag no other run shares: the start time, readable, and random bits for runs in the same second."""
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}"


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


async def run(
    port: int, kind: str, n: int, concurrency: int, callers: int, call_ids: Iterator[bytes]
) -> list[float]:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams: light enough that the gateway, not
    the client, is what is measured (httpx spends more CPU per request than the gateway does).

    EML requests take their callIDs from ``call_ids``, which never repeats one, so each is a new call."""
    latencies: list[float] = []
    counter = iter(range(n))

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in counter:
            if kind == "smartrouting":
                anum = f"+35850{random.randrange(max(callers, 1)):07d}"
                raw = request(
                    "/smartrouting", b'{"anum":"%s","bnum":"+3589000","targetid":"Q"}' % anum.encode()
                )
            else:
                raw = request(
                    "/call/request",
                    b'{"callID":"%s","rclassification":"Sales","callTime":"12"}' % next(call_ids),
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


def delete_prefix(url: str, prefix: str) -> int:
    """Delete every key under ``prefix`` in the Redis at ``url`` (SCAN MATCH, then UNLINK in batches),
    and only those; returns how many. Passes repeat until one finds none, since SCAN may miss keys
    written while it runs."""
    import redis

    pattern = re.sub(r"([\\*?\[\]])", r"\\\1", prefix) + "*"
    removed = 0
    with redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10) as client:
        for _ in range(10):
            found = 0
            batch: list[bytes] = []
            for key in client.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) == 500:
                    found += client.unlink(*batch)
                    batch.clear()
            if batch:
                found += client.unlink(*batch)
            removed += found
            if not found:
                break
    return removed


def shown(url: str) -> str:
    """A Redis URL without its password, to print."""
    return re.sub(r"//[^/@]*@", "//", url)


def clean_up(url: str, prefix: str) -> None:
    from redis import RedisError

    try:
        removed = delete_prefix(url, prefix)
    except RedisError as exc:
        sys.exit(
            f"could not remove the keys under {prefix} from {shown(url)} ({exc}); remove them with\n"
            f"  redis-cli -u URL --scan --pattern '{prefix}*' | xargs -r redis-cli -u URL unlink"
        )
    print(f"removed {removed} keys under {prefix} from {shown(url)}", file=sys.stderr, flush=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"gateway exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"gateway not ready in {timeout:.0f} s:\n{log.read_text()[-4000:]}")


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the clean-up like Ctrl-C does


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--callers", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--warmup", type=int, default=500, help="requests before each measured run")
    ap.add_argument("--concurrency", default="1,32", help="comma-separated; one run each")
    ap.add_argument(
        "--protocols", default=",".join(PROTOCOLS), help="comma-separated, of: " + ", ".join(PROTOCOLS)
    )
    ap.add_argument(
        "--redis", default="", help="a Redis URL; its keys under this run's prefix are deleted at the end"
    )
    ap.add_argument("--gateway-log", type=Path, help="keep the gateway's log (its decision lines) here")
    args = ap.parse_args(argv)
    kinds = [k for k in args.protocols.split(",") if k]
    if not kinds or set(kinds) - set(PROTOCOLS):
        ap.error(f"--protocols takes {', '.join(PROTOCOLS)}")
    concurrencies = [int(c) for c in args.concurrency.split(",")]

    tag = run_tag()
    prefix = f"bench:{tag}:"
    call_ids = (b"bench-%s-%d" % (tag.encode(), i) for i in itertools.count())
    signal.signal(signal.SIGTERM, _terminated)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_callers(tmp / "callers.csv", args.callers)
        (tmp / "config.toml").write_text(CONFIG.format(redis=args.redis, prefix=prefix))
        began = time.perf_counter()
        load(tmp / "config.toml")
        load_s = time.perf_counter() - began
        port = free_port()
        binary = Path(sys.executable).parent / "routing-gateway"
        log_path = tmp / "gateway.log"
        proc = None
        print(
            f"run {tag}; store: {shown(args.redis) or 'in-process'}"
            + (f", keys under {prefix}" if args.redis else ""),
            flush=True,
        )
        try:
            with log_path.open("wb") as log:
                began = time.perf_counter()
                proc = subprocess.Popen(
                    [binary, "serve", "--config", tmp / "config.toml", "--port", str(port)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "PYTHONWARNINGS": "ignore"},
                )
                wait_ready(proc, f"http://127.0.0.1:{port}", log_path)
                start_s = time.perf_counter() - began
                rss_kb = int(Path(f"/proc/{proc.pid}/status").read_text().split("VmRSS:")[1].split()[0])
                print(
                    f"directory: {args.callers} callers; config load {load_s:.2f} s; "
                    f"gateway ready in {start_s:.2f} s; RSS {rss_kb // 1024} MiB"
                )
                print()
                print("| protocol | requests | concurrency | req/s | p50 ms | p99 ms | max ms |")
                print("|---|---|---|---|---|---|---|", flush=True)
                for kind in kinds:
                    for concurrency in concurrencies:
                        if args.warmup:
                            asyncio.run(run(port, kind, args.warmup, concurrency, args.callers, call_ids))
                        began = time.perf_counter()
                        lat = asyncio.run(run(port, kind, args.requests, concurrency, args.callers, call_ids))
                        took = time.perf_counter() - began
                        print(
                            f"| {kind} | {args.requests} | {concurrency} | {args.requests / took:,.0f} | "
                            f"{pct(lat, 0.5):.2f} | {pct(lat, 0.99):.2f} | {max(lat) * 1000:.2f} |",
                            flush=True,
                        )
        finally:
            # A second Ctrl-C must not cut the clean-up short: the gateway stops first (it writes no
            # more keys then), and the run's keys go.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if proc is not None:
                stop(proc)
            if args.redis:
                clean_up(args.redis, prefix)
            if args.gateway_log:
                shutil.copyfile(log_path, args.gateway_log)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)  # cleaned up on the way out; the traceback says nothing more
