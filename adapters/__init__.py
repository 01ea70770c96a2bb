"""Protocol adapters: one module per protocol, each turning its requests into a
``core.RoutingQuery`` and a ``core.Decision`` into its replies. Nothing here knows a rule.

Every adapter satisfies :class:`Adapter` (a module does, by its module-level names) and is
:func:`register`-ed; the config, the app and the CLI know protocols only through :func:`registered`.
A new protocol is one module here and one ``register`` call.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

import msgspec

from core.query import Decision, RoutingQuery


class Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What every protocol's table in ``config.toml`` holds; an adapter's own table type adds to it
    (every field with a default: a protocol left out of the file is served with its defaults)."""

    api_keys: list[str] = []
    allow_networks: list[str] = []


class Reply(NamedTuple):
    """An HTTP answer, protocol-rendered. A rendered decision also says what it answered, for the
    decision log and metrics: ``outcome`` (``routed``, ``default``, ``not_found``, ``disconnect``) and
    ``answer``, the fields of the reply worth logging (the target, the number, the ids)."""

    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    outcome: str | None = None
    answer: tuple[tuple[str, str], ...] = ()


class Rejected(Exception):
    """The request is refused; ``reply`` is the protocol's own error answer."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


@functools.lru_cache(maxsize=256)
def media_type(value: str | None) -> tuple[str, str | None]:
    """``application/json; charset=UTF-8`` -> (``application/json``, ``utf-8``). Remembered: clients
    send the same few values again and again."""
    if not value:
        return "", None
    kind, _, params = value.partition(";")
    charset = None
    for param in params.split(";"):
        name, _, v = param.partition("=")
        if name.strip().lower() == "charset":
            charset = v.strip().strip('"').lower()
    return kind.strip().lower(), charset


class Adapter(Protocol):
    """One protocol: its name and config table, where its requests come and how they authenticate,
    and the translation between its bodies and the core's query and decision."""

    NAME: str
    """As ``when.protocol`` spells it; also the name of its table in ``config.toml``."""
    Config: type[Section]
    """Its table, ``[NAME]``."""
    API_KEY_HEADER: str
    """The header its API keys come in (lower case)."""
    AUTH_SCHEMES: tuple[str, ...]
    """Authorization schemes it takes besides the key header: ``bearer`` (an API key), ``basic``
    (the table's ``basic_auth`` users)."""

    def paths(self, section: Any) -> dict[str, str]:
        """The paths it serves under its table, each by the key of the table that sets it (matched in
        any letter case, with or without a trailing slash)."""

    def retry_window_s(self, section: Any) -> float:
        """How long a request's idempotency key keeps its first answer; 0: not remembered."""

    def check_config(self, section: Any, problems: list[str], warnings: list[str]) -> None:
        """Add what is wrong with its table (key paths from ``NAME``) beyond types and bounds."""

    def owns(self, path: str, section: Any) -> int | None:
        """For a request to ``path``, which no route serves: the length of the prefix of it this
        protocol claims (the longest claim answers "not found" in its protocol's shape), or None."""

    def looks_like(self, body: Mapping[str, Any]) -> bool:
        """Whether a decoded body is one of this protocol's requests (``route`` guesses with it)."""

    def check_content_type(self, value: str | None) -> None:
        """Raise :class:`Rejected` for a media type it refuses, before the body is read."""

    def parse(self, body: bytes, content_type: str | None = None) -> RoutingQuery:
        """The query; :class:`Rejected` with the protocol's own error."""

    def render(self, decision: Decision, query: RoutingQuery) -> Reply:
        """The reply, with the ``outcome`` it rendered and the ``answer`` to log."""

    def error(self, kind: str, method: str = "", target: str = "", section: Any = None) -> Reply:
        """The errors found outside it: ``unauthorized`` (with the challenge ``section`` calls for),
        ``forbidden``, ``not_found``, ``method``, ``too_large``, ``internal``."""


_registry: dict[str, Adapter] = {}


def register(adapter: Adapter) -> None:
    """Serve ``adapter`` from now on (a config loaded after this accepts its table)."""
    _registry[adapter.NAME] = adapter


def unregister(name: str) -> None:
    """Serve ``name`` no more (in configs loaded after this)."""
    _registry.pop(name, None)


def registered() -> tuple[Adapter, ...]:
    """Every protocol served, in the order registered."""
    return tuple(_registry.values())


def get(name: str) -> Adapter:
    return _registry[name]


def names() -> tuple[str, ...]:
    return tuple(_registry)


def _builtin() -> None:
    from adapters import eml, smartrouting

    register(smartrouting)
    register(eml)


_builtin()
