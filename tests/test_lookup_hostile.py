"""CRM lookups under hostile input and a misbehaving CRM: only phone numbers are looked up, only the CRM's
own failures count toward its breaker, nothing escapes as a 500, one request per new number however the
store's answers interleave, and a reload keeps the breaker and abandons the old lookup's requests."""

from __future__ import annotations

import asyncio
import queue
import random
import signal
import socket
import threading
import time
import uuid

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from core.lookup import MAX_BODY, Cached, CrmLookup, LookupConfig, _encode
from core.numbers import PHONE_MAX, is_phone_number, normalise
from core.store import MemoryStore

VIP_NUMBER = "+46701234567"


# ---------------------------------------------------------------- the number predicate


@given(st.text())
def test_only_short_digit_strings_are_phone_numbers(text):
    n = normalise(text)
    if is_phone_number(n):
        digits = n.removeprefix("+")
        assert 3 <= len(digits) <= 20 and len(n) <= PHONE_MAX
        assert all(c in "0123456789" for c in digits)


@pytest.mark.parametrize(
    "number, ok",
    [
        ("+358501231234", True),
        ("123", True),
        ("+" + "9" * 20, True),
        ("9" * 20, True),
        ("12", False),
        ("+12", False),
        ("+" + "9" * 21, False),
        ("9" * 70000, False),
        ("abc", False),
        ("+", False),
        ("", False),
        ("١٢٣٤", False),
        ("１２３４", False),
        ("123\n", False),
        ("1+23", False),
        ("++123", False),
    ],
)
def test_phone_number_examples(number, ok):
    assert is_phone_number(number) is ok


# ---------------------------------------------------------------- the lookup against a real local CRM

# mode: (result, counts toward the breaker, cached)
OUTCOMES = {
    "vip": ("miss", False, True),
    "missing": ("not_found", False, True),
    "400": ("rejected", False, False),
    "403": ("rejected", False, False),
    "429": ("rejected", False, False),
    "500": ("failed", True, False),
    "503": ("failed", True, False),
    "garbage": ("failed", True, False),
    "array": ("failed", True, False),
    "latin1": ("failed", True, False),
    "huge": ("failed", True, False),
    "gzip": ("failed", True, False),
    "endless": ("failed", True, False),
    "slow": ("timeout", True, False),
}


@pytest.mark.anyio
@pytest.mark.parametrize("mode", list(OUTCOMES))
async def test_each_crm_answer_is_a_result_and_only_crm_failures_count(crm, mode):
    result, counts, cached = OUTCOMES[mode]
    crm.modes["+4671"] = mode
    seen = []
    cfg = LookupConfig(url=crm.url, timeout_ms=1000, failures_to_open=1, open_s=60)
    async with httpx.AsyncClient() as http:
        lookup = CrmLookup(cfg, MemoryStore(), http, lambda r, s: seen.append(r))
        found, how = await lookup.lookup("+4671", 3.0)
        assert how == result
        assert (found is not None) == (mode == "vip")
        # One failure opens it (failures_to_open = 1); a caller out of time may return before the
        # request's own timeout ends it.
        end = time.monotonic() + 3
        while counts and lookup.breaker.allows() and time.monotonic() < end:
            await asyncio.sleep(0.01)
        assert lookup.breaker.allows() is not counts
        if not counts:
            again = await lookup.lookup("+4671", 3.0)
            assert again[1] == ("hit" if cached else result)
            assert crm.hits["+4671"] == (1 if cached else 2)
    assert sorted(seen[:2]) == sorted(["request", result])


@pytest.mark.anyio
async def test_a_bounded_read_stops_an_endless_answer_at_once(crm):
    # Read no more than 64 KiB, without waiting for the rest: a failure well before the timeout, and the
    # connection closed under the CRM's feet.
    crm.modes["+4672"] = "endless"
    async with httpx.AsyncClient() as http:
        lookup = CrmLookup(LookupConfig(url=crm.url, timeout_ms=4500), MemoryStore(), http)
        began = time.perf_counter()
        assert (await lookup.lookup("+4672", 10.0))[1] == "failed"
        assert time.perf_counter() - began < 3.0  # the timeout is 4.5 s
    assert wait_for(lambda: crm.dropped["+4672"] == 1)
    assert MAX_BODY == 64 * 1024


@pytest.mark.anyio
async def test_a_refused_connection_counts(crm):
    cfg = LookupConfig(url="http://127.0.0.1:9/callers/{caller}", failures_to_open=2)
    async with httpx.AsyncClient() as http:
        lookup = CrmLookup(cfg, MemoryStore(), http)
        assert (await lookup.lookup("+4673", 2.0))[1] == "failed"
        assert lookup.breaker.allows()
        assert (await lookup.lookup("+4674", 2.0))[1] == "failed"
        assert (await lookup.lookup("+4675", 2.0))[1] == "open"


