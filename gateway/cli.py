"""The ``routing-gateway`` command: serve, check a config, or dry-run a request."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.metadata
import logging
import os
import sys
import zoneinfo

import httpx
import msgspec

import adapters
from adapters import Rejected
from core.decide import Context, Trace, decide
from core.errors import ConfigError
from core.lookup import CrmLookup
from core.store import DryRunStore
from gateway import config as config_mod
from gateway.app import CONFIG_ENV, make_store
from gateway.changes import add_commands
from gateway.logs import event
from gateway.logs import setup as setup_logs


def _default_config() -> str:
    return os.environ.get(CONFIG_ENV, "config.toml")


def _problems(path: str, exc: ConfigError) -> None:
    print(f"{path}: {len(exc.problems)} problem{'s' * (len(exc.problems) != 1)}", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


def _load(path: str) -> config_mod.Loaded | None:
    """The config, or None after listing its problems on stderr. Warnings are for ``check`` to show."""
    try:
        return config_mod.load(path)
    except ConfigError as exc:
        _problems(path, exc)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    loaded = _load(args.path)
    if loaded is None:
        return 1
    r = loaded.rules
    print(
        f"{args.path}: ok (version {loaded.version}; {len(r.rules)} rules, {len(r.services)} services, "
        f"{len(r.callers)} known callers, {len(r.hours)} schedules)"
    )
    if loaded.config.tests:
        print(f"{len(loaded.config.tests)} tests pass")
    for warning in loaded.warnings:
        print(f"warning: {warning}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    # Every line a server writes to stderr is JSON, problems with the config included.
    setup_logs()
    try:
        loaded = config_mod.load(args.config)
    except ConfigError as exc:
        event(
            "not started",
            logging.ERROR,
            config=args.config,
            problems=exc.problems,
            note="fix the config and start again",
        )
        return 1
    for warning in loaded.warnings:
        event("config warning", logging.WARNING, warning=warning)
    from gateway.server import serve

    store = loaded.config.store
    if (args.workers or loaded.config.server.workers) > 1 and not (store.redis_url or store.sentinels):
        event(
            "config warning",
            logging.WARNING,
            warning="several workers without Redis: each keeps its own "
            "round-robin positions and call records",
        )
    serve(loaded, host=args.host, port=args.port, workers=args.workers)
    return 0


def _guess_protocol(body: bytes) -> str:
    """The protocol whose requests look like ``body`` (EML: it has callID or rclassification); else
    the first one served (SmartRouting)."""
    try:
        value = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        value = None
    # The most specific first: a body with only callID is EML's, whatever else it has.
    for adapter in reversed(adapters.registered()):
        if adapter.looks_like(value):
            return adapter.NAME
    return adapters.names()[0]


async def _route(
    loaded: config_mod.Loaded, protocol: str, body: bytes, at: dt.datetime, show_all: bool
) -> int:
    adapter = adapters.get(protocol)
    try:
        query = adapter.parse(body, "application/json")
    except Rejected as exc:
        print(f"protocol: {protocol}\nrequest refused\nreply: {exc.reply.status}\n{exc.reply.body.decode()}")
        return 2
    # The real pipeline on a store that reads shared state (round-robin positions, sticky entries, call
    # records, cached lookups) but writes nothing: a dry run changes no state. It may ask the CRM, which
    # only reads.
    real = make_store(loaded.config.store)
    store = DryRunStore(real)
    trace = Trace()
    cfg = loaded.config
    async with httpx.AsyncClient() as http:
        lookup = CrmLookup(cfg.lookup, store, http) if cfg.lookup else None
        ctx = Context(rules=loaded.rules, store=store, lookup=lookup, clock=lambda: at, flights={})
        deadline = asyncio.get_running_loop().time() + cfg.server.deadline_ms / 1000
        remember_s = adapter.retry_window_s(config_mod.section(cfg, adapter))
        try:
            decision = await decide(query, ctx, remember_s=remember_s, deadline=deadline, trace=trace)
        finally:
            await real.close()
    reply = adapter.render(decision, query)
    print(f"protocol: {protocol}")
    print(f"time: {at.isoformat(timespec='seconds')}")
    if query.caller:
        known = "known" if trace.known else "not in the directory"
        tags = ", ".join(sorted(trace.caller.tags)) or "none"
        attrs = ", ".join(sorted(trace.caller.attributes)) or "none"
        print(f"caller: {known}; tags: {tags}; attributes: {attrs}")
    if trace.lookup is not None:
        how = {
            "hit": "cached answer",
            "stale": "cached answer past its TTL",
            "miss": "asked the CRM: found",
            "not_found": "asked the CRM: not found",
            "rejected": "the CRM refused the question",
            "failed": "the CRM failed",
            "timeout": "the CRM timed out",
            "open": "not asked: the CRM keeps failing",
            "skipped": "not asked: not a phone number",
        }.get(trace.lookup, trace.lookup)
        print(f"lookup: {trace.lookup} ({how})")
    if show_all:
        print("rules:")
        for v in trace.rules:
            if v.verdict == "not reached":
                text = "not reached (an earlier rule decided)"
            elif v.verdict == "matches":
                text = "matches: decides"
            else:
                text = f"no: when.{v.failed} does not hold"
            print(f"  {'*' if v.verdict == 'matches' else '-'} {v.name}: {text}")
            for note in v.notes:
                print(f"      {note}")
    print(f"rule: {decision.rule or '(none matched)'}")
    if trace.replayed:
        print("replayed: this call was answered before; its first answer is given again")
    if trace.fallback:
        print(f"fallback: {trace.fallback} (the decision could not be made; answered without it)")
    if trace.service is not None:
        svc = loaded.rules.services[trace.service]
        about = [f"strategy {svc.strategy}"]
        if svc.weights:
            about.append(f"weights {', '.join(map(str, svc.weights))}")
        if svc.sticky:
            about.append(f"sticky by {svc.sticky} for {svc.sticky_s} s")
        print(f"service: {trace.service} ({'; '.join(about)})")
        dry = " (a dry run: the counter is not advanced)" if trace.turn is not None else ""
        print(f"pick: {trace.pick}{dry}")
        whose = "caller number" if svc.sticky == "caller" else "customerID"
        sticky = {
            "hit": f"this {svc.sticky} got this number from the pool last time, and still does",
            "new": f"nothing kept for this {svc.sticky} yet: the strategy chose; a real call keeps it "
            f"{svc.sticky_s} s (a dry run keeps nothing)",
            "none": f"the request has no {whose}: not sticky",
        }.get(trace.sticky or "")
        if sticky:
            print(f"sticky: {sticky}")
    print(f"reply: {reply.status}")
    if reply.body:
        print(reply.body.decode())
    if show_all:
        # The same decision as the other webhooks would render it, for rule bases shared by both.
        for other in adapters.registered():
            name = other.NAME
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
            zone = _local_zone(loaded)
            at = at.replace(tzinfo=zoneinfo.ZoneInfo(zone) if zone != "UTC" else dt.UTC)
            print(
                f"--at has no offset: read in {zone}"
                + (
                    ", the schedules' zone"
                    if zone != "UTC"
                    else " (the schedules use several zones, or none)"
                )
            )
    return asyncio.run(_route(loaded, protocol, body, at, args.explain))


def _local_zone(loaded: config_mod.Loaded) -> str:
    """The one zone every schedule uses, else UTC: a time without an offset is read as the operator means it."""
    zones = {s.timezone for s in loaded.config.schedules.values()}
    return zones.pop() if len(zones) == 1 else "UTC"


EXAMPLES = """examples:
  routing-gateway serve --config /etc/routing-gateway/config.toml
  routing-gateway check config.toml
  routing-gateway test candidate.toml
  routing-gateway journal --call c1
  routing-gateway replay candidate.toml --since 1d
  routing-gateway route --explain '{"anum": "+358501231234", "targetid": "SALES_QUEUE"}'
  routing-gateway route --at 2026-11-23T18:30 '{"callID": "c1", "rclassification": "Sales", "callTime": "35"}'
