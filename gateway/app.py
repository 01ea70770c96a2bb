"""The ASGI app: webhook endpoints for each protocol, health, readiness and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import hmac
import itertools
import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import adapters
from adapters import Rejected, Reply
from core.decide import Context, decide, utc_now
from core.errors import StoreError
from core.failover import FailoverStore
from core.journal import (
    FactsTap,
    Filters,
    Journal,
    caller_facts,
    entry,
    masked,
    open_journal,
    page_json,
    tap,
)
from core.lookup import CrmLookup, Observer
from core.numbers import mask
from core.redis_store import RedisStore
from core.store import MemoryStore, Store
from gateway import config as config_mod
from gateway import metrics
from gateway.auth import Credentials, allowed, client_address, networks
from gateway.logs import decision_line, event
from gateway.logs import flush as flush_logs
from gateway.logs import setup as setup_logs
from gateway.reload import Reloader

CONFIG_ENV = "ROUTING_GATEWAY_CONFIG"
DECIDED = ("routed", "default", "not_found", "disconnect")  # outcomes of a decision, not of a refusal
_encode = msgspec.json.Encoder().encode


class Endpoint(NamedTuple):
    adapter: adapters.Adapter
    section: Any
    credentials: Credentials
    networks: tuple
    remember_s: float


def _route_key(path: str) -> str:
    # Express matches paths case-insensitively and with an optional trailing slash.
    path = path.lower()
    return path[:-1] if len(path) > 1 and path.endswith("/") else path


class Runtime:
    """Everything one config version needs to answer webhooks; a reload builds a new one and swaps it."""

    def __init__(
        self,
        loaded: config_mod.Loaded,
        store: Store,
        clock: Callable[[], dt.datetime],
        http: httpx.AsyncClient,
        observe: Observer,
        previous: Runtime | None = None,
        journal: Journal | None = None,
    ) -> None:
        cfg = loaded.config
        self.loaded = loaded
        self.loaded_at = dt.datetime.now(dt.UTC)
        self.lookup = None
        if cfg.lookup is not None:
            # The previous lookup hands over its circuit breaker when the CRM is the same one, so a
            # reload never sends traffic straight back to a CRM that is failing.
            before = previous.lookup if previous is not None else None
            self.lookup = CrmLookup(cfg.lookup, store, http, observe, previous=before)
        # [journal] enabled and numbers apply from this config on; where it is kept (Redis or a ring) and
        # how much, from the start.
        self.journal = journal if cfg.journal.enabled else None
        self.mask_journal = cfg.journal.numbers == "masked"
        # With a journal, the lookup is asked through a tap that notes its answer for the entry.
        asked = FactsTap(self.lookup) if self.lookup is not None and self.journal is not None else self.lookup
        self.ctx = Context(rules=loaded.rules, store=store, lookup=asked, clock=clock, flights={})
        self.routes: dict[str, Endpoint] = {}
        # The paths as configured, so that the usual request needs no normalising to be found.
        self.exact: dict[str, Endpoint] = {}
        self.endpoints: list[Endpoint] = []
        for adapter in adapters.registered():
            table = config_mod.section(cfg, adapter)
            basic = getattr(table, "basic_auth", {})
            ep = Endpoint(
                adapter,
                table,
                Credentials(adapter.API_KEY_HEADER, adapter.AUTH_SCHEMES, table.api_keys, basic),
                networks(table.allow_networks),
                adapter.retry_window_s(table),
            )
            self.endpoints.append(ep)
            for path in adapter.paths(table).values():
                self.routes[_route_key(path)] = ep
                self.exact[path] = ep
        self.failover = store if isinstance(store, FailoverStore) else None
        self.trusted = networks(cfg.server.trusted_proxies)
        self.ops_networks = networks(cfg.server.ops_allow_networks)
        self.deadline_s = cfg.server.deadline_ms / 1000
        self.max_body = cfg.server.max_body_bytes


def _evicted(max_entries: int) -> Callable[[str, float], None]:
    """Counts each value the in-process store drops for room inside its TTL; logs at most a line a second.
    Runs inside the store's ``set``, so it stays cheap."""
    last, since = 0.0, 0

    def told(kind: str, ttl_left_s: float) -> None:
        nonlocal last, since
        metrics.STORE_EVICTIONS.inc()
        since += 1
        now = time.monotonic()
        if now - last >= 1.0:
            # A call record dropped inside its retry window could be allocated twice on a retry.
            event(
                "store evicted",
                logging.WARNING,
                kind=kind,
                ttl_left_s=round(ttl_left_s),
                evicted=since,
                max_entries=max_entries,
                note="raise store.max_entries",
            )
            last, since = now, 0

    return told


