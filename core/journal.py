"""The decision journal: every decision with the query, the caller facts used and the outcome.

:class:`Journal` is the contract; :class:`MemoryJournal` keeps a bounded ring in process,
:class:`RedisJournal` one Redis stream that every replica writes (``XADD ... MAXLEN ~``). Both pass one
contract test suite.

Recording never delays or fails an answer: :meth:`Journal.record` is synchronous, never waits and never
raises. The Redis journal only queues the entry there (a bounded queue; past it, entries are dropped and
counted); a background task writes the queue in batches, one round trip each, behind the answers. While
Redis fails, batches are dropped and counted, not retried: after a failure the journal drops what comes
for ``retry_after_s`` without trying, then tries the next batch again.

An entry's ``time`` is the epoch time in seconds (UTC, fractional) of the decision. Fields at their
defaults are left out of what is stored and shown (an entry without ``rule`` matched no rule).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import datetime as dt
import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, Literal, Protocol

import msgspec
from hiredis import pack_command
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster, Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.retry import Retry

from core.directory import UNKNOWN, CallerInfo
from core.errors import StoreError
from core.numbers import mask, mask_numbers, normalise
from core.query import Decision, RoutingQuery, Scalar

log = logging.getLogger("routing_gateway")

Numbers = Literal["full", "masked"]


class JournalConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[journal]``."""

    enabled: bool = True
    max_entries: Annotated[int, msgspec.Meta(ge=100, le=10_000_000)] = 100_000
    numbers: Numbers = "full"