"""


def _version() -> str:
    try:
        return importlib.metadata.version("routing-gateway")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="routing-gateway",
        description="Call-routing webhook gateway: Enreach SmartRouting and EML call/request from one rule base.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config_help = "config file (default: $ROUTING_GATEWAY_CONFIG, else config.toml; now %(default)s)"

    s = sub.add_parser(
        "serve",
        help="serve both webhooks",
        description="Serve both webhooks until SIGTERM; SIGHUP reloads the config.",
    )
    s.add_argument("--config", default=_default_config(), help=config_help)
    s.add_argument("--host", help="listen address (default: server.host)")
    s.add_argument("--port", type=int, help="listen port (default: server.port)")
    s.add_argument("--workers", type=int, help="worker processes (default: server.workers)")
    s.set_defaults(run=cmd_serve)

    c = sub.add_parser(
        "check",
        help="validate a config and list every problem",
        description="Validate a config: exit 0 when it is valid (warnings listed), 1 with every "
        "problem listed.",
    )
    c.add_argument(
        "path", nargs="?", default=_default_config(), help=config_help.replace("config file", "the file")
    )
    c.set_defaults(run=cmd_check)

    r = sub.add_parser(
        "route",
        help="dry run: which rule a request matches, and the reply",
        description="Decide one request as the gateway would, without changing any shared state.",
    )
    r.add_argument("body", nargs="?", help="the request body as JSON; '-' or nothing reads standard input")
    r.add_argument("--config", default=_default_config(), help=config_help)
    r.add_argument(
        "--protocol",
        choices=adapters.names(),
        help="default: eml when the body has callID or rclassification",
    )
    r.add_argument(
        "--at",
        help="decide as at this ISO time, e.g. 2026-11-23T10:00:00+02:00; without an offset, "
        "in the schedules' zone",
    )
    r.add_argument("--explain", action="store_true", help="show every rule and why it did or did not match")
    r.set_defaults(run=cmd_route)
    add_commands(sub, _default_config, config_help)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "workers", None) is not None and args.workers < 1:
        print("--workers: at least 1", file=sys.stderr)
        return 2
    return args.run(args)