JUNK = [
    "abc",
    "x" * 30000,
    "9" * 70000,
    "12",
    "+1234567890123456789012",
    "１２３４",
    "+46 70 abc",
    "0046<script>",
]


@pytest.mark.anyio
async def test_what_cannot_be_a_phone_number_is_never_looked_up(crm):
    seen = []
    cfg = LookupConfig(url=crm.url, failures_to_open=1)
    async with httpx.AsyncClient() as http:
        lookup = CrmLookup(cfg, MemoryStore(), http, lambda r, s: seen.append(r))
        for junk in JUNK:
            assert await lookup.lookup(normalise(junk), 2.0) == (None, "skipped")
    assert sum(crm.hits.values()) == 0
    assert seen == ["skipped"] * len(JUNK)


@pytest.mark.anyio
async def test_rejections_never_open_the_breaker(crm):
    cfg = LookupConfig(url=crm.url, failures_to_open=2)
    crm.modes["+4676"] = "vip"
    async with httpx.AsyncClient() as http:
        lookup = CrmLookup(cfg, MemoryStore(), http)
        for i in range(20):
            crm.modes[f"+46770{i:02d}"] = "400"
            assert (await lookup.lookup(f"+46770{i:02d}", 2.0))[1] == "rejected"
        found, how = await lookup.lookup("+4676", 2.0)
    assert how == "miss" and "vip" in found.tags


@pytest.mark.anyio
async def test_close_lets_waiting_callers_go_on_at_once(crm):
    crm.modes["+4678"] = "hold"
    async with httpx.AsyncClient() as http:
        lookup = CrmLookup(LookupConfig(url=crm.url, timeout_ms=4500), MemoryStore(), http)
        waiting = [asyncio.create_task(lookup.lookup("+4678", 10.0)) for _ in range(3)]
        while crm.hits["+4678"] == 0:
            await asyncio.sleep(0.01)
        lookup.close()
        # Without close they would wait the 4.5 s timeout.
        done = await asyncio.wait_for(asyncio.gather(*waiting), 2.0)
        assert done == [(None, "abandoned")] * 3
        assert await lookup.lookup("+4678", 10.0) == (None, "abandoned")  # nothing new starts
    assert wait_for(lambda: crm.dropped["+4678"] == 1)
    assert crm.hits["+4678"] == 1


@pytest.mark.anyio
async def test_a_stale_entry_is_answered_at_once_while_one_refresh_runs(crm):
    crm.modes["+4681"] = "hold"
    store = MemoryStore()
    await store.set("lookup:+4681", _encode(Cached(True, time.time() - 1, ["vip"])), 60)
    cfg = LookupConfig(url=crm.url, ttl_s=60, stale_s=60, timeout_ms=4500)
    async with httpx.AsyncClient() as http:
        lookup = CrmLookup(cfg, store, http)
        answers = await asyncio.wait_for(
            asyncio.gather(*(lookup.lookup("+4681", 10.0) for _ in range(20))), 2.0
        )
        assert {how for _, how in answers} == {"stale"}
        assert all("vip" in found.tags for found, _ in answers)
        while crm.hits["+4681"] == 0:  # the refresh, held by the CRM
            await asyncio.sleep(0.01)
        crm.release()
        while (await lookup.lookup("+4681", 10.0))[1] != "hit":
            await asyncio.sleep(0.01)
    assert crm.hits["+4681"] == 1


@pytest.mark.anyio
async def test_the_breaker_is_handed_over_only_to_the_same_crm(crm):
    crm.modes["+4679"] = "500"
    crm.modes["+4680"] = "vip"
    cfg = LookupConfig(url=crm.url, failures_to_open=2, open_s=60)
    async with httpx.AsyncClient() as http:
        first = CrmLookup(cfg, MemoryStore(), http)
        assert (await first.lookup("+4679", 2.0))[1] == "failed"
        second = CrmLookup(cfg, MemoryStore(), http, previous=first)
        first.close()
        assert (await second.lookup("+4679", 2.0))[1] == "failed"  # the second failure in a row: open
        third = CrmLookup(cfg, MemoryStore(), http, previous=second)
        assert (await third.lookup("+4680", 2.0))[1] == "open"
        other = LookupConfig(url=crm.url + "?crm=2", failures_to_open=2)
        fourth = CrmLookup(other, MemoryStore(), http, previous=third)
        assert (await fourth.lookup("+4680", 2.0))[1] == "miss"
    assert crm.hits["+4679"] == 2 and crm.hits["+4680"] == 1