def make_store(cfg: config_mod.StoreConfig) -> Store:
    """Redis (with the in-process store behind it for when Redis fails) when configured, else in process."""
    memory = MemoryStore(cfg.max_entries, on_evict=_evicted(cfg.max_entries))
    if not cfg.redis_url and not cfg.sentinels:
        return memory
    redis = RedisStore.connect(
        cfg.redis_url,
        cfg.key_prefix,
        cfg.timeout_ms / 1000,
        cluster=cfg.cluster,
        sentinels=cfg.sentinels,
        master=cfg.sentinel_master,
        max_connections=cfg.max_connections,
    )
    return FailoverStore(redis, memory, cfg.retry_after_s, on_change=lambda up: metrics.STORE_UP.set(int(up)))


def store_status(store: Store) -> str:
    """``ok``, ``degraded`` (Redis unreachable, serving in process) or ``in-process`` (no Redis configured)."""
    if isinstance(store, FailoverStore):
        return store.status()
    return "in-process" if isinstance(store, MemoryStore) else "ok"


class State:
    """The app's mutable state: the current runtime and whether it may take webhooks."""

    def __init__(self) -> None:
        self.runtime: Runtime | None = None
        self.journal: Journal | None = None
        self.ready = False
        self.stopping = False


def _settle_heap() -> None:
    """Set aside what is alive now (the config, the directory, the modules) from the garbage collector:
    its full passes then walk only what requests leave behind, and stop pausing answers for the time a
    walk of a large directory takes. Done again after a reload, whose full pass frees the old config."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class ClientGone(Exception):
    """The client disconnected before its body was read."""


async def _read_body(receive: Callable, declared: bytes | None, limit: int) -> bytes | None:
    """The body, or None as soon as it is known to exceed ``limit`` (before reading it, when declared)."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    message = await receive()
    # The usual body comes whole in one message.
    if message["type"] == "http.request" and not message.get("more_body", False):
        body = message.get("body", b"")
        return body if len(body) <= limit else None
    chunks = []
    size = 0
    while True:
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
        message = await receive()


_NO_BODY = {"type": "http.response.body", "body": b""}
_TYPES: dict[str, bytes] = {}  # the adapters' few content types, encoded once


async def _send(send: Callable, reply: Reply, request_id: bytes) -> None:
    headers = [(b"x-request-id", request_id)]
    if reply.status != 204:
        headers.append((b"content-length", b"%d" % len(reply.body)))
    if reply.content_type:
        kind = _TYPES.get(reply.content_type)
        if kind is None:
            kind = _TYPES[reply.content_type] = reply.content_type.encode()
        headers.append((b"content-type", kind))
    if reply.headers:
        headers += [(k.encode(), v.encode()) for k, v in reply.headers]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body} if reply.body else _NO_BODY)


def _target(scope: dict) -> str:
    """The request target as sent (path and query), for Express-style "Cannot POST ..." replies."""
    raw = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
    query = scope["query_string"].decode("latin-1")
    return f"{raw}?{query}" if query else raw


# Request ids the gateway makes: a random prefix per process and a counter, unique without asking the
# system for randomness on every request. The prefix starts with a letter: an id of digits only would
# read as a phone number, and the logs would mask it.
_ID_PREFIX = "r" + secrets.token_hex(4)[1:]
_ids = itertools.count(1)


def _request_id(given: bytes | None) -> bytes:
    if given is not None and 0 < len(given) <= 64 and given.isascii():
        text = given.decode("ascii")
        if text.isprintable():
            return given
    return b"%s%08x" % (_ID_PREFIX.encode(), next(_ids) & 0xFFFFFFFF)


def _source(scope: dict, rt: Runtime):
    """The client's address, for the allow-lists: the peer, or behind trusted proxies the address they
    forwarded. Every X-Forwarded-For line counts, in order, as one list: a proxy may add a line of its own,
    and reading only one of them would let a client's own line decide."""
    peer = scope.get("client")
    forwarded = None
    if rt.trusted:
        lines = [v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"x-forwarded-for"]
        forwarded = ", ".join(lines) or None
    return client_address(peer[0] if peer else None, forwarded, rt.trusted)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


