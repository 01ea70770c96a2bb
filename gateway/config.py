"""``config.toml``: one Struct per table, strict loading, every problem listed with its key path."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any

import msgspec
import msgspec.inspect as mi

import adapters
from core.checks import ConfigTest, Failure, Refused, check_tests, run_tests_blocking
from core.decide import RuleBase
from core.directory import AttrValue, CallerInfo, from_table, parse_csv
from core.errors import ConfigError
from core.journal import JournalConfig
from core.lookup import LookupConfig
from core.query import Decision, RoutingQuery
from core.rules import Rule, compile_rule, template_names
from core.schedules import Schedule, compile_schedule
from core.services import Service, check_service
from gateway.schema import check, key_path, prune

Networks = list[str]
RESERVED = ("/healthz", "/readyz", "/metrics", "/journal")
# Loopback and the private ranges: where monitoring usually runs.
OPS_NETWORKS = ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")


class ServerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    max_body_bytes: Annotated[int, msgspec.Meta(ge=256, le=16 * 1024 * 1024)] = 102400
    deadline_ms: Annotated[int, msgspec.Meta(ge=10, le=4500)] = 1500
    tls_cert: str = ""
    tls_key: str = ""
    trusted_proxies: Networks = []
    access_log: bool = False
    # Section 8 of SPEC: what one client may cost the others.
    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1024 * 1024)] = 16384
    max_headers: Annotated[int, msgspec.Meta(ge=8, le=1000)] = 100
    read_timeout_ms: Annotated[int, msgspec.Meta(ge=100, le=120_000)] = 5000
    keepalive_timeout_s: Annotated[int, msgspec.Meta(ge=1, le=3600)] = 5
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1000
    shutdown_timeout_s: Annotated[int, msgspec.Meta(ge=1, le=300)] = 10
    ops_allow_networks: Networks = msgspec.field(default_factory=lambda: list(OPS_NETWORKS))
    # A Bearer token the operational endpoints that show calls (GET /journal) also ask for; empty: none.
    admin_token: str = ""


class StoreConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    redis_url: str = ""
    key_prefix: str = "rgw:"
    timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=5000)] = 100
    cluster: bool = False
    sentinels: list[str] = []
    sentinel_master: str = ""
    retry_after_s: Annotated[float, msgspec.Meta(ge=0.1, le=300)] = 2.0
    max_entries: Annotated[int, msgspec.Meta(ge=100, le=10_000_000)] = 1_000_000
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 64


class DirectoryConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    files: list[str] = []


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The tables every config has; :func:`config_type` adds one per registered protocol."""

    server: ServerConfig = ServerConfig()
    store: StoreConfig = StoreConfig()
    directory: DirectoryConfig = DirectoryConfig()
    services: dict[str, Service] = {}
    callers: dict[str, dict[str, AttrValue | list[str]]] = {}
    schedules: dict[str, Schedule] = {}
    lookup: LookupConfig | None = None
    rules: list[Rule] = []
    journal: JournalConfig = JournalConfig()
    tests: list[ConfigTest] = []


_types: dict[tuple[str, ...], tuple[type[Config], mi.Type]] = {}


def config_type() -> tuple[type[Config], mi.Type]:
    """The config's type with a table for each registered protocol (``[smartrouting]``, ``[eml]``, ...),
    and its schema for :func:`gateway.schema.check`."""
    key = adapters.names()
    found = _types.get(key)
    if found is None:
        t = msgspec.defstruct(
            "Config",
            [(a.NAME, a.Config, msgspec.field(default_factory=a.Config)) for a in adapters.registered()],
            bases=(Config,),
            frozen=True,
            forbid_unknown_fields=True,
            module=__name__,
        )
        found = _types[key] = (t, mi.type_info(t))
    return found


def section(cfg: Config, adapter: adapters.Adapter) -> Any:
    """``cfg``'s table for ``adapter``."""
    return getattr(cfg, adapter.NAME)