# ---------------------------------------------------------------- through a real gateway


def config(
    crm_url: str, store: str = "", server: str = "deadline_ms = 1500", prefix: str = "", **lookup
) -> str:
    options = {
        "ttl_s": 60,
        "negative_ttl_s": 60,
        "timeout_ms": 800,
        "failures_to_open": 3,
        "open_s": 60,
        **lookup,
    }
    lines = "\n".join(f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in options.items())
    prefix = prefix or f"h{uuid.uuid4().hex[:8]}:"
    return f"""
[server]
{server}

[store]
{store}
key_prefix = "{prefix}"

[lookup]
url = "{crm_url}"
{lines}

[callers."+358501231234"]
tags = ["directory-vip"]

[[rules]]
name = "crm-vip"
when = {{ tag = "vip" }}
then = {{ target = "VIP_QUEUE" }}

[[rules]]
name = "directory-vip"
when = {{ tag = "directory-vip" }}
then = {{ target = "DIR_VIP" }}
"""


def call(gw, anum):
    return gw.client.post("/smartrouting", json={"anum": anum, "bnum": "+3581", "targetid": "Q"})


def lookups(gw) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(gw.client.get("/metrics").text):
        for s in family.samples:
            if s.name == "routing_lookups_total":
                out[s.labels["result"]] = s.value
    return out


