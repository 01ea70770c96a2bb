"""Many replicas on one Redis behave as one; Redis failing fails no webhook."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import httpx
import pytest

pytestmark = pytest.mark.e2e

ORDER = ["100", "101", "102"]


def config(store: str) -> str:
    return f"""
[store]
{store}
key_prefix = "t{uuid.uuid4().hex[:8]}:"
timeout_ms = 100
retry_after_s = 0.3

[eml]
retry_window_s = 600

[services.Sales]
numbers = {ORDER!r}
strategy = "round_robin"

[services.GOTOSUPPORT]
numbers = ["5032505555"]

[callers."+358501231234"]
tags = ["vip"]

[[rules]]
name = "vip"
when = {{ tag = "vip" }}
then = {{ target = "VIP", extra_priority = 100 }}
"""


def redis_config(url: str) -> str:
    return config(f'redis_url = "{url}"')


def eml(gw, call_id, rc="Sales"):
    r = gw.eml({"callID": call_id, "rclassification": rc, "callTime": "1"})
    assert r.status_code == 201, r.text
    return r.json()


def assert_rotation(numbers):
    start = ORDER.index(numbers[0])
    assert numbers == [ORDER[(start + i) % 3] for i in range(len(numbers))]


@pytest.fixture(params=["redis", "cluster"])
def shared_url(request):
    if request.param == "redis":
        return f'redis_url = "{request.getfixturevalue("redis_server").url}"'
    return f'redis_url = "{request.getfixturevalue("cluster").url}"\ncluster = true'


def test_round_robin_is_strict_across_replicas(start_gateway, shared_url):
    text = config(shared_url)
    a, b = start_gateway(text), start_gateway(text)
    numbers = [eml((a, b)[i % 2], f"rr-{i}")["number"] for i in range(9)]
    assert_rotation(numbers)


def test_retry_on_the_other_replica_gets_the_first_answer(start_gateway, shared_url):
    text = config(shared_url)
    a, b = start_gateway(text), start_gateway(text)
    first = eml(a, "call-1")
    assert eml(b, "call-1") == first
    assert eml(a, "call-1") == first
    nxt = eml(b, "call-2")["number"]
    assert nxt == ORDER[(ORDER.index(first["number"]) + 1) % 3]


def test_fifty_identical_requests_across_two_processes_allocate_once(start_gateway, redis_server):
    text = redis_config(redis_server.url)
    a, b = start_gateway(text), start_gateway(text)
    body = {"callID": "burst-1", "rclassification": "Sales", "callTime": "1"}

    async def burst():
        async with httpx.AsyncClient(timeout=10) as client:
            return await asyncio.gather(
                *(client.post(f"{(a, b)[i % 2].url}/call/request", json=body) for i in range(50))
            )

    answers = asyncio.run(burst())
    assert {r.status_code for r in answers} == {201}
    assert len({(r.json()["number"], r.json()["mqID"]) for r in answers}) == 1
    prefix = text.split('key_prefix = "')[1].split('"')[0]
    assert redis_server.client().get(f"{prefix}rr:Sales") == b"1"


def test_workers_share_state_through_redis(start_gateway, redis_server):
    gw = start_gateway(redis_config(redis_server.url), "--workers", "2")
    numbers = [eml(gw, f"w-{i}")["number"] for i in range(12)]
    assert_rotation(numbers)
    # Both workers started, and both answered.
    deadline = time.monotonic() + 5
    while gw.logs().count('"event":"worker started"') < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gw.logs().count('"event":"worker started"') == 2


def test_sentinel(start_gateway, sentinel):
    text = config(f'sentinels = ["127.0.0.1:{sentinel.port}"]\nsentinel_master = "mymaster"')
    a, b = start_gateway(text), start_gateway(text)
    numbers = [eml((a, b)[i % 2], f"s-{i}")["number"] for i in range(6)]
    assert_rotation(numbers)
    assert a.client.get("/readyz").json()["dependencies"]["store"] == "ok"


def test_redis_killed_mid_traffic(start_gateway, own_redis):
    gw = start_gateway(redis_config(own_redis.url))
    results: list[tuple[int, float]] = []
    stop = threading.Event()

    def traffic():
        with httpx.Client(base_url=gw.url, timeout=5) as client:
            i = 0
            while not stop.is_set():
                t = time.perf_counter()
                if i % 2:
                    r = client.post("/smartrouting", json={"anum": "+358501231234"})
                    ok = r.status_code == 200 and r.json() == {"InitialTarget": "VIP", "ExtraPriority": 100}
                else:
                    r = client.post(
                        "/call/request",
                        json={"callID": f"k-{i}", "rclassification": "Sales", "callTime": "1"},
                    )
                    ok = r.status_code == 201 and r.json()["success"] is True
                results.append((ok, time.perf_counter() - t))
                i += 1

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        time.sleep(0.5)
        own_redis.kill()
        time.sleep(1.0)
        ready = gw.client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["status"] == "degraded" and ready.json()["degraded"] == ["redis"]
        own_redis.start()
        deadline = time.monotonic() + 5
        while gw.client.get("/readyz").json()["status"] != "ok" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gw.client.get("/readyz").json()["dependencies"]["store"] == "ok"
        time.sleep(0.3)
    finally:
        stop.set()
        worker.join()
    assert len(results) > 50
    assert all(ok for ok, _ in results), [r for r in results if not r[0]][:3]
    worst = max(latency for _, latency in results)
    # About two Redis timeouts (100 ms each: the call, then the ping that confirms the outage) at most,
    # plus the request itself; far from the seconds a call would wait on a dead Redis otherwise.
    assert worst < 1.5, worst
    # Back on Redis: the round-robin position lives there again.
    prefix = gw.config.read_text().split('key_prefix = "')[1].split('"')[0]
    assert int(own_redis.client().get(f"{prefix}rr:Sales")) >= 1


def test_deadline_answers_while_redis_hangs(start_gateway, own_redis):
    # Redis holding every command (CLIENT PAUSE) longer than the deadline; a call to each protocol at
    # once. Each Redis call may take 250 ms of the 300 ms deadline, and then Redis is asked (a ping,
    # which hangs too) whether it is down: the deadline is what answers, for both protocols, and on
    # time. Redis is then found down, and the next call is answered in process at once.
    text = (
        redis_config(own_redis.url).replace("timeout_ms = 100", "timeout_ms = 250")
        + """
