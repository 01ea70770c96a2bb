"""A third protocol, for the test that the adapter seam holds: ``POST /toy`` with ``{"from", "queue"}``,
200 ``{"to": ...}`` or 404 ``{"to": null}``. Registered by its test; the product never serves it."""

from __future__ import annotations

from typing import Any

import msgspec

from adapters import Rejected, Reply, Section
from core.numbers import normalise
from core.query import Decision, RoutingQuery

NAME = "toy"
API_KEY_HEADER = "x-toy-key"
AUTH_SCHEMES = ("bearer",)


class Config(Section, frozen=True, forbid_unknown_fields=True):
    """``[toy]``."""

    path: str = "/toy"


class _Request(msgspec.Struct):
    queue: str
    caller: str = msgspec.field(name="from", default="")


_decode = msgspec.json.Decoder(_Request).decode


def paths(section: Config) -> dict[str, str]:
    return {"path": section.path}


def retry_window_s(section: Config) -> float:
    return 0.0


def check_config(section: Config, problems: list[str], warnings: list[str]) -> None:
    if not section.path.startswith("/toy"):
        problems.append(f"{NAME}.path: must start with /toy")


def owns(path: str, section: Config) -> int | None:
    return 4 if path.lower().startswith("/toy") else None


def looks_like(body: Any) -> bool:
    return isinstance(body, dict) and "queue" in body


def check_content_type(value: str | None) -> None:
    if value and not value.startswith("application/json"):
        raise Rejected(Reply(415, b'{"toy":"json only"}', "application/json"))


def parse(body: bytes, content_type: str | None = None) -> RoutingQuery:
    try:
        req = _decode(body)
    except (msgspec.DecodeError, RecursionError):
        raise Rejected(Reply(400, b'{"toy":"bad body"}', "application/json")) from None
    return RoutingQuery(
        protocol=NAME, caller=normalise(req.caller), service=req.queue, needs_destination=True
    )


def render(decision: Decision, query: RoutingQuery) -> Reply:
    if not decision.target:
        return Reply(404, b'{"to":null}', "application/json", outcome="not_found")
    return Reply(
        200,
        msgspec.json.encode({"to": decision.target}),
        "application/json",
        outcome="routed",
        answer=(("target", decision.target),),
    )


def error(kind: str, method: str = "", target: str = "", section: Any = None) -> Reply:
    return Reply(
        {"unauthorized": 401, "forbidden": 403, "not_found": 404, "method": 405, "too_large": 413}.get(
            kind, 500
        ),
        msgspec.json.encode({"toy": kind}),
        "application/json",
    )
