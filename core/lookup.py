"""External caller lookups (a CRM): within the deadline, cached in the store, one request at a time
per caller, and never again for a while once the CRM keeps failing.

A 200 with a JSON object is a found caller, 404 is "not found"; anything else (another status, a body
that is not a JSON object, a refused connection, a timeout) is a failed lookup: not cached, counted,
and the decision goes on without it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import msgspec

from core.directory import CallerInfo, as_text
from core.errors import LookupFailed, LookupTimeout
from core.store import Store


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

Observer = Callable[[str, float | None], None]
"""Called with each lookup's result (``hit``, ``stale``, ``miss``, ``not_found``, ``failed``,
``timeout``, ``open``) and, for a request made, its duration in seconds."""


def _ignore(result: str, seconds: float | None) -> None:
    return None


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
        self._flights: dict[str, asyncio.Task] = {}
        self._failures = 0
        self._open_until = 0.0
        self._timeout = cfg.timeout_ms / 1000
        if previous is not None and previous.cfg.url == cfg.url:
            # The same CRM: its recent failures still count.
            self._failures = previous._failures
            self._open_until = previous._open_until

    def close(self) -> None:
        """Abandon requests under way (at shutdown or when a reload replaces this lookup)."""
        for task in list(self._flights.values()):
            task.cancel()

    async def find(self, number: str, budget_s: float) -> CallerInfo | None:
        return (await self.lookup(number, budget_s))[0]

    async def lookup(self, number: str, budget_s: float) -> tuple[CallerInfo | None, str]:
        """What the CRM says of ``number`` and how it was known (``hit``, ``stale``, ``miss``,
        ``not_found``, ``failed``, ``timeout``, ``open``)."""
        key = f"lookup:{number}"
        raw = await self._store.get(key)
        if raw is not None:
            try:
                entry = _decode(raw)
            except msgspec.DecodeError:
                entry = None
            if entry is not None:
                if entry.fresh_until >= time.time():
                    result = "hit"
                elif self.cfg.stale_s:
                    # Past its TTL but within the stale window: answer now, refresh behind
                    # (unless the CRM keeps failing: then the stale answer is all there is).
                    if time.monotonic() >= self._open_until:
                        self._flight(number)
                    result = "stale"
                else:
                    entry, result = None, ""
                if entry is not None:
                    self._observe(result, None)
                    return _info(entry), result
        if time.monotonic() < self._open_until:
            self._observe("open", None)
            return None, "open"
        wait = min(self._timeout, budget_s - RESERVE_S)
        if wait <= 0:
            self._observe("timeout", None)
            return None, "timeout"
        task = self._flight(number)
        try:
            # Shielded: a caller that gives up does not cancel the request others wait on.
            entry = await asyncio.wait_for(asyncio.shield(task), wait)
        except (TimeoutError, LookupTimeout):
            self._observe("timeout", None)
            return None, "timeout"
        except LookupFailed:
            self._observe("failed", None)
            return None, "failed"
        result = "miss" if entry.found else "not_found"
        self._observe(result, None)
        return (_info(entry) if entry.found else None), result

    def _flight(self, number: str) -> asyncio.Task:
        """The request under way for ``number``, or a new one: concurrent lookups are made once."""
        task = self._flights.get(number)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(number))
            self._flights[number] = task
            task.add_done_callback(lambda t: self._done(number, t))
        return task

    def _done(self, number: str, task: asyncio.Task) -> None:
        self._flights.pop(number, None)
        if not task.cancelled():
            task.exception()  # retrieved: a failure was counted by whoever waited, or by _fetch

    async def _fetch(self, number: str) -> Cached:
        url = self.cfg.url.replace("{caller}", quote(number, safe=""))
        began = time.perf_counter()
        try:
            response = await self._client.get(url, headers=self.cfg.headers, timeout=self._timeout)
            entry = self._read(response)
        except httpx.TimeoutException as exc:
            self._failed(began)
            raise LookupTimeout(f"lookup timed out after {self._timeout}s") from exc
        except httpx.HTTPError as exc:
            self._failed(began)
            raise LookupFailed(f"lookup: {exc.__class__.__name__}") from exc
        except LookupFailed:
            self._failed(began)
            raise
        self._failures = 0
        self._observe("request", time.perf_counter() - began)
        ttl = self.cfg.ttl_s if entry.found else self.cfg.negative_ttl_s
        if ttl:
            stale = self.cfg.stale_s if entry.found else 0
            await self._store.set(f"lookup:{number}", _encode(entry), ttl + stale)
        return entry

    def _failed(self, began: float) -> None:
        self._observe("request", time.perf_counter() - began)
        self._failures += 1
        if self._failures >= self.cfg.failures_to_open:
            self._open_until = time.monotonic() + self.cfg.open_s
            self._failures = 0

    def _read(self, response: httpx.Response) -> Cached:
        if response.status_code == 404:
            return Cached(found=False, fresh_until=time.time() + self.cfg.negative_ttl_s)
        if response.status_code != 200:
            raise LookupFailed(f"lookup answered {response.status_code}")
        try:
            body = msgspec.json.decode(response.content)
        except (msgspec.DecodeError, RecursionError):
            raise LookupFailed("lookup answered with a body that is not JSON") from None
        if not isinstance(body, dict):
            raise LookupFailed("lookup answered with JSON that is not an object")
        return Cached(
            found=True,
            fresh_until=time.time() + self.cfg.ttl_s,
            tags=_tags(body.get(self.cfg.tags_field)),
            attributes={k: as_text(v) for k in self.cfg.attributes if _scalar(v := body.get(k))},
        )


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


def _tags(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list):
        return [t for t in value if isinstance(t, str) and t]
    return []


def _info(entry: Cached) -> CallerInfo:
    return CallerInfo(tags=frozenset(entry.tags), attributes=dict(entry.attributes))