[server]
deadline_ms = 300

[[rules]]
name = "pool"
when = { protocol = "smartrouting", service = "POOL" }
then = { service = "Sales", extra_priority = 1 }
"""
    )
    gw = start_gateway(text)
    own_redis.client().execute_command("CLIENT", "PAUSE", "4000")

    async def both():
        async with httpx.AsyncClient(base_url=gw.url, timeout=5) as client:

            async def timed(path, body):
                began = time.perf_counter()
                return await client.post(path, json=body), time.perf_counter() - began

            return await asyncio.gather(
                timed("/call/request", {"callID": "slow-1", "rclassification": "Sales", "callTime": "1"}),
                timed("/smartrouting", {"anum": "+3584", "targetid": "POOL"}),
            )

    (r, eml_took), (s, sr_took) = asyncio.run(both())
    assert r.status_code == 201 and r.json()["number"] in ORDER and r.json()["success"] is True
    assert s.status_code == 204
    # Redis holds them for 4 s: answered by the deadline (300 ms), with room for a loaded machine.
    assert eml_took < 2.0 and sr_took < 2.0, (eml_took, sr_took)
    deadline = time.monotonic() + 5  # lines are written behind the answer
    while '"fallback":"deadline"' not in gw.logs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert '"fallback":"deadline"' in gw.logs()
    metrics = gw.client.get("/metrics").text
    assert 'routing_fallbacks_total{reason="deadline"} 2.0' in metrics
    # Found down (Redis still paused): readiness says so, and the in-process store answers.
    deadline = time.monotonic() + 5
    while '"event":"store degraded"' not in gw.logs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert '"event":"store degraded"' in gw.logs()
    assert gw.client.get("/readyz").json()["status"] == "degraded"
    began = time.perf_counter()
    r = gw.eml({"callID": "slow-2", "rclassification": "Sales", "callTime": "1"})
    assert r.status_code == 201 and r.json()["success"] is True
    # In process, not by the deadline (the counter stays at 2), and without waiting on the paused Redis.
    assert time.perf_counter() - began < 1.0
    assert 'routing_fallbacks_total{reason="deadline"} 2.0' in gw.client.get("/metrics").text