class Facts(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """Caller facts as the journal keeps them: tags (sorted) and attributes."""

    tags: tuple[str, ...] = ()
    attributes: dict[str, str] = {}

    @classmethod
    def of(cls, info: CallerInfo) -> Facts:
        return cls(tags=tuple(sorted(info.tags)), attributes=dict(info.attributes))

    def info(self) -> CallerInfo:
        return CallerInfo(tags=frozenset(self.tags), attributes=dict(self.attributes))


class JournalEntry(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """One decision. The query's fields keep the names of :class:`core.query.RoutingQuery` except
    ``extradata`` (its ``attributes``); ``pool`` is the decision's ``service``: the pool the target was
    taken from."""

    time: float
    """When the decision was made: epoch seconds, UTC."""
    protocol: str
    request_id: str = ""
    # The routing query.
    caller: str = ""
    dialed: str = ""
    service: str = ""
    customer: str = ""
    call_id: str = ""
    call_time: str | None = None
    """``callTime`` as sent, when the caller passes it."""
    call_time_s: int | None = None
    extradata: dict[str, Scalar] = {}
    needs_destination: bool = False
    # The caller facts used: the directory's entry with the lookup's answer merged over it (what the
    # rules saw), and the lookup's answer alone (None: no lookup made, or it found or gave nothing).
    tags: tuple[str, ...] = ()
    attributes: dict[str, str] = {}
    lookup: Facts | None = None
    # The outcome.
    rule: str | None = None
    target: str | None = None
    pool: str | None = None
    disconnect: bool = False
    mq_id: str | None = None
    fallback: str | None = None
    replayed: bool = False
    status: int = 0
    version: str = ""
    latency_ms: float | None = None
    masked: bool = False
    """``caller`` and ``dialed`` hold only their last digits (``[journal] numbers = "masked"``)."""

    def query(self) -> RoutingQuery:
        """The routing query again (without its idempotency key: a replay remembers nothing)."""
        return RoutingQuery(
            protocol=self.protocol,
            caller=self.caller,
            dialed=self.dialed,
            service=self.service,
            customer=self.customer,
            call_id=self.call_id,
            call_time_s=self.call_time_s,
            attributes=self.extradata,
            needs_destination=self.needs_destination,
        )

    def facts(self) -> CallerInfo:
        """The caller facts the decision used."""
        if not self.tags and not self.attributes:
            return UNKNOWN
        return CallerInfo(tags=frozenset(self.tags), attributes=dict(self.attributes))


def entry(
    query: RoutingQuery,
    decision: Decision,
    *,
    request_id: str,
    status: int,
    version: str,
    latency_ms: float | None = None,
    facts: CallerInfo = UNKNOWN,
    looked_up: CallerInfo | None = None,
    call_time: str | None = None,
    at: float | None = None,
) -> JournalEntry:
    """The journal entry of one answered decision. ``facts`` are the caller facts the rules saw (see
    :func:`caller_facts`), ``looked_up`` the lookup's own answer; ``at`` defaults to now."""
    return JournalEntry(
        time=time.time() if at is None else at,
        protocol=query.protocol,
        request_id=request_id,
        caller=query.caller,
        dialed=query.dialed,
        service=query.service,
        customer=query.customer,
        call_id=query.call_id,
        call_time=call_time,
        call_time_s=query.call_time_s,
        extradata=query.attributes,
        needs_destination=query.needs_destination,
        tags=tuple(sorted(facts.tags)) if facts.tags else (),
        attributes=facts.attributes,
        lookup=None if looked_up is None else Facts.of(looked_up),
        rule=decision.rule,
        target=decision.target,
        pool=decision.service,
        disconnect=decision.disconnect,
        mq_id=decision.id,
        fallback=decision.fallback,
        replayed=decision.replayed,
        status=status,
        version=version,
        latency_ms=latency_ms,
    )


def _hide(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: mask_numbers(v) if isinstance(v, str) else v for k, v in values.items()}


def masked(e: JournalEntry) -> JournalEntry:
    """``e`` with its caller and dialled numbers cut to their last digits, and every number-like run in
    its other texts (customer, callID, request id, extradata, caller attributes) masked, as the logs
    show them."""
    if e.masked:
        return e
    lookup = e.lookup
    if lookup is not None and lookup.attributes:
        lookup = msgspec.structs.replace(lookup, attributes=_hide(lookup.attributes))
    return msgspec.structs.replace(
        e,
        caller=mask(e.caller),
        dialed=mask(e.dialed),
        customer=mask_numbers(e.customer),
        call_id=mask_numbers(e.call_id),
        request_id=mask_numbers(e.request_id),
        extradata=_hide(e.extradata) if e.extradata else e.extradata,
        attributes=_hide(e.attributes) if e.attributes else e.attributes,
        lookup=lookup,
        masked=True,
    )


# --- the caller facts a decision used -------------------------------------------------------------

_tapped: contextvars.ContextVar[list[CallerInfo | None] | None] = contextvars.ContextVar(
    "journal_lookup", default=None
)


class FactsTap:
    """A :class:`core.decide.CallerLookup` that passes each question to ``inner`` and notes the answer
    where :func:`tap` asked for it, so that the journal can hold what the lookup said for this decision.

    Put it in the Context in place of the lookup itself; call :func:`tap` in the request's task before
    deciding. The note travels in a context variable, so concurrent requests never see each other's.
    """

    __slots__ = ("inner",)

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def find(self, number: str, budget_s: float) -> CallerInfo | None:
        found = await self.inner.find(number, budget_s)
        slot = _tapped.get()
        if slot is not None:
            slot.append(found)
        return found


def tap() -> list[CallerInfo | None]:
    """Start noting this task's lookup answers: the list gets each one :class:`FactsTap` hears."""
    slot: list[CallerInfo | None] = []
    _tapped.set(slot)
    return slot


def caller_facts(
    query: RoutingQuery, callers: Mapping[str, CallerInfo], looked_up: CallerInfo | None
) -> CallerInfo:
    """The facts the rules saw, as ``core.decide.caller_info`` merges them: the directory's entry
    (``RuleBase.callers``) with the lookup's answer over it."""
    if not query.caller:
        return UNKNOWN
    known = callers.get(query.caller, UNKNOWN)
    return known if looked_up is None else known.merged(looked_up)


# --- reading --------------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$")
_UNITS = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration_s(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``1d``, ``1w`` as seconds; ValueError otherwise."""
    m = _DURATION.match(text)
    if m is None:
        raise ValueError(f"{text!r} is not a duration (90s, 15m, 2h, 1d)")
    return float(m[1]) * _UNITS[m[2]]


def since_epoch(text: str, now: float | None = None) -> float:
    """A ``since`` parameter as epoch seconds: a duration back from ``now`` (``15m``), or an ISO 8601
    time with an offset. ValueError otherwise."""
    try:
        return (time.time() if now is None else now) - duration_s(text)
    except ValueError:
        pass
    try:
        at = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (15m, 2h, 1d) nor an ISO 8601 time") from None
    if at.tzinfo is None:
        raise ValueError(f"{text!r}: give the time with its offset (Z or +02:00)")
    return at.timestamp()


class Filters(msgspec.Struct, frozen=True, kw_only=True):
    """What :meth:`Journal.read` selects: the newest ``last`` entries (at most) of call id ``call``,
    caller ``caller`` (any written form), decided by rule ``rule`` (``""``: by none), made at or after
    ``since`` (epoch seconds)."""

    last: int = 100
    call: str | None = None
    caller: str | None = None
    rule: str | None = None
    since: float | None = None

    @classmethod
    def parse(cls, params: Mapping[str, str], now: float | None = None, max_last: int = 100_000) -> Filters:
        """From query parameters (``last``, ``call``, ``caller``, ``rule``, ``since``); ValueError with
        a message for the client on a bad value."""
        last = params.get("last")
        n = 100
        if last is not None:
            if not last.strip().isdigit() or not 1 <= int(last) <= max_last:
                raise ValueError(f"last: a whole number from 1 to {max_last}")
            n = int(last)
        since = params.get("since")
        return cls(
            last=n,
            call=params.get("call"),
            caller=params.get("caller"),
            rule=params.get("rule"),
            since=None if since is None else since_epoch(since, now),
        )

    def matcher(self) -> Callable[[JournalEntry], bool]:
        call, rule, since = self.call, self.rule, self.since
        number = None if self.caller is None else normalise(self.caller)
        hidden = None if number is None else mask(number)
        # A masked entry's callID has its number-like runs masked as well.
        call_hidden = None if call is None else mask_numbers(call)

        def holds(e: JournalEntry) -> bool:
            if since is not None and e.time < since:
                return False
            if call is not None and e.call_id != (call_hidden if e.masked else call):
                return False
            # A masked entry keeps the last digits only: every caller with the same ones matches.
            if number is not None and e.caller != (hidden if e.masked else number):
                return False
            return rule is None or (e.rule or "") == rule

        return holds


class Page(msgspec.Struct):
    """What ``GET /journal`` answers: ``{"entries": [...]}``, newest first."""

    entries: list[JournalEntry]


_json_page = msgspec.json.Encoder()
_json_page_decode = msgspec.json.Decoder(Page).decode


def page_json(entries: list[JournalEntry]) -> bytes:
    return _json_page.encode(Page(entries))


def from_page_json(body: bytes) -> list[JournalEntry]:
    """The entries of a ``GET /journal`` answer; msgspec.DecodeError when it is not one."""
    return _json_page_decode(body).entries


def line(e: JournalEntry) -> str:
    """One entry as one line for people: when, what was asked, what the caller was, what was answered.

    ``2026-11-23T08:00:00.123Z eml request=r1 call=c1 service=Sales -> rule=sales number=5550 pool=Sales
    mqID=... status=201 version=abc123 1.2ms``
    """
    when = dt.datetime.fromtimestamp(e.time, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    parts = [when, e.protocol, f"request={e.request_id}"]
    asked = (
        ("call", e.call_id),
        ("caller", e.caller),
        ("dialed", e.dialed),
        ("service", e.service),
        ("customer", e.customer),
    )
    parts += [f"{k}={v}" for k, v in asked if v]
    if e.call_time is not None or e.call_time_s is not None:
        parts.append(f"callTime={e.call_time if e.call_time is not None else e.call_time_s}")
    if e.extradata:
        parts.append("extradata=" + msgspec.json.encode(e.extradata).decode())
    if e.tags:
        parts.append("tags=" + ",".join(e.tags))
    if e.lookup is not None:
        parts.append("lookup=" + msgspec.json.encode(e.lookup).decode())
    parts.append("->")
    parts.append(f"rule={e.rule}" if e.rule else "rule=(none)")
    if e.disconnect:
        parts.append("disconnect")
    elif e.target:
        parts.append(f"{'number' if e.needs_destination else 'target'}={e.target}")
    else:
        parts.append("no destination")
    if e.pool:
        parts.append(f"pool={e.pool}")
    if e.mq_id:
        parts.append(f"mqID={e.mq_id}")
    if e.fallback:
        parts.append(f"fallback={e.fallback}")
    if e.replayed:
        parts.append("replayed")
    parts += [f"status={e.status}", f"version={e.version or '?'}"]
    if e.latency_ms is not None:
        parts.append(f"{e.latency_ms:g}ms")
    return " ".join(parts)


# --- the journals ---------------------------------------------------------------------------------

Dropped = Callable[[str, int], None]
"""Told of entries dropped: the reason (``full``: the queue was full; ``store``: Redis failed or is
taken for down; ``refused``: Redis refused the entries; ``invalid``: an entry that cannot be stored;
``closed``: still queued at shutdown) and how many. Called on the event loop; must be cheap and must not raise."""


class Journal(Protocol):
    """Where decisions are recorded, and read back newest first."""

    dropped: int
    """Entries dropped so far, never recorded."""

    def record(self, entry: JournalEntry) -> None:
        """Keep ``entry``. Never waits, never raises; an entry that cannot be kept is dropped and counted."""

    def start(self) -> None:
        """Begin writing in the background (call with the event loop running)."""

    async def read(
        self,
        *,
        last: int = 100,
        call: str | None = None,
        caller: str | None = None,
        rule: str | None = None,
        since: float | None = None,
    ) -> list[JournalEntry]:
        """The newest ``last`` entries that match every filter given, newest first (see :class:`Filters`).
        :class:`core.errors.StoreError` when the journal cannot be read."""

    async def flush(self) -> None:
        """Wait until what was recorded before this call is written or dropped."""

    async def close(self) -> None:
        """Write what is queued (for a bounded time: the rest is dropped and counted) and let go."""


class _Counting:
    """Drop counting shared by the journals."""

    def __init__(self, on_drop: Dropped | None) -> None:
        self.dropped = 0
        self.on_drop = on_drop

    def _drop(self, reason: str, n: int) -> None:
        self.dropped += n
        if self.on_drop is not None:
            with contextlib.suppress(Exception):
                self.on_drop(reason, n)


class MemoryJournal(_Counting):
    """The journal in process: the newest ``max_entries`` entries in a ring. Recording is an append."""

    YIELD_EVERY = 5000
    """Entries looked at between two yields to the event loop while reading."""

    def __init__(self, max_entries: int = 100_000, numbers: Numbers = "full", on_drop: Dropped | None = None):
        super().__init__(on_drop)
        self.max_entries = max_entries
        self._ring: collections.deque[JournalEntry] = collections.deque(maxlen=max_entries)
        self._mask = numbers == "masked"

    def __len__(self) -> int:
        return len(self._ring)

    def record(self, entry: JournalEntry) -> None:
        try:
            self._ring.append(masked(entry) if self._mask else entry)
        except Exception:  # noqa: BLE001 - recording must never fail an answer
            self._drop("full", 1)

    def start(self) -> None:
        return None

    async def read(
        self,
        *,
        last: int = 100,
        call: str | None = None,
        caller: str | None = None,
        rule: str | None = None,
        since: float | None = None,
    ) -> list[JournalEntry]:
        holds = Filters(last=last, call=call, caller=caller, rule=rule, since=since).matcher()
        out: list[JournalEntry] = []
        # A snapshot: entries recorded while this yields do not disturb the walk.
        ring = list(self._ring)
        for i, e in enumerate(reversed(ring)):
            if since is not None and e.time < since - _CLOCK_SLACK_S:
                break  # the ring is in recording order: older ones follow
            if holds(e):
                out.append(e)
                if len(out) >= last:
                    break
            if i % self.YIELD_EVERY == self.YIELD_EVERY - 1:
                await asyncio.sleep(0)
        return out

    async def flush(self) -> None:
        return None

    async def close(self) -> None:
        return None


_CLOCK_SLACK_S = 5.0
"""How far out of time order entries may be (replicas' clocks, and the order of recording): reading
with ``since`` looks this much further back before it stops."""

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(JournalEntry).decode
FIELD = b"e"
"""The stream field that holds an entry (msgpack of :class:`JournalEntry`)."""

# A batch of entries in one command: each XADD sent alone costs the client a reply to read (about 10 us
# of CPU an entry, against about 1.5 us so). KEYS[1]: the stream; ARGV: MAXLEN, then the entries.
APPEND = b"""
for i = 2, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[i])
end
return #ARGV - 1
"""
APPEND_SHA = hashlib.sha1(APPEND).hexdigest()


class RedisJournal(_Counting):
    """The journal in one Redis stream, ``prefix + key``, shared by every replica that writes it.

    Entries are appended with ``XADD key MAXLEN ~ max_entries * e <msgpack>``, a batch in one script
    (:data:`APPEND`): the stream keeps about the newest ``max_entries`` (Redis trims whole nodes, so a
    few more). One key, so Cluster-safe. Reading walks the stream newest first with ``XREVRANGE``, a
    page at a time, filtering here; a read looks at no more than twice ``max_entries``.

    Writes go out on one connection of the journal's own (not the store's), a batch a round trip.
    """

    BATCH = 256
    """Most entries written in one round trip: one script, and Redis runs nothing else meanwhile, so a
    batch stays short (well under a millisecond)."""
    PAGE = 1000
    """Entries read per round trip."""

    def __init__(
        self,
        client: Any,
        key: str,
        max_entries: int = 100_000,
        *,
        numbers: Numbers = "full",
        timeout_s: float = 1.0,
        flush_interval_s: float = 0.05,
        retry_after_s: float = 2.0,
        max_pending: int = 20_000,
        close_timeout_s: float = 2.0,
        on_drop: Dropped | None = None,
    ) -> None:
        super().__init__(on_drop)
        self._client = client
        self.key = key
        self.max_entries = max_entries
        self._mask = numbers == "masked"
        self._timeout = timeout_s
        self._interval = flush_interval_s
        self._retry_after = retry_after_s
        self._max_pending = max_pending
        self._close_timeout = close_timeout_s
        self._pending: collections.deque[JournalEntry] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._drained = asyncio.Event()
        self._hurry = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        self._down_until = 0.0
        self._failing = False
        self._conn: Any = None
        self._cluster = isinstance(client, RedisCluster)
        self.written = 0
        """Entries Redis accepted."""

    @classmethod
    def connect(
        cls,
        url: str,
        prefix: str,
        *,
        cluster: bool = False,
        sentinels: Iterable[str] = (),
        master: str = "",
        key: str = "journal",
        timeout_s: float = 1.0,
        **options: Any,
    ) -> RedisJournal:
        """A journal on the Redis a store config names (``redis://``, a Cluster node, or Sentinels), under
        the store's key prefix. Nothing is connected until the first write or read."""

        def no_retry() -> Retry:
            # A batch is tried once; a retry inside the client would only hold the queue up.
            return Retry(NoBackoff(), 0)

        common: dict[str, Any] = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            "driver_info": None,
        }
        sentinels = list(sentinels)
        if sentinels:
            hosts = []
            for item in sentinels:
                host, _, port = item.rpartition(":")
                hosts.append((host or item, int(port or 26379)))
            sentinel = Sentinel(hosts, sentinel_kwargs={**common, "retry": no_retry()}, **common)
            client = sentinel.master_for(master, retry=no_retry(), max_connections=4)
        elif cluster:
            client = RedisCluster.from_url(url, retry=no_retry(), max_connections=4, **common)
        else:
            pool = BlockingConnectionPool.from_url(
                url, max_connections=4, timeout=timeout_s, retry=no_retry(), **common
            )
            client = Redis.from_pool(pool)
        return cls(client, prefix + key, timeout_s=timeout_s, **options)

    # -- writing -----------------------------------------------------------------------------------

    def record(self, entry: JournalEntry) -> None:
        try:
            if len(self._pending) >= self._max_pending:
                self._drop("full", 1)
                return
            self._pending.append(entry)
            wake = self._wake
            if wake is not None and not wake.is_set():
                wake.set()
        except Exception:  # noqa: BLE001 - recording must never fail an answer
            self._drop("full", 1)

    def start(self) -> None:
        if self._task is not None:
            return
        self._wake = asyncio.Event()
        if self._pending:
            self._wake.set()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="journal writer")

    @property
    def pending(self) -> int:
        """Entries queued, not yet written."""
        return len(self._pending)

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            if self._interval and not self._hurry.is_set():
                # Let more entries come, so that a batch carries many: one round trip for them all.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._interval):
                        await self._hurry.wait()
            self._hurry.clear()
            self._wake.clear()
            while self._pending:
                n = min(len(self._pending), self.BATCH)
                batch = [self._pending.popleft() for _ in range(n)]
                await self._flush(batch)
            # Everything recorded before the wake-up is written (or dropped) now.
            self._drained.set()
            if self._closing:
                return

    async def flush(self) -> None:
        """Wait until what was recorded before this call is written or dropped (the writer runs)."""
        if self._task is None or self._task.done():
            return
        assert self._wake is not None
        self._drained.clear()
        self._hurry.set()
        self._wake.set()
        await self._drained.wait()

    async def _flush(self, batch: list[JournalEntry]) -> None:
        if time.monotonic() < self._down_until:
            self._drop("store", len(batch))
            return
        blobs = []
        for e in batch:
            blob = _pack(masked(e) if self._mask else e)
            if blob is None:
                self._drop("invalid", 1)
            else:
                blobs.append(blob)
        if not blobs:
            return
        try:
            refused = await self._write(blobs)
        except asyncio.CancelledError:
            self._drop("closed", len(blobs))  # cut short by close(): never written, as far as we know
            raise
        except Exception as exc:  # noqa: BLE001 - whatever failed, the batch is dropped, never retried
            self._down_until = time.monotonic() + self._retry_after
            self._drop("store", len(blobs))
            if not self._failing:
                self._failing = True
                log.warning(
                    "journal dropping entries",
                    extra={"fields": {"dependency": "redis", "error": f"{exc.__class__.__name__}: {exc}"}},
                )
            return
        if self._failing:
            self._failing = False
            log.warning("journal writing again", extra={"fields": {"dependency": "redis"}})
        self.written += len(blobs) - refused
        if refused:
            self._drop("refused", refused)

    async def _write(self, blobs: list[bytes]) -> int:
        """Write ``blobs`` in one round trip, one command; how many Redis refused (all of them, or
        none). Raises when the batch failed."""
        args = (1, self.key, self.max_entries, *blobs)
        async with asyncio.timeout(self._timeout):
            try:
                await self._command("EVALSHA", APPEND_SHA, *args)
            except NoScriptError:
                # Redis does not hold the script (restarted, flushed, failed over): EVAL sends it.
                try:
                    await self._command("EVAL", APPEND, *args)
                except ResponseError:
                    return len(blobs)
            except ResponseError:
                return len(blobs)  # refused whole (out of memory, the key is not a stream)
        return 0

    async def _command(self, *args: Any) -> Any:
        if self._cluster:
            return await self._client.execute_command(*args)
        # On a connection of its own, packed by hiredis: the writer never waits on the requests' pool,
        # nor they on it.
        conn = self._conn
        if conn is None:
            conn = self._conn = self._client.connection_pool.make_connection()
        try:
            await conn.connect()
            await conn.send_packed_command(pack_command(args), check_health=False)
            return await conn.read_response()
        except ResponseError:
            raise  # read whole: the connection goes on
        except BaseException:
            # Cut short or broken: no answer of this batch may be read as the next one's.
            await conn.disconnect(nowait=True)
            raise

    # -- reading -----------------------------------------------------------------------------------

    async def _page(self, high: bytes, low: bytes) -> list[tuple[bytes, Any]]:
        try:
            async with asyncio.timeout(max(self._timeout, 2.0)):
                return await self._client.execute_command(
                    "XREVRANGE", self.key, high, low, "COUNT", self.PAGE
                )
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreError(f"redis XREVRANGE: {exc.__class__.__name__}: {exc}") from exc

    async def read(
        self,
        *,
        last: int = 100,
        call: str | None = None,
        caller: str | None = None,
        rule: str | None = None,
        since: float | None = None,
    ) -> list[JournalEntry]:
        holds = Filters(last=last, call=call, caller=caller, rule=rule, since=since).matcher()
        # Stream ids are Redis's clock in ms: a lower bound there, with slack for the replicas' clocks.
        low = b"-" if since is None else str(max(0, int((since - _CLOCK_SLACK_S) * 1000))).encode()
        high = b"+"
        out: list[JournalEntry] = []
        budget = 2 * self.max_entries
        while len(out) < last and budget > 0:
            page = await self._page(high, low)
            for ident, fields in page:
                blob = fields.get(FIELD) if isinstance(fields, dict) else _field(fields)
                if blob is None:
                    continue
                try:
                    e = _decode(blob)
                except msgspec.DecodeError:
                    continue  # not an entry of ours
                if holds(e):
                    out.append(e)
                    if len(out) >= last:
                        break
            budget -= len(page)
            if len(page) < self.PAGE:
                break
            last_id = page[-1][0]
            high = b"(" + (last_id if isinstance(last_id, bytes) else str(last_id).encode())
        return out

    async def length(self) -> int:
        """Entries the stream holds now."""
        try:
            async with asyncio.timeout(max(self._timeout, 2.0)):
                return int(await self._client.execute_command("XLEN", self.key))
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreError(f"redis XLEN: {exc.__class__.__name__}: {exc}") from exc

    async def close(self) -> None:
        task = self._task
        if task is not None:
            self._closing = True
            assert self._wake is not None
            self._hurry.set()
            self._wake.set()
            try:
                async with asyncio.timeout(self._close_timeout):
                    await asyncio.shield(task)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            except Exception:  # the writer failed; what it held is counted below
                log.exception("journal writer failed")
            self._task = None
        if self._pending:
            self._drop("closed", len(self._pending))
            self._pending.clear()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.disconnect()
            self._conn = None
        with contextlib.suppress(Exception):
            await self._client.aclose()


def _pack(e: JournalEntry) -> bytes | None:
    """``e`` as stored; None when it cannot be. msgpack holds integers of 64 bits: a larger one in
    ``extradata`` (which a client may send) is kept as its digits."""
    with contextlib.suppress(Exception):  # one odd entry must not cost the batch
        return _encode(e)
    try:
        wide = {
            k: str(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in e.extradata.items()
        }
        return _encode(msgspec.structs.replace(e, extradata=wide))
    except Exception:  # noqa: BLE001
        return None


def _field(fields: Any) -> bytes | None:
    """The entry's value in a raw ``[field, value, ...]`` list."""
    if isinstance(fields, (list, tuple)):
        for i in range(0, len(fields) - 1, 2):
            if fields[i] == FIELD:
                return fields[i + 1]
    return None


def open_journal(
    cfg: JournalConfig,
    *,
    redis_url: str = "",
    prefix: str = "rgw:",
    cluster: bool = False,
    sentinels: Iterable[str] = (),
    master: str = "",
    timeout_s: float = 1.0,
    retry_after_s: float = 2.0,
    on_drop: Dropped | None = None,
) -> Journal | None:
    """The journal ``[journal]`` asks for: None when disabled, in Redis when the store is, else in process."""
    if not cfg.enabled:
        return None
    sentinels = list(sentinels)
    if redis_url or sentinels:
        return RedisJournal.connect(
            redis_url,
            prefix,
            cluster=cluster,
            sentinels=sentinels,
            master=master,
            timeout_s=timeout_s,
            max_entries=cfg.max_entries,
            numbers=cfg.numbers,
            retry_after_s=retry_after_s,
            on_drop=on_drop,
        )
    return MemoryJournal(cfg.max_entries, cfg.numbers, on_drop=on_drop)
