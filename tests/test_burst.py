"""Bursts of real calls on real gateways and a real Redis (SPEC sections 5 and 8): a burst is never
taken for an outage, round-robin stays strict, and each call gets exactly one answer."""

from __future__ import annotations

import asyncio
import collections
import json
import re
import uuid

import pytest

pytestmark = pytest.mark.e2e

POOL = ["100", "101", "102", "103", "104"]


def config(redis_url: str, weights: list[int] | None = None) -> str:
    # The shipped defaults of [store] and [server], but for the key prefix.
    strategy = f'"weighted"\nweights = {weights!r}' if weights else '"round_robin"'
    return f"""
[store]
redis_url = "{redis_url}"
key_prefix = "b{uuid.uuid4().hex[:8]}:"

[eml]
retry_window_s = 600

[services.Sales]
numbers = {POOL!r}
strategy = {strategy}
"""


async def _post_all(calls: list[tuple[str, str]]) -> list[tuple[int, dict]]:
    """POST every (gateway URL, callID) at the same moment: each on a connection of its own, all
    opened first, then every request written at once. (A client that opens its connections as it goes,
    as httpx does, spreads 500 calls over seconds, and the gateway never sees them together.)"""
    opened = 0
    all_open = asyncio.Event()
    go = asyncio.Event()

    async def one(url: str, call_id: str) -> tuple[int, dict]:
        nonlocal opened
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            opened += 1
            if opened == len(calls):
                all_open.set()
            await go.wait()
            body = json.dumps({"callID": call_id, "rclassification": "Sales", "callTime": "1"}).encode()
            head = f"POST /call/request HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            status_line, _, headers = (await reader.readuntil(b"\r\n\r\n")).partition(b"\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", headers).group(1))
            return int(status_line.split()[1]), json.loads(await reader.readexactly(length))
        finally:
            writer.close()

    async def run() -> list[tuple[int, dict]]:
        tasks = [asyncio.ensure_future(one(url, call_id)) for url, call_id in calls]
        await asyncio.wait(
            [asyncio.ensure_future(all_open.wait()), *tasks], return_when=asyncio.FIRST_COMPLETED
        )
        go.set()
        return await asyncio.gather(*tasks)

    return await asyncio.wait_for(run(), 60)


def burst(gateways, per_gateway: int, weights: list[int] | None = None) -> None:
    """``per_gateway`` distinct new calls on each gateway at once; then each retried on another one.
    The pool's split must be exact: equal, or as ``weights`` (the calls make whole cycles)."""
    tag = uuid.uuid4().hex[:8]
    calls = [(gw.url, f"{tag}-{i}-{n}") for n in range(per_gateway) for i, gw in enumerate(gateways)]
    first = asyncio.run(_post_all(calls))
    retries = [(gateways[(i + 1) % len(gateways)].url, c) for i, (_, c) in enumerate(calls)]
    again = asyncio.run(_post_all(retries))

    logs = "".join(gw.logs() for gw in gateways)
    assert '"event":"store degraded"' not in logs
    fallbacks = collections.Counter(re.findall(r'"fallback":"(\w+)"', logs))
    assert not fallbacks, fallbacks  # none answered at the deadline, or without the store
    assert [status for status, _ in first + again] == [201] * (2 * len(calls))
    answers = [body for _, body in first]
    assert all(a["success"] for a in answers)
    # Strict round-robin: each number of the pool got its equal share (its weight's share).
    split = collections.Counter(a["number"] for a in answers)
    weights = weights or [1] * len(POOL)
    assert split == {n: len(calls) * w // sum(weights) for n, w in zip(POOL, weights, strict=True)}, split
    assert len({a["mqID"] for a in answers}) == len(calls)
    # A retry, on another replica where there are two, gets the first answer: same number, same mqID.
    for (_, call_id), a, (_, b) in zip(calls, answers, again, strict=True):
        assert a["callID"] == b["callID"] == call_id
        assert (b["number"], b["mqID"]) == (a["number"], a["mqID"]), call_id


@pytest.mark.timeout(120)
def test_burst_of_new_calls_on_one_replica(start_gateway, redis_server):
    burst([start_gateway(config(redis_server.url))], 500)


@pytest.mark.timeout(120)
def test_burst_of_new_calls_on_two_replicas(start_gateway, redis_server):
    text = config(redis_server.url)
    burst([start_gateway(text), start_gateway(text)], 250)


@pytest.mark.timeout(120)
def test_burst_of_new_calls_on_a_weighted_pool_on_two_replicas(start_gateway, redis_server):
    # 500 calls at once, 50 whole cycles of weights 4, 3, 1, 1, 1: the split is exact.
    weights = [4, 3, 1, 1, 1]
    text = config(redis_server.url, weights)
    burst([start_gateway(text), start_gateway(text)], 250, weights)