async def _answer(ep: Endpoint, rt: Runtime, scope: dict, receive: Callable, headers: dict, start: float):
    """Run one webhook through its adapter and the core. Returns the reply, what to log, and for a
    request that was decided, the query, the decision and the lookup's answers (for the journal)."""
    a = ep.adapter
    if scope["method"] != "POST":
        return a.error("method", scope["method"], _target(scope)), {"outcome": "method"}, None
    # The peer's address is parsed only where an allow-list asks for it.
    if ep.networks and not allowed(_source(scope, rt), ep.networks):
        return a.error("forbidden"), {"outcome": "forbidden"}, None
    if not ep.credentials.accept_raw(headers):
        return a.error("unauthorized", section=ep.section), {"outcome": "unauthorized"}, None
    try:
        content_type = _text(headers.get(b"content-type"))
        a.check_content_type(content_type)
        body = await _read_body(receive, headers.get(b"content-length"), rt.max_body)
        if body is None:
            return a.error("too_large"), {"outcome": "too_large"}, None
        query = a.parse(body, content_type)
    except Rejected as exc:
        return exc.reply, {"outcome": "bad_request"}, None
    deadline = start + rt.deadline_s
    # What the lookup answers this call, for the journal (noted by FactsTap in this task's context).
    looked_up = tap() if rt.journal is not None and rt.lookup is not None else None
    # The core answers its own deadline and a failing store (with the fallback decision).
    decision = await decide(query, rt.ctx, remember_s=ep.remember_s, deadline=deadline)
    reply = a.render(decision, query)
    note: dict[str, Any] = {
        "caller": mask(query.caller) or None,
        "service": query.service or None,
        "rule": decision.rule,
        # What the adapter rendered: an EML disconnect is not "routed", whatever the decision held.
        "outcome": reply.outcome
        or ("routed" if decision.routes else "not_found" if query.needs_destination else "default"),
        "fallback": decision.fallback,
        "replayed": decision.replayed or None,
    }
    for key, value in reply.answer:
        if value:
            note[key] = value
    return reply, note, (query, decision, looked_up)


class Gateway(Starlette):
    """Starlette for the operational endpoints and the lifespan. A request for a webhook path as
    configured goes straight to its handler, past Starlette's middleware and router: the handler answers
    every error itself, in its protocol. Other paths (a webhook path in another case or with a trailing
    slash included) go through the router, whose default handler finds them."""

    def __init__(self, gateway: State, webhook: Callable, **options: Any) -> None:
        super().__init__(**options)
        self._gateway = gateway
        self._webhook = webhook

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            rt = self._gateway.runtime
            if rt is not None:
                ep = rt.exact.get(scope["path"])
                if ep is not None:
                    return await self._webhook(ep, rt, scope, receive, send)
        await super().__call__(scope, receive, send)


