"""External caller lookups (a CRM): within the deadline, cached in the store, one request at a time
per caller, and never again for a while once the CRM keeps failing.

Only numbers that can be phone numbers are looked up (others are ``skipped``). A 200 with a JSON object
is a found caller, 404 is "not found"; another 4xx is ``rejected``: the CRM refused this number, which
says nothing of its health. Anything else (a 5xx or another status, a body that is not a JSON object,
over 64 KiB or not UTF-8, a refused connection, a timeout) is a failure of the CRM itself and counts
toward its circuit breaker. Neither a rejection nor a failure is cached; each is counted and the
decision goes on without it. No error of the lookup ever reaches the caller.

A found or not-found answer, read from the store or from the CRM, is also kept in process for
``near_cache_s`` (never past its own freshness), so that a caller calling again meanwhile costs no
store round trip; it counts as a ``hit``. Other replicas, and whoever changes the store's entry, are
seen once that time is up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import msgspec

from core.directory import CallerInfo, as_text
from core.errors import StoreError
from core.numbers import is_phone_number
from core.store import Store

log = logging.getLogger("routing_gateway")


class LookupConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[lookup]``."""

    url: str
    headers: dict[str, str] = {}
    timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=4500)] = 800
    ttl_s: Annotated[int, msgspec.Meta(ge=1, le=30 * 86400)] = 3600
    negative_ttl_s: Annotated[int, msgspec.Meta(ge=0, le=30 * 86400)] = 300
    stale_s: Annotated[int, msgspec.Meta(ge=0, le=30 * 86400)] = 0
    tags_field: str = "tags"
    attributes: list[str] = []
    failures_to_open: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 5
    open_s: Annotated[float, msgspec.Meta(ge=0.1, le=3600)] = 30.0
    near_cache_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 10.0


class Cached(msgspec.Struct, array_like=True):
    """A lookup answer in the store: found or not, and until when it is fresh (epoch seconds)."""

    found: bool
    fresh_until: float
    tags: list[str] = []
    attributes: dict[str, str] = {}


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Cached).decode

# What is left of the deadline after a lookup gives up: enough to match rules and answer.
RESERVE_S = 0.05

MAX_BODY = 64 * 1024
"""The largest CRM answer read; a longer one is a failure of the CRM and is not read further."""

MAX_REQUESTS = 64
"""CRM requests under way at once per lookup, below the HTTP client's pool (100), so that waiting for
a connection happens here, where it is not blamed on the CRM."""

Observer = Callable[[str, float | None], None]
"""Called with each lookup's result (``hit``, ``stale``, ``miss``, ``not_found``, ``rejected``,
``failed``, ``timeout``, ``open``, ``skipped``, ``abandoned``) and, with ``request``, the duration in
seconds of each request made to the CRM."""

Answer = tuple[Cached | None, str]

NEAR_MAX = 4096
"""Most answers kept in process per lookup (about 650 bytes each); the least recently used goes first."""

Near = tuple[float, CallerInfo | None]
"""An answer kept in process: until when (``time.monotonic``), and the caller it found, if any."""


def _ignore(result: str, seconds: float | None) -> None:
    return None


class Breaker:
    """The CRM's circuit breaker. After ``failures_to_open`` failures of the CRM in a row, no request
    is sent for ``open_s``; then requests go again, and the next failure opens it again at once while a
    success closes it. A reload hands it to the next lookup while the URL stays the same."""

    def __init__(self, failures_to_open: int, open_s: float) -> None:
        self.failures_to_open = failures_to_open
        self.open_s = open_s
        self.failures = 0
        self.open_until = 0.0
        self.opened = False

    def allows(self) -> bool:
        return time.monotonic() >= self.open_until

    def failed(self) -> None:
        self.failures += 1
        # A request sent before it opened and failing after does not hold it open longer.
        if self.failures >= self.failures_to_open and self.allows():
            self.open_until = time.monotonic() + self.open_s
            self.opened = True
            log.warning(
                "lookup breaker open",
                extra={"fields": {"dependency": "lookup", "failures": self.failures, "open_s": self.open_s}},
            )

    def succeeded(self) -> None:
        self.failures = 0
        if self.opened:
            self.opened = False
            self.open_until = 0.0
            log.warning("lookup breaker closed", extra={"fields": {"dependency": "lookup"}})


class _Flight:
    """One number's lookup under way in this process: the store read, then when needed the CRM request
    and the cache write. It is joinable from before the store read until after the cache write, so a
    caller either joins it, or finds its answer kept in process, or reads the store after that write:
    never none of them. ``answer`` is set as soon as an answer is known (a stale entry is answered
    before its refresh)."""

    __slots__ = ("answer", "task")

    def __init__(self, answer: asyncio.Future[Answer]) -> None:
        self.answer = answer
        self.task: asyncio.Task[None] | None = None

    def say(self, entry: Cached | None, result: str) -> None:
        if not self.answer.done():
            self.answer.set_result((entry, result))


