"""The commands that make a rule change safe (SPEC section 9): ``test``, ``journal`` and ``replay``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable

import httpx
import msgspec

from core.errors import ConfigError, StoreError
from core.journal import Filters, JournalEntry, RedisJournal, from_page_json, line, page_json
from core.replay import replay
from gateway import config as config_mod


def _load(path: str, *, tests: bool = True) -> config_mod.Loaded | None:
    try:
        return config_mod.load(path, tests=tests)
    except ConfigError as exc:
        print(f"{path}: {len(exc.problems)} problem{'s' * (len(exc.problems) != 1)}", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def cmd_test(args: argparse.Namespace) -> int:
    """Run the config's ``[[tests]]`` only: 0 when all pass, 1 with each failure (expected vs got)."""
    loaded = _load(args.path, tests=False)
    if loaded is None:
        return 1
    tests = loaded.config.tests
    if not tests:
        print(f"{args.path}: no [[tests]] to run")
        return 0
    failures = config_mod.run_tests(loaded)
    for failure in failures:
        print(failure)
    print(f"{args.path}: {len(tests) - len(failures)} of {len(tests)} tests pass")
    return 1 if failures else 0


def _params(args: argparse.Namespace, last: int) -> dict[str, str]:
    given = {
        "last": str(last),
        "call": getattr(args, "call", None),
        "caller": getattr(args, "caller", None),
        "rule": getattr(args, "rule", None),
        "since": args.since,
    }
    return {k: v for k, v in given.items() if v is not None}


async def _entries(
    args: argparse.Namespace, loaded: config_mod.Loaded | None, last: int
) -> list[JournalEntry]:
    """Journal entries from a running gateway (``--url``) or from the config's Redis; SystemExit with a
    message when neither can be read."""
    params = _params(args, last)
    if args.url:
        headers = {"authorization": f"Bearer {args.token}"} if args.token else {}
        async with httpx.AsyncClient(timeout=30) as http:
            try:
                r = await http.get(args.url.rstrip("/") + "/journal", params=params, headers=headers)
            except httpx.HTTPError as exc:
                raise SystemExit(f"{args.url}: {type(exc).__name__}: {exc}") from None
        if r.status_code != 200:
            raise SystemExit(f"{args.url}/journal: {r.status_code} {r.text.strip()}")
        return from_page_json(r.content)
    assert loaded is not None
    store = loaded.config.store
    if not store.redis_url and not store.sentinels:
        raise SystemExit(
            f"{loaded.path}: no Redis in [store], so the journal lives in the gateway's own process: "
            "read it with --url http://HOST:PORT"
        )
    try:
        filters = Filters.parse(params, max_last=max(100_000, last))
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    journal = RedisJournal.connect(
        store.redis_url,
        store.key_prefix,
        cluster=store.cluster,
        sentinels=store.sentinels,
        master=store.sentinel_master,
        timeout_s=max(1.0, store.timeout_ms / 1000),
    )
    try:
        return await journal.read(**msgspec.structs.asdict(filters))
    except StoreError as exc:
        raise SystemExit(f"the journal in Redis cannot be read: {exc}") from None
    finally:
        await journal.close()


def cmd_journal(args: argparse.Namespace) -> int:
    # From a running gateway the config is not needed (nor its secrets).
    loaded = None if args.url else _load(args.config, tests=False)
    if loaded is None and not args.url:
        return 1
    entries = asyncio.run(_entries(args, loaded, args.last))
    if args.json:
        sys.stdout.buffer.write(page_json(entries) + b"\n")
    else:
        for e in entries:
            print(line(e))
        if not entries:
            print("no entries", file=sys.stderr)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    loaded = None if args.url else _load(args.config, tests=False)
    if loaded is None and not args.url:
        return 1
    # The candidate's own tests do not stop a replay: what it would change is the question.
    candidate = _load(args.candidate, tests=False)
    if candidate is None:
        return 1
    last = args.last or max(100_000, (loaded or candidate).config.journal.max_entries)
    entries = asyncio.run(_entries(args, loaded, last))
    # Oldest first: a rotation advances in the order the calls came.
    report = asyncio.run(replay(list(reversed(entries)), candidate.rules))
    if args.json:
        sys.stdout.buffer.write(report.json() + b"\n")
    else:
        print(report.text())
    return 1 if args.fail_on_change and report.changed else 0


def add_commands(
    sub: argparse._SubParsersAction, default_config: Callable[[], str], config_help: str
) -> None:
    """``test``, ``journal`` and ``replay`` on the ``routing-gateway`` command."""
    t = sub.add_parser(
        "test",
        help="run the config's [[tests]] only",
        description="Run the [[tests]] of a config against its own rules on a dry-run store: exit 0 when "
        "all pass, 1 with each failure (expected and got).",
    )
    t.add_argument(
        "path", nargs="?", default=default_config(), help=config_help.replace("config file", "the file")
    )
    t.set_defaults(run=cmd_test)

    def source(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config", default=default_config(), help=config_help + "; its [store] names the Redis"
        )
        p.add_argument(
            "--url", help="read the journal of a running gateway instead, e.g. http://127.0.0.1:8080"
        )
        p.add_argument("--token", help="server.admin_token of that gateway, when it has one")
        p.add_argument("--since", help="only entries this recent: 15m, 2h, 1d, or an ISO time with offset")

    j = sub.add_parser(
        "journal",
        help="show journaled decisions",
        description="Show the decision journal, newest first: from the Redis of --config, or from a running "
        "gateway at --url (a journal in process lives only there).",
    )
    source(j)
    j.add_argument("--last", type=int, default=20, help="at most this many entries (default %(default)s)")
    j.add_argument("--call", help="an EML callID")
    j.add_argument("--caller", help="a caller number, in any written form")
    j.add_argument("--rule", help='the rule that decided ("" for none)')
    j.add_argument("--json", action="store_true", help='print {"entries": [...]}')
    j.set_defaults(run=cmd_journal)

    r = sub.add_parser(
        "replay",
        help="decide journaled calls again under a candidate config",
        description="Decide every journaled call again under CANDIDATE, at its recorded time with its "
        "recorded caller facts, on a dry-run store (nothing shared is written), and report what would "
        "change, grouped by (rule, target or pool) before and after.",
    )
    r.add_argument("candidate", help="the candidate config file")
    source(r)
    r.add_argument("--last", type=int, help="only the newest N calls (default: the whole journal)")
    r.add_argument("--json", action="store_true", help='print {"calls", "changed", "groups": [...]}')
    r.add_argument("--fail-on-change", action="store_true", help="exit 1 when any call would change")
    r.set_defaults(run=cmd_replay)