class Loaded(msgspec.Struct, frozen=True):
    """A loaded, valid config: the tables as written, the compiled rule base, a version and warnings."""

    path: Path
    config: Config
    rules: RuleBase
    version: str
    warnings: list[str]


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _substitute(value: Any, path: str, problems: list[str]) -> Any:
    """Replace ``${NAME}`` in every string with the environment variable NAME."""
    if isinstance(value, str):

        def env(m: re.Match) -> str:
            found = os.environ.get(m[1])
            if found is None:
                problems.append(f"{path}: environment variable {m[1]} is not set")
                return m[0]  # kept, so that no check after this one reports the value again
            return found

        return _ENV.sub(env, value)
    if isinstance(value, dict):
        return {k: _substitute(v, key_path(path, k), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    return value


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _sendable(value: str) -> bool:
    """Whether an HTTP header can carry ``value``: no control characters but tab."""
    return all(c == "\t" or (c >= " " and c != "\x7f") for c in value)


def _networks(items: list[str], path: str, problems: list[str]) -> None:
    for i, text in enumerate(items):
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            problems.append(f"{path}[{i}]: {text!r} is not an address or CIDR network")


def _endpoints(cfg: Config, problems: list[str], warnings: list[str]) -> None:
    """Each protocol's table: its networks, its credentials, its own checks; and paths that neither
    hide each other nor the operational endpoints (webhook paths match in any letter case and with a
    trailing slash)."""
    taken: dict[str, str] = {}
    for adapter in adapters.registered():
        name = adapter.NAME
        table = section(cfg, adapter)
        _networks(table.allow_networks, f"{name}.allow_networks", problems)
        for i, key in enumerate(table.api_keys):
            if not key.strip():
                problems.append(f"{name}.api_keys[{i}]: empty")
            elif key != key.strip(" \t"):
                # Clients' keys are trimmed before they are compared: this one could never match.
                problems.append(f"{name}.api_keys[{i}]: spaces or tabs around a key are not part of it")
            elif not _sendable(key):
                problems.append(
                    f"{name}.api_keys[{i}]: a control character (a line break?) no client can send"
                )
        for user, password in getattr(table, "basic_auth", {}).items():
            if not password:
                problems.append(f"{key_path(name + '.basic_auth', user)}: empty password")
            if not user or ":" in user:
                problems.append(
                    f"{key_path(name + '.basic_auth', user)}: a user name is not empty and has no ':'"
                )
        before = len(problems)
        adapter.check_config(table, problems, warnings)
        if len(problems) > before:
            continue  # its paths are not checked against the others while they are invalid
        for setting, path in adapter.paths(table).items():
            key = path.lower().rstrip("/")
            where = f"{name}.{setting}"
            if key in RESERVED:
                problems.append(f"{where}: {path} is reserved for the gateway itself")
            elif key in taken:
                problems.append(f"{where}: the same path as {taken[key]}")
            taken[key] = f"{name}'s {path}"


def _semantics(
    cfg: Config, written: dict[str, set[str]], base: Path, problems: list[str], warnings: list[str]
) -> tuple[RuleBase, bytes]:
    """Checks across tables (references, files, networks) and the compiled rule base.

    ``written`` names every service and schedule written, valid or not, so a broken one is reported once
    and not again as missing wherever a rule names it."""
    _networks(cfg.server.trusted_proxies, "server.trusted_proxies", problems)
    _networks(cfg.server.ops_allow_networks, "server.ops_allow_networks", problems)
    if bool(cfg.server.tls_cert) != bool(cfg.server.tls_key):
        problems.append("server: tls_cert and tls_key go together; give both or neither")
    for key in ("tls_cert", "tls_key"):
        name = getattr(cfg.server, key)
        if name and not (base / name).is_file():
            problems.append(f"server.{key}: no file {name!r}")
    scheme = cfg.store.redis_url.partition("://")[0]
    if cfg.store.redis_url and scheme not in ("redis", "rediss", "unix"):
        problems.append("store.redis_url: must start with redis://, rediss:// or unix://")
    for i, item in enumerate(cfg.store.sentinels):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            problems.append(f'store.sentinels[{i}]: {item!r} is not "host:port"')
    if cfg.store.sentinels and not cfg.store.sentinel_master:
        problems.append("store.sentinel_master: required with store.sentinels")
    if cfg.store.timeout_ms >= cfg.server.deadline_ms:
        # A Redis call the deadline always cuts short never fails on its own: the circuit would never open.
        problems.append(
            f"store.timeout_ms: {cfg.store.timeout_ms} must be below server.deadline_ms ({cfg.server.deadline_ms})"
        )
    if cfg.store.cluster and cfg.store.sentinels:
        problems.append("store: cluster and sentinels exclude each other")
    if (cfg.store.cluster or cfg.store.sentinels) and not cfg.store.redis_url and not cfg.store.sentinels:
        problems.append("store.redis_url: required with cluster = true")
    _endpoints(cfg, problems, warnings)
    check_tests(cfg.tests, [r.name for r in cfg.rules], adapters.names(), problems)

    if cfg.lookup is not None:
        if not cfg.lookup.url.startswith(("http://", "https://")):
            problems.append("lookup.url: must start with http:// or https://")
        if "{caller}" not in cfg.lookup.url:
            problems.append("lookup.url: must contain {caller}, where the caller's number goes")
        if not cfg.lookup.tags_field:
            problems.append("lookup.tags_field: must not be empty")
        for header, value in cfg.lookup.headers.items():
            where = key_path("lookup.headers", header)
            if not _TOKEN.fullmatch(header):
                problems.append(f"{where}: not a valid header name")
            if not (value.isascii() and _sendable(value)):
                # Never sent: every lookup would fail before reaching the CRM (and be blamed on it).
                problems.append(f"{where}: a header value is ASCII without control characters")

    hours = {}
    for name, sched in cfg.schedules.items():
        compiled = compile_schedule(sched, key_path("schedules", name), problems)
        if compiled is not None:
            hours[name] = compiled
    for name, svc in cfg.services.items():
        check_service(key_path("services", name), svc, problems)

    directory: dict[str, CallerInfo] = {}
    files_digest = hashlib.sha256()
    for i, name in enumerate(cfg.directory.files):
        label = f"directory.files[{i}] ({name})"
        try:
            # Read once: the version hashes exactly the bytes that were loaded.
            data = (base / name).read_bytes()
        except OSError as exc:
            problems.append(f"{label}: cannot be read ({exc.strerror or exc})")
            continue
        files_digest.update(name.encode() + b"\0" + data)
        directory.update(parse_csv(data, label, problems))
    directory.update(from_table(cfg.callers, "callers", problems))

    _attribute_sources(cfg, directory, problems)
    rules = []
    seen: set[str] = set()
    for i, rule in enumerate(cfg.rules):
        path = f"rules[{i}]"
        if rule.name in seen:
            problems.append(f"{path}.name: {rule.name!r} is the name of an earlier rule")
        seen.add(rule.name)
        w = rule.when
        for key in ("open", "closed"):
            names = getattr(w, key)
            for n in [names] if isinstance(names, str) else names or ():
                if n not in written["schedules"]:
                    problems.append(f"{path}.when.{key}: no schedule {n!r} in [schedules]")
        protocols = w.protocol
        for p in [protocols] if isinstance(protocols, str) else protocols or ():
            if p not in adapters.names():
                problems.append(f"{path}.when.protocol: {p!r} is not one of {', '.join(adapters.names())}")
        if rule.then.service is not None and rule.then.service not in written["services"]:
            problems.append(f"{path}.then.service: no service {rule.then.service!r} in [services]")
        rules.append(compile_rule(rule, path, problems))
    return RuleBase(rules=tuple(rules), services=dict(cfg.services), callers=directory, hours=hours), (
        files_digest.digest()
    )


def _attribute_sources(cfg: Config, directory: dict[str, CallerInfo], problems: list[str]) -> None:
    """``{caller.NAME}`` must name an attribute that some source can give: a ``[callers]`` entry, a column
    of a directory file, or ``lookup.attributes``; any other name is always unknown, so never rendered."""
    known = set(cfg.lookup.attributes if cfg.lookup is not None else ())
    for info in directory.values():
        known.update(info.attributes)
    for i, rule in enumerate(cfg.rules):
        t = rule.then
        strings = [(k, getattr(t, k)) for k in ("target", "fail_target", "required_agent", "tts", "msi")]
        strings += [(f"preferred_agents[{j}]", a) for j, a in enumerate(t.preferred_agents or ())]
        for key, text in strings:
            for name in template_names(text or ""):
                if name not in known:
                    problems.append(
                        f"rules[{i}].then.{key}: no caller source has the attribute {name!r} "
                        "(not [callers], not a directory file's columns, not lookup.attributes)"
                    )


_RULE_PATH = re.compile(r"^rules\[(\d+)\]")


def _name_rules(problems: list[str], raw: dict) -> list[str]:
    """``rules[7].then.service`` as ``rules[7] (key-account-customers).then.service``: rules count from 0."""
    written = raw.get("rules")
    if not isinstance(written, list):
        return problems

    def named(m: re.Match) -> str:
        i = int(m[1])
        rule = written[i] if i < len(written) else None
        name = rule.get("name") if isinstance(rule, dict) else None
        return f"{m[0]} ({name})" if isinstance(name, str) and name else m[0]

    return [_RULE_PATH.sub(named, p, count=1) for p in problems]


def _msgspec_path(exc: msgspec.ValidationError) -> str:
    """``Expected `float` >= 0.1 - at `$.store.retry_after_s``` as ``store.retry_after_s: expected ...``."""
    text = str(exc)
    message, _, where = text.rpartition(" - at `$")
    if not where:
        return f"(top): {text}"
    return f"{where.rstrip('`').lstrip('.')}: {message[0].lower()}{message[1:]}"


def parse_test_request(protocol: str, fields: dict[str, Any]) -> RoutingQuery:
    """A config test's request table, read as its protocol reads a body."""
    try:
        return adapters.get(protocol).parse(msgspec.json.encode(fields), "application/json")
    except adapters.Rejected as exc:
        body = exc.reply.body
        raise Refused(exc.reply.status, msgspec.json.decode(body) if body else None) from None


def render_test_reply(
    protocol: str, decision: Decision, query: RoutingQuery
) -> tuple[int, dict[str, Any] | None]:
    reply = adapters.get(protocol).render(decision, query)
    return reply.status, msgspec.json.decode(reply.body) if reply.body else None


def run_tests(loaded: Loaded) -> list[Failure]:
    """The config's ``[[tests]]``, run against its own rules on a dry-run store (SPEC section 9)."""
    cfg = loaded.config

    def remember_s(protocol: str) -> float:
        adapter = adapters.get(protocol)
        return adapter.retry_window_s(section(cfg, adapter))

    return run_tests_blocking(
        cfg.tests, loaded.rules, parse_test_request, render_test_reply, remember_s=remember_s
    )


def load(path: str | os.PathLike, *, tests: bool = True) -> Loaded:
    """Read, check and compile the config at ``path``; raise :class:`ConfigError` listing every problem.
    With ``tests``, a config whose ``[[tests]]`` fail is refused too, each failure listed."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot be read ({exc.strerror or exc})"]) from None
    if not data.strip():
        # Valid TOML, but never meant: an editor or a deploy tool that truncates before it writes gives
        # an empty file for a moment, and a reload must not serve no rules and no credentials meanwhile.
        raise ConfigError([f"{path}: the file is empty"])
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError([f"{path}: not valid TOML ({exc})"]) from None
    problems: list[str] = []
    raw = _substitute(raw, "", problems)
    config_cls, schema = config_type()
    check(raw, schema, "", problems)
    # With problems, the parts that do convert still get the cross-table checks, so that
    # one run lists every problem.
    try:
        cfg = msgspec.convert(raw if not problems else prune(raw, schema), config_cls)
    except msgspec.ValidationError as exc:
        # The check above reads every constraint from the same schema, so this is only a backstop: a
        # constraint it does not know yet is still a listed problem, never a traceback.
        raise ConfigError(_name_rules([*problems, _msgspec_path(exc)], raw)) from None
    warnings: list[str] = []
    written = {k: set(raw[k]) if isinstance(raw.get(k), dict) else set() for k in ("services", "schedules")}
    rules, files_digest = _semantics(cfg, written, path.parent, problems, warnings)
    if problems:
        raise ConfigError(_name_rules(problems, raw))
    version = hashlib.sha256(data + files_digest).hexdigest()[:12]
    loaded = Loaded(path=path, config=cfg, rules=rules, version=version, warnings=warnings)
    if tests and cfg.tests:
        failed = [line for failure in run_tests(loaded) for line in failure.problems()]
        if failed:
            raise ConfigError(failed)
    return loaded