class CrmLookup:
    """:class:`core.decide.CallerLookup` against an HTTP CRM."""

    def __init__(
        self,
        cfg: LookupConfig,
        store: Store,
        client: httpx.AsyncClient,
        observe: Observer = _ignore,
        previous: CrmLookup | None = None,
    ):
        self.cfg = cfg
        self._store = store
        self._client = client
        self._observe = observe
        self._flights: dict[str, _Flight] = {}
        self._slots = asyncio.Semaphore(MAX_REQUESTS)
        self._closed = False
        self._timeout = cfg.timeout_ms / 1000
        # Compressed answers are not read: their size is not what arrives.
        self._headers = {k: v for k, v in cfg.headers.items() if k.lower() != "accept-encoding"}
        self._headers["Accept-Encoding"] = "identity"
        if previous is not None and previous.cfg.url == cfg.url:
            # The same CRM: what it did still counts, so a reload never sends traffic straight back
            # to a CRM that is failing. Both lookups share the breaker until the old one is closed.
            self.breaker = previous.breaker
            self.breaker.failures_to_open = cfg.failures_to_open
            self.breaker.open_s = cfg.open_s
        else:
            self.breaker = Breaker(cfg.failures_to_open, cfg.open_s)
        self._near_s = cfg.near_cache_s
        if previous is not None and previous.cfg == cfg and previous._store is store:
            # The same settings and store: what it kept is what this one would have read, so a reload
            # does not send every caller back to the store at once. Shared until the old one closes.
            self._near: OrderedDict[str, Near] = previous._near
        else:
            self._near = OrderedDict()

    def close(self) -> None:
        """Abandon requests under way (at shutdown or when a reload replaces this lookup): whoever waits
        on them goes on without them at once, and later lookups through this one are abandoned too."""
        self._closed = True
        self._near = OrderedDict()  # a new one: a lookup it was handed over to keeps the old
        for flight in list(self._flights.values()):
            flight.say(None, "abandoned")
            if flight.task is not None:
                flight.task.cancel()

    async def find(self, number: str, budget_s: float) -> CallerInfo | None:
        """As :meth:`lookup`, without the result's name. What it answers may be shared with other
        callers: it is read, never changed."""
        # The hot path, a caller seen within near_cache_s, without a second coroutine. Only phone
        # numbers are ever kept, so no other check is due first.
        near = self._near.get(number)
        if near is not None and near[0] > time.monotonic():
            self._near.move_to_end(number)
            self._observe("hit", None)
            return near[1]
        return (await self.lookup(number, budget_s))[0]

    async def lookup(self, number: str, budget_s: float) -> tuple[CallerInfo | None, str]:
        """What the CRM says of ``number`` (normalised) and how it was known: ``hit``, ``stale``,
        ``miss``, ``not_found``, ``rejected``, ``failed``, ``timeout``, ``open``, ``skipped`` (not a
        phone number) or ``abandoned`` (this lookup was replaced or closed). Never raises."""
        near = self._near.get(number)
        if near is not None:
            if near[0] > time.monotonic():
                self._near.move_to_end(number)
                self._observe("hit", None)
                return near[1], "hit"
            del self._near[number]
        if not is_phone_number(number):
            return self._seen(None, "skipped")
        if self._closed:
            return self._seen(None, "abandoned")
        wait = min(self._timeout, budget_s - RESERVE_S)
        flight = self._flights.get(number)
        if flight is None:
            flight = await self._lead(number)
        if flight.answer.done():
            return self._seen(*flight.answer.result())
        try:
            # Shielded: a caller that gives up does not cancel the flight others wait on.
            entry, result = await asyncio.wait_for(asyncio.shield(flight.answer), max(wait, 0))
        except TimeoutError:
            entry, result = None, "timeout"
        return self._seen(entry, result)

    def _seen(self, entry: Cached | None, result: str) -> tuple[CallerInfo | None, str]:
        self._observe(result, None)
        return _info(entry), result

    def _keep(self, number: str, entry: Cached) -> None:
        """Keep ``entry`` in process for near_cache_s, or less when it is fresh for less."""
        left = min(self._near_s, entry.fresh_until - time.time())
        if left <= 0 or self._closed:
            return
        now = time.monotonic()
        near = self._near
        near[number] = (now + left, _info(entry))
        near.move_to_end(number)
        # Expired entries that nobody read again go first (the least recently used come first, and
        # none lives longer than near_cache_s past its last use), then whatever is over the bound.
        while len(near) > NEAR_MAX or next(iter(near.values()))[0] <= now:
            near.popitem(last=False)

    async def _lead(self, number: str) -> _Flight:
        """Start the flight for ``number``. It is taken before the store is read, so that callers
        arriving during the read join it; it ends at once on a hit, else after the CRM request and the
        cache write."""
        flight = _Flight(asyncio.get_running_loop().create_future())
        self._flights[number] = flight
        try:
            entry = await self._cached(number)
        except BaseException:
            self._land(number, flight, "timeout")  # this caller ran out of time; those joined go on too
            raise
        if self._closed:
            flight.say(None, "abandoned")  # closed during the read: nothing new starts
        elif entry is not None and entry.fresh_until >= time.time():
            flight.say(entry, "hit")
            self._keep(number, entry)
        elif entry is not None and self.cfg.stale_s:
            # Past its TTL but within the stale window: answer now, refresh behind (unless the CRM
            # keeps failing: then the stale answer is all there is).
            flight.say(entry, "stale")
            if self.breaker.allows():
                return self._fly(number, flight)
        elif not self.breaker.allows():
            flight.say(None, "open")
        else:
            return self._fly(number, flight)
        self._land(number, flight, "abandoned")
        return flight

    def _fly(self, number: str, flight: _Flight) -> _Flight:
        flight.task = asyncio.get_running_loop().create_task(self._ask_for(flight, number))
        flight.task.add_done_callback(lambda _: self._land(number, flight, "abandoned"))
        return flight

    def _land(self, number: str, flight: _Flight, otherwise: str) -> None:
        """End ``flight``; whoever still waits on it gets ``otherwise``."""
        if self._flights.get(number) is flight:
            del self._flights[number]
        flight.say(None, otherwise)

    async def _ask_for(self, flight: _Flight, number: str) -> None:
        try:
            entry, result = await self._ask(number)
            if entry is not None:
                self._keep(number, entry)  # before the flight ends, so a caller never finds neither
            flight.say(entry, result)
        except Exception as exc:  # noqa: BLE001 - a lookup never fails the call; the cause is logged
            _error(exc)
            flight.say(None, "failed")

    async def _cached(self, number: str) -> Cached | None:
        try:
            raw = await self._store.get(f"lookup:{number}")
        except StoreError:
            return None  # the store is down: ask the CRM
        except Exception as exc:  # noqa: BLE001 - a lookup never fails the call; the cause is logged
            _error(exc)
            return None
        if raw is None:
            return None
        try:
            return _decode(raw)
        except msgspec.DecodeError:
            return None

    async def _ask(self, number: str) -> Answer:
        """Ask the CRM, count the outcome toward the breaker, cache what it found or did not."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._slots.acquire()
        except TimeoutError:
            return None, "timeout"  # every slot busy: this process's limit, not the CRM's failure
        began = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                entry, result = await self._request(number)
        except (TimeoutError, httpx.TimeoutException):
            entry, result = None, "timeout"
        except httpx.TransportError:
            entry, result = None, "failed"  # refused, reset, broken answers: the CRM or the way to it
        finally:
            self._slots.release()
        self._observe("request", time.perf_counter() - began)
        if result in ("timeout", "failed"):
            self.breaker.failed()
            return None, result
        if entry is None:
            return None, result  # rejected: not cached, and says nothing of the CRM's health
        self.breaker.succeeded()
        ttl = self.cfg.ttl_s if entry.found else self.cfg.negative_ttl_s
        if ttl:
            stale = self.cfg.stale_s if entry.found else 0
            try:
                await self._store.set(f"lookup:{number}", _encode(entry), ttl + stale)
            except StoreError:
                pass  # not cached this time; the answer stands
        return entry, result

    async def _request(self, number: str) -> Answer:
        url = self.cfg.url.replace("{caller}", quote(number, safe=""))
        async with self._client.stream("GET", url, headers=self._headers, timeout=self._timeout) as response:
            body = await _bounded(response)
            status = response.status_code
        if status == 404:
            return Cached(found=False, fresh_until=time.time() + self.cfg.negative_ttl_s), "not_found"
        if 400 <= status < 500:
            return None, "rejected"
        if status != 200 or body is None:
            return None, "failed"
        try:
            data = msgspec.json.decode(body)
        except (msgspec.DecodeError, ValueError, RecursionError):  # not JSON, not UTF-8, too deep
            return None, "failed"
        if not isinstance(data, dict):
            return None, "failed"
        return Cached(
            found=True,
            fresh_until=time.time() + self.cfg.ttl_s,
            tags=_tags(data.get(self.cfg.tags_field)),
            attributes={k: as_text(v) for k in self.cfg.attributes if _scalar(v := data.get(k))},
        ), "miss"


async def _bounded(response: httpx.Response) -> bytes | None:
    """The body as sent, or None when it is over :data:`MAX_BODY` (read no further than that) or
    compressed."""
    if response.headers.get("content-encoding", "identity").strip().lower() != "identity":
        return None
    length = response.headers.get("content-length", "")
    if length.isascii() and length.isdigit() and int(length) > MAX_BODY:
        return None
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > MAX_BODY:
            return None
    return bytes(body)


def _info(entry: Cached | None) -> CallerInfo | None:
    if entry is None or not entry.found:
        return None
    return CallerInfo(tags=frozenset(entry.tags), attributes=dict(entry.attributes))


def _error(exc: Exception) -> None:
    # The class only: a message may hold the URL, and so the caller's number.
    log.error("lookup error", extra={"fields": {"dependency": "lookup", "error": type(exc).__name__}})


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


def _tags(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list):
        return [t for t in value if isinstance(t, str) and t]
    return []