def create_app(
    config: str | os.PathLike | config_mod.Loaded | None = None,
    *,
    store: Store | None = None,
    clock: Callable[[], dt.datetime] = utc_now,
    worker: bool = False,
) -> Starlette:
    """The gateway as an ASGI app. ``config`` is a path or a loaded config (default: ``$ROUTING_GATEWAY_CONFIG``,
    else ``config.toml``); ``store`` and ``clock`` replace the configured ones, for tests. A ``worker`` (one
    of ``--workers N``) logs ``worker started`` once it can answer; a single process is announced by the
    server once its socket is bound."""
    if config is None:
        config = os.environ.get(CONFIG_ENV, "config.toml")
    loaded = config if isinstance(config, config_mod.Loaded) else config_mod.load(Path(config))
    state = State()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        the_store = store or make_store(loaded.config.store)
        if isinstance(the_store, FailoverStore):
            # Find out now whether Redis answers, so that /readyz tells the truth from the start.
            await the_store.ping()
        # One pooled client for every lookup; per-request timeouts come from [lookup].
        http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20), follow_redirects=False
        )
        cfg = loaded.config
        journal = open_journal(
            cfg.journal,
            redis_url=cfg.store.redis_url,
            prefix=cfg.store.key_prefix,
            cluster=cfg.store.cluster,
            sentinels=cfg.store.sentinels,
            master=cfg.store.sentinel_master,
            # Written behind the answers in batches: a batch may wait longer than a webhook's call.
            timeout_s=max(1.0, cfg.store.timeout_ms / 1000),
            retry_after_s=cfg.store.retry_after_s,
            on_drop=metrics.journal_dropped,
        )
        if journal is not None:
            journal.start()
        state.journal = journal
        state.runtime = Runtime(loaded, the_store, clock, http, metrics.observe_lookup, journal=journal)
        metrics.STORE_UP.set(int(store_status(the_store) != "degraded"))
        metrics.config_loaded(loaded.version, None, time.time())

        def swap(new: config_mod.Loaded) -> None:
            # One assignment: requests in flight keep the runtime they started with.
            old = state.runtime
            state.runtime = Runtime(
                new, the_store, clock, http, metrics.observe_lookup, previous=old, journal=state.journal
            )
            if old.lookup is not None and old.lookup is not state.runtime.lookup:
                old.lookup.close()  # its requests are abandoned; callers waiting on them go on without
            if new.config.journal.enabled and state.journal is None:
                event(
                    "restart needed",
                    logging.WARNING,
                    keys=["journal.enabled"],
                    note="the journal was off at start; it is recorded from the next start",
                )
            _settle_heap()

        reloader = Reloader(lambda: state.runtime.loaded, swap)
        reloader.install()
        _settle_heap()
        state.ready = True
        if worker:
            # The supervisor bound the socket before starting the workers: this one now takes requests.
            event(
                "worker started",
                config=str(loaded.path),
                version=loaded.version,
                store=store_status(the_store),
            )
        try:
            yield
        finally:
            state.ready = False
            state.stopping = True
            reloader.close()
            if state.runtime.lookup is not None:
                state.runtime.lookup.close()
            await http.aclose()
            if state.journal is not None:
                await state.journal.close()  # what is queued is written, within a bounded time
            await the_store.close()
            metrics.worker_exit(os.getpid())
            event("stopped")
            # A worker is ended by its signal re-raised right after this: write the queued lines first.
            await asyncio.to_thread(flush_logs)

    async def webhook(ep: Endpoint, rt: Runtime, scope: dict, receive: Callable, send: Callable) -> None:
        began = time.perf_counter()
        start = asyncio.get_running_loop().time()
        # ASGI servers send header names in lower case; for a repeated header the last one counts.
        headers = dict(scope["headers"])
        request_id = _request_id(headers.get(b"x-request-id"))
        protocol = ep.adapter.NAME
        try:
            reply, note, decided = await _answer(ep, rt, scope, receive, headers, start)
        except ClientGone:
            return
        except Exception:  # noqa: BLE001 - any failure is the protocol's 500, never a trace
            event("failed", logging.ERROR, exc_info=True, request_id=request_id.decode(), protocol=protocol)
            reply, note, decided = ep.adapter.error("internal"), {"outcome": "error"}, None
        await _send(send, reply, request_id)
        took = time.perf_counter() - began
        outcome = note["outcome"]
        degraded = outcome in DECIDED and rt.failover is not None and not rt.failover.up
        metrics.answered(protocol, outcome, took, note.get("rule"), note.get("fallback"), degraded)
        note["latency_ms"] = round(took * 1000, 3)
        rid = request_id.decode()
        decision_line(rid, protocol, reply.status, note, own_id=rid.startswith(_ID_PREFIX))
        if decided is not None and rt.journal is not None:
            query, decision, looked_up = decided
            found = looked_up[-1] if looked_up else None
            made = entry(
                query,
                decision,
                request_id=rid,
                status=reply.status,
                version=rt.loaded.version,
                latency_ms=note["latency_ms"],
                facts=caller_facts(query, rt.ctx.rules.callers, found),
                looked_up=found,
            )
            rt.journal.record(masked(made) if rt.mask_journal else made)

    async def not_found(rt: Runtime | None, scope: dict, send: Callable) -> None:
        path = scope["path"]
        # A protocol may answer paths near its own in its own way (EML: NestJS's "Cannot POST ...").
        ep, longest = None, -1
        for e in rt.endpoints if rt else ():
            claim = e.adapter.owns(path, e.section)
            if claim is not None and claim > longest:
                ep, longest = e, claim
        if ep is not None:
            reply = ep.adapter.error("not_found", scope["method"], _target(scope), ep.section)
        else:
            reply = Reply(404, b'{"error":"not found"}', "application/json")
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), None)
        await _send(send, reply, _request_id(given))

    async def webhooks(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        rt = state.runtime
        ep = rt.routes.get(_route_key(scope["path"])) if rt else None
        if ep is None:
            return await not_found(rt, scope, send)
        await webhook(ep, rt, scope, receive, send)

    def ops_refused(request: Request) -> Response | None:
        """403 for a source outside ``server.ops_allow_networks`` (checked like the webhooks' allow-lists)."""
        rt = state.runtime
        if rt is None:
            return None
        if allowed(_source(request.scope, rt), rt.ops_networks):
            return None
        return Response(
            b'{"error":"source address not allowed"}', status_code=403, media_type="application/json"
        )

    async def healthz(request: Request) -> Response:
        if refused := ops_refused(request):
            return refused
        return Response(b'{"status":"alive"}', media_type="application/json")

    async def readyz(request: Request) -> Response:
        if refused := ops_refused(request):
            return refused
        rt = state.runtime
        if not state.ready or rt is None:
            body = {"status": "stopping" if state.stopping else "starting"}
            return Response(_encode(body), status_code=503, media_type="application/json")
        store = store_status(rt.ctx.store)
        body = {
            # Still 200 when degraded: the gateway still answers every webhook, and a load balancer
            # must not drop every replica because their shared Redis is down.
            "status": "degraded" if store == "degraded" else "ok",
            "config": {"version": rt.loaded.version, "loaded_at": rt.loaded_at.isoformat(timespec="seconds")},
            "dependencies": {"store": store},
        }
        if store == "degraded":
            body["degraded"] = ["redis"]
        return Response(_encode(body), media_type="application/json")

    async def journal_endpoint(request: Request) -> Response:
        """The decision journal, newest first: ``last``, ``call``, ``caller``, ``rule``, ``since``."""
        if refused := ops_refused(request):
            return refused
        rt = state.runtime
        token = rt.loaded.config.server.admin_token if rt is not None else ""
        if token:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
                return Response(
                    b'{"error":"a valid admin token is required (Authorization: Bearer <server.admin_token>)"}',
                    status_code=401,
                    media_type="application/json",
                    headers={"www-authenticate": "Bearer"},
                )
        if state.journal is None:
            return Response(
                b'{"error":"the journal is off ([journal] enabled = false)"}',
                status_code=404,
                media_type="application/json",
            )
        try:
            filters = Filters.parse(
                request.query_params, max_last=max(100_000, rt.loaded.config.journal.max_entries)
            )
        except ValueError as exc:
            return Response(_encode({"error": str(exc)}), status_code=400, media_type="application/json")
        try:
            entries = await state.journal.read(**msgspec.structs.asdict(filters))
        except StoreError:
            return Response(
                b'{"error":"the journal cannot be read now: Redis does not answer"}',
                status_code=503,
                media_type="application/json",
            )
        return Response(page_json(entries), media_type="application/json")

    async def metrics_endpoint(request: Request) -> Response:
        if refused := ops_refused(request):
            return refused
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    app = Gateway(
        state,
        webhook,
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
            Route("/journal", journal_endpoint),
        ],
        lifespan=lifespan,
    )
    # Webhook paths come from the config (and may change on reload), match as Express does, and never
    # redirect: a 307 to a telephony platform is a failed call.
    app.router.redirect_slashes = False
    app.router.default = webhooks
    app.state.gateway = state
    return app


def describe(app: Starlette) -> dict[str, str]:
    """What the running app serves, for the server's ``started`` line."""
    state: State = app.state.gateway
    rt = state.runtime
    if rt is None:
        return {}
    return {"config": str(rt.loaded.path), "version": rt.loaded.version, "store": store_status(rt.ctx.store)}


def from_env() -> Starlette:
    """Factory for uvicorn workers: the config path comes in ``$ROUTING_GATEWAY_CONFIG``.
    Workers are fresh processes, so each sets up its own logging."""
    setup_logs()
    return create_app(os.environ.get(CONFIG_ENV, "config.toml"), worker=True)
