"""Protocol adapters: one module per protocol, each turning its requests into a
``core.RoutingQuery`` and a ``core.Decision`` into its replies. Nothing here knows a rule.

Each adapter module offers the same face:

- ``NAME``: the protocol's name, as ``when.protocol`` spells it;
- ``API_KEY_HEADER`` and ``AUTH_SCHEMES``: where its credentials come;
- ``check_content_type(value)``: raise :class:`Rejected` for a media type it refuses, before the body is read;
- ``parse(body, content_type) -> RoutingQuery``: raise :class:`Rejected` with the protocol's own error;
- ``render(decision, query) -> Reply``, with the ``outcome`` it rendered and the ``answer`` to log;
- ``error(kind, method=, target=) -> Reply`` for the errors found outside it: ``unauthorized``,
  ``forbidden``, ``not_found``, ``method``, ``too_large``, ``internal``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

PROTOCOLS = ("smartrouting", "eml")


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
