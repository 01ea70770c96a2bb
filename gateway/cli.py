"""``routing-gateway``: serve, check a config, or dry-run a request."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys

import httpx
import msgspec

from adapters import PROTOCOLS, Rejected, eml, smartrouting
from core.decide import Context, apply, caller_info, explain, first_match
from core.errors import ConfigError
from core.lookup import CrmLookup
from core.store import DryRunStore
from gateway import config as config_mod
from gateway.app import CONFIG_ENV, make_store
from gateway.logs import setup as setup_logs

ADAPTERS = {"smartrouting": smartrouting, "eml": eml}


def _default_config() -> str:
    return os.environ.get(CONFIG_ENV, "config.toml")


def _load(path: str) -> config_mod.Loaded | None:
    try:
        loaded = config_mod.load(path)
    except ConfigError as exc:
        print(f"{path}: {len(exc.problems)} problem{'s' * (len(exc.problems) != 1)}", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return loaded


def cmd_check(args: argparse.Namespace) -> int:
    loaded = _load(args.path)
    if loaded is None:
        return 1
    r = loaded.rules
    print(
        f"{args.path}: ok (version {loaded.version}; {len(r.rules)} rules, {len(r.services)} services, "
        f"{len(r.callers)} known callers, {len(r.hours)} schedules)"
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    loaded = _load(args.config)
    if loaded is None:
        print("not started: fix the config and start again", file=sys.stderr)
        return 1
    from gateway.server import serve

    store = loaded.config.store
    if (args.workers or loaded.config.server.workers) > 1 and not (store.redis_url or store.sentinels):
        print("warning: several workers without Redis: each keeps its own round-robin positions and "
              "call records", file=sys.stderr)
    setup_logs()
    serve(loaded, host=args.host, port=args.port, workers=args.workers)
    return 0


def _guess_protocol(body: bytes) -> str:
    try:
        value = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return "smartrouting"
    return "eml" if isinstance(value, dict) and ("rclassification" in value or "callID" in value) else "smartrouting"


async def _route(loaded: config_mod.Loaded, protocol: str, body: bytes, at: dt.datetime, show_all: bool) -> int:
    adapter = ADAPTERS[protocol]
    try:
        query = adapter.parse(body, "application/json")
    except Rejected as exc:
        print(f"protocol: {protocol}\nrequest refused\nreply: {exc.reply.status}\n{exc.reply.body.decode()}")
        return 2
    # Reads shared state (round-robin positions, cached lookups) but writes nothing: a dry run
    # changes no state. It may ask the CRM, which only reads.
    real = make_store(loaded.config.store)
    store = DryRunStore(real)
    lookup_result = None
    async with httpx.AsyncClient() as http:
        lookup = CrmLookup(loaded.config.lookup, store, http) if loaded.config.lookup else None
        ctx = Context(rules=loaded.rules, store=store, clock=lambda: at)
        caller = await caller_info(query, ctx, None)
        if lookup is not None and query.caller:
            found, lookup_result = await lookup.lookup(query.caller, loaded.config.server.deadline_ms / 1000)
            if found is not None:
                caller = caller.merged(found)
    await real.close()
    rule = first_match(query, caller, loaded.rules, at)
    decision = await apply(rule, query, caller, loaded.rules, store)
    reply = adapter.render(decision, query)
    print(f"protocol: {protocol}")
    print(f"time: {at.isoformat(timespec='seconds')}")
    if query.caller:
        known = "known" if query.caller in loaded.rules.callers else "not in the directory"
        tags = ", ".join(sorted(caller.tags)) or "none"
        attrs = ", ".join(sorted(caller.attributes)) or "none"
        print(f"caller: {known}; tags: {tags}; attributes: {attrs}")
    if lookup_result is not None:
        how = {"hit": "cached answer", "stale": "cached answer past its TTL", "miss": "asked the CRM: found",
               "not_found": "asked the CRM: not found", "failed": "the CRM failed", "timeout": "the CRM timed out",
               "open": "not asked: the CRM keeps failing"}[lookup_result]
        print(f"lookup: {lookup_result} ({how})")
    if show_all:
        print("rules:")
        for name, failed in explain(query, caller, loaded.rules, at):
            verdict = "matches" if failed is None else f"no: when.{failed} does not hold"
            print(f"  {'*' if rule is not None and name == rule.name else '-'} {name}: {verdict}")
    print(f"rule: {rule.name if rule else '(none matched)'}")
    if decision.service:
        rr = loaded.rules.services[decision.service].strategy == "round_robin"
        print(f"service: {decision.service}" + (" (round-robin position not advanced)" if rr else ""))
    print(f"reply: {reply.status}")
    if reply.body:
        print(reply.body.decode())
    if show_all:
        # The same decision as the other webhooks would render it, for rule bases shared by both.
        for name, other in ADAPTERS.items():
            if other is not adapter:
                shown = other.render(decision, query)
                print(f"as {name} would answer the same decision: {shown.status}")
                if shown.body:
                    print(shown.body.decode())
    return 0


def cmd_route(args: argparse.Namespace) -> int:
    loaded = _load(args.config)
    if loaded is None:
        return 1
    if args.body in (None, "-"):
        body = sys.stdin.buffer.read()
    else:
        body = args.body.encode()
    protocol = args.protocol or _guess_protocol(body)
    at = dt.datetime.now(dt.UTC)
    if args.at:
        try:
            at = dt.datetime.fromisoformat(args.at)
        except ValueError:
            print(f"--at: {args.at!r} is not an ISO date and time", file=sys.stderr)
            return 2
        if at.tzinfo is None:
            at = at.replace(tzinfo=dt.UTC)
    return asyncio.run(_route(loaded, protocol, body, at, args.explain))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="routing-gateway", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="serve both webhooks")
    s.add_argument("--config", default=_default_config(), help="config file (default: %(default)s)")
    s.add_argument("--host", help="listen address (default: server.host)")
    s.add_argument("--port", type=int, help="listen port (default: server.port)")
    s.add_argument("--workers", type=int, help="worker processes (default: server.workers)")
    s.set_defaults(run=cmd_serve)

    c = sub.add_parser("check", help="validate a config and list every problem")
    c.add_argument("path", nargs="?", default=_default_config())
    c.set_defaults(run=cmd_check)

    r = sub.add_parser("route", help="dry run: which rule a request matches, and the reply")
    r.add_argument("body", nargs="?", help="the request body as JSON; '-' or nothing reads standard input")
    r.add_argument("--config", default=_default_config())
    r.add_argument("--protocol", choices=PROTOCOLS, help="default: eml when the body has callID or rclassification")
    r.add_argument("--at", help="decide as at this ISO time (schedules), e.g. 2026-11-23T10:00:00+02:00")
    r.add_argument("--explain", action="store_true", help="show every rule and why it did or did not match")
    r.set_defaults(run=cmd_route)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "workers", None) is not None and args.workers < 1:
        print("--workers: at least 1", file=sys.stderr)
        return 2
    return args.run(args)