def wait_for(predicate, timeout=10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.e2e
def test_junk_callers_never_open_the_breaker(start_gateway, crm):
    crm.modes[VIP_NUMBER] = "vip"
    gw = start_gateway(config(crm.url))
    for junk in JUNK:
        r = call(gw, junk)
        assert r.status_code == 204, (len(junk), r.status_code, r.text[:200])
    for i in range(6):  # numbers that the CRM refuses (400): its answer, not its failure
        crm.modes[f"+4670000{i:04d}"] = "400"
        assert call(gw, f"+4670000{i:04d}").status_code == 204
    assert call(gw, VIP_NUMBER).json() == {"InitialTarget": "VIP_QUEUE"}
    assert not any(junk in crm.hits for junk in JUNK)
    counted = lookups(gw)
    assert counted["skipped"] == len(JUNK) and counted["rejected"] == 6 and counted.get("failed", 0) == 0
    assert "lookup breaker open" not in gw.logs()


@pytest.mark.e2e
def test_lookup_keys_stay_small_whatever_the_caller_sends(start_gateway, crm, redis_server):
    prefix = f"k{uuid.uuid4().hex[:8]}:"
    gw = start_gateway(config(crm.url, store=f'redis_url = "{redis_server.url}"', prefix=prefix))
    for anum in ("9" * 30000, "9" * 21, "+" + "9" * 25, "1-2" * 5000, "+46700000401"):
        assert call(gw, anum).status_code == 204
    keys = redis_server.client().keys(f"{prefix}*")
    assert [k.decode() for k in keys if b"lookup:" in k] == [f"{prefix}lookup:+46700000401"]
    assert crm.hits["+46700000401"] == 1 and sum(crm.hits.values()) == 1


@pytest.mark.e2e
def test_a_crm_answer_that_is_not_utf8_is_a_counted_failure(start_gateway, crm):
    crm.modes["+358501231234"] = "latin1"
    crm.modes["+46700000001"] = "latin1"
    gw = start_gateway(config(crm.url))
    assert call(gw, "+358501231234").json() == {"InitialTarget": "DIR_VIP"}
    assert call(gw, "+46700000001").status_code == 204
    assert call(gw, "+46700000001").status_code == 204  # not cached: asked again, still no error
    assert crm.hits["+46700000001"] == 2
    assert lookups(gw)["failed"] == 3
    assert wait_for(lambda: '"event":"lookup breaker open"' in gw.logs())


@pytest.mark.e2e
def test_the_breaker_opens_and_closes_in_the_log_without_numbers(start_gateway, crm):
    gw = start_gateway(config(crm.url, open_s=0.5))
    for i in range(3):
        crm.modes[f"+4670000100{i}"] = "500"
        assert call(gw, f"+4670000100{i}").status_code == 204
    assert wait_for(lambda: '"event":"lookup breaker open"' in gw.logs())
    line = next(x for x in gw.logs().splitlines() if '"lookup breaker open"' in x)
    assert '"failures":3' in line and '"open_s":0.5' in line
    crm.modes[VIP_NUMBER] = "vip"
    assert wait_for(lambda: call(gw, VIP_NUMBER).status_code == 200)
    assert wait_for(lambda: '"event":"lookup breaker closed"' in gw.logs())
    for number in ("4670000100", VIP_NUMBER.lstrip("+")):
        assert number not in gw.logs()


@pytest.mark.e2e
def test_a_reload_keeps_the_breaker_of_the_same_crm_and_resets_it_for_another(start_gateway, crm):
    gw = start_gateway(config(crm.url))
    for i in range(3):
        crm.modes[f"+4670000200{i}"] = "500"
        call(gw, f"+4670000200{i}")
    assert wait_for(lambda: '"event":"lookup breaker open"' in gw.logs())
    crm.modes[VIP_NUMBER] = "vip"
    assert call(gw, VIP_NUMBER).status_code == 204  # open: the CRM is not asked
    gw.config.write_text(config(crm.url) + "\n# another version, the same CRM\n")
    gw.signal(signal.SIGHUP)
    assert wait_for(lambda: gw.logs().count('"event":"reloaded"') == 1)
    assert call(gw, VIP_NUMBER).status_code == 204  # still open after the reload
    assert crm.hits[VIP_NUMBER] == 0
    gw.config.write_text(config(crm.url + "?crm=2"))
    gw.signal(signal.SIGHUP)
    assert wait_for(lambda: gw.logs().count('"event":"reloaded"') == 2)
    assert call(gw, VIP_NUMBER).json() == {"InitialTarget": "VIP_QUEUE"}  # another CRM: asked at once
    assert crm.hits[VIP_NUMBER] == 1


@pytest.mark.e2e
def test_a_reload_abandons_the_old_lookups_requests(start_gateway, crm):
    crm.modes["+46700000301"] = "hold"
    gw = start_gateway(config(crm.url, timeout_ms=4400, server="deadline_ms = 4500"))
    answers = []
    caller = threading.Thread(target=lambda: answers.append(call(gw, "+46700000301")))
    caller.start()
    assert wait_for(lambda: crm.hits["+46700000301"] == 1)
    gw.config.write_text(config(crm.url, timeout_ms=4400, server="deadline_ms = 4500") + "\n# changed\n")
    sent = time.monotonic()
    gw.signal(signal.SIGHUP)
    caller.join(10)
    # Without the reload the call would wait 4.4 s for the CRM.
    assert time.monotonic() - sent < 2.5
    assert answers[0].status_code == 204
    assert wait_for(lambda: crm.dropped["+46700000301"] == 1)
    assert lookups(gw)["abandoned"] == 1
    assert "Traceback" not in gw.logs()


class JitterLink:
    """A real TCP link to a local port whose answers (server to client) each arrive 0 to ``max_delay_s``
    late, in order on each connection: replies on different connections overtake one another, as they
    do over a real network."""

    def __init__(self, port: int, max_delay_s: float = 0.01) -> None:
        self.target = port
        self.max_delay = max_delay_s
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            late: queue.Queue = queue.Queue()
            threading.Thread(target=self._forward, args=(client, server), daemon=True).start()
            threading.Thread(target=self._hold, args=(server, late), daemon=True).start()
            threading.Thread(target=self._deliver, args=(late, client), daemon=True).start()

    @staticmethod
    def _forward(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        dst.close()

    def _hold(self, src: socket.socket, late: queue.Queue) -> None:
        due = 0.0
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            due = max(due, time.monotonic() + random.random() * self.max_delay)
            late.put((due, data))
            if not data:
                return

    @staticmethod
    def _deliver(late: queue.Queue, dst: socket.socket) -> None:
        while True:
            due, data = late.get()
            time.sleep(max(0.0, due - time.monotonic()))
            try:
                if not data:
                    dst.close()
                    return
                dst.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.listener.close()


@pytest.mark.e2e
def test_twenty_concurrent_first_calls_make_one_request_over_a_jittery_redis(
    start_gateway, crm, redis_server
):
    # Without a flight covering the store read, a caller whose read left before the first caller's write
    # and came back after its flight ended asks the CRM again; over this link that happens most rounds.
    link = JitterLink(redis_server.port)
    try:
        store = f'redis_url = "redis://127.0.0.1:{link.port}/0"\ntimeout_ms = 500'
        gw = start_gateway(config(crm.url, store=store))

        async def burst(number):
            async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:

                async def one():
                    await asyncio.sleep(random.random() * 0.01)
                    return await client.post("/smartrouting", json={"anum": number})

                return await asyncio.gather(*(one() for _ in range(20)))

        numbers = [f"+4670{random.randrange(10**8):08d}" for _ in range(20)]
        for number in numbers:
            crm.modes[number] = "vip"
            answers = asyncio.run(burst(number))
            assert [r.status_code for r in answers] == [200] * 20
        assert {n: crm.hits[n] for n in numbers} == dict.fromkeys(numbers, 1)
        assert "store degraded" not in gw.logs()
    finally:
        link.close()
