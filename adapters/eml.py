"""EML call/request: ``{callID, rclassification, customerID, callTime}`` in; 201 with a number out.

The EML side was built against a NestJS 10 server (Express body-parser, a global ValidationPipe,
class-validator), and clients may depend on its exact replies, so this adapter answers as it did:
the same messages in the same order, the same parse errors, the same leniency.
"""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import parse_qsl

import msgspec

from adapters import Rejected, Reply, Section, media_type
from adapters.nodejson import NodeJSONError, members, strict_error
from core.query import Decision, RoutingQuery

NAME = "eml"
API_KEY_HEADER = "x-api-key"
AUTH_SCHEMES = ("bearer",)
CONTENT_TYPE = "application/json; charset=utf-8"
PATH = "/call/request"

REQUIRED = ("callID", "rclassification", "callTime")
FIELDS = ("callID", "rclassification", "customerID", "callTime")


class Config(Section, frozen=True, forbid_unknown_fields=True):
    """``[eml]``."""

    base: str = ""
    retry_window_s: Annotated[int, msgspec.Meta(ge=0, le=30 * 86400)] = 86400


def _base(section: Config) -> str:
    # "/qm/" means "/qm": the route is {base}/call/request, never "/qm//call/request".
    return section.base.rstrip("/")


def paths(section: Config) -> dict[str, str]:
    return {"base": _base(section) + PATH}


def retry_window_s(section: Config) -> float:
    return float(section.retry_window_s)


def check_config(section: Config, problems: list[str], warnings: list[str]) -> None:
    if section.base and not section.base.startswith("/"):
        problems.append(f"{NAME}.base: must be empty or start with /")


def owns(path: str, section: Config) -> int | None:
    """Anything under ``base`` (everything when it is empty) is answered as NestJS answers a route it
    does not have."""
    base = _base(section)
    return len(base) if path.lower().startswith(base.lower()) else None


def looks_like(body: Any) -> bool:
    return isinstance(body, dict) and ("rclassification" in body or "callID" in body)


class Found(msgspec.Struct):
    rclassification: str
    number: str
    callID: str
    mqID: str
    success: bool = True


class NotFound(msgspec.Struct):
    success: bool
    message: str


class BadRequest(msgspec.Struct):
    message: list[str] | str
    error: str = "Bad Request"
    statusCode: int = 400


class Status(msgspec.Struct):
    """Errors raised by Express middleware: status first."""

    statusCode: int
    message: str


class HttpError(msgspec.Struct):
    """Nest's HttpException bodies: message first."""

    message: str
    statusCode: int


class RouteNotFound(msgspec.Struct):
    message: str
    error: str = "Not Found"
    statusCode: int = 404


_encode = msgspec.json.Encoder().encode
_ERRORS = {
    "unauthorized": Reply(401, _encode(HttpError("Unauthorized", 401)), CONTENT_TYPE),
    "forbidden": Reply(403, _encode(HttpError("Forbidden", 403)), CONTENT_TYPE),
    "too_large": Reply(413, _encode(Status(413, "request entity too large")), CONTENT_TYPE),
    "internal": Reply(500, _encode(Status(500, "Internal server error")), CONTENT_TYPE),
}


def _reply(status: int, body: msgspec.Struct) -> Reply:
    return Reply(status, _encode(body), CONTENT_TYPE)


def error(kind: str, method: str = "POST", target: str = "", section: Any = None) -> Reply:
    """Express answers an unknown route or method alike: ``Cannot GET /call/request``."""
    if kind in ("not_found", "method"):
        return _reply(404, RouteNotFound(f"Cannot {method} {target}"))
    return _ERRORS[kind]


def _form(kind: str) -> str:
    # Exactly the original's parsers: application/json (not */*+json) and form fields.
    if kind == "application/json":
        return "json"
    if kind == "application/x-www-form-urlencoded":
        return "form"
    return ""


def check_content_type(value: str | None) -> None:
    """body-parser refuses a charset it does not read, before reading the body."""
    kind, charset = media_type(value)
    if _form(kind) and charset not in (None, "utf-8"):
        # The charset as sent, upper-cased, as body-parser words it.
        raw = re.search(r"charset\s*=\s*\"?([^\";]*)", value or "", re.IGNORECASE)
        shown = (raw[1] if raw else charset or "").strip().upper()
        raise Rejected(Reply(415, _encode(Status(415, f'unsupported charset "{shown}"')), CONTENT_TYPE))


def _json(body: bytes) -> dict[str, Any]:
    if not body:
        return {}
    # Invalid UTF-8 becomes U+FFFD and one leading byte-order mark is dropped, as body-parser's decoder does.
    text = body.decode("utf-8", "replace")
    text = text.removeprefix("\ufeff")
    message = strict_error(text)
    if message is not None:
        raise Rejected(_reply(400, BadRequest(message)))
    # Node's verdict and message, at msgspec's cost whatever the body.
    try:
        return members(text, FIELDS)
    except NodeJSONError as exc:
        raise Rejected(_reply(400, BadRequest(str(exc)))) from None


def _urlencoded(body: bytes) -> dict[str, Any]:
    """Form fields as the qs library reads them: a repeated or bracketed key is not a string."""
    fields: dict[str, Any] = {}
    for key, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        name, bracket, _ = key.partition("[")
        if bracket and name:
            fields[name] = {}
        elif name in fields:
            fields[name] = [fields[name], value]
        else:
            fields[name] = value
    return fields


def validate(fields: dict[str, Any]) -> list[str]:
    """class-validator's messages: per field in declaration order, "should not be empty" first."""
    messages = []
    for name in FIELDS:
        value = fields.get(name)
        if name == "customerID":
            if value is not None and not isinstance(value, str):
                messages.append("customerID must be a string")
            continue
        if value is None or value == "":
            messages.append(f"{name} should not be empty")
        if not isinstance(value, str):
            messages.append(f"{name} must be a string")
    return messages


_CLOCK = re.compile(r"^(?:(\d+):)?(\d+):(\d+)$")
_DIGITS = 18  # 10**18 seconds is past any call: a longer number is not a call time


def _whole(digits: str) -> int | None:
    significant = digits.lstrip("0")
    return int(significant or "0") if len(significant) <= _DIGITS else None


def call_time(text: str) -> int | None:
    """``"35"`` or ``[HH:]MM:SS`` as seconds; None for anything else, a number of more than 18
    significant digits included (it converts nothing that long)."""
    text = text.strip()
    if not text.isascii():
        return None
    if text.isdigit():
        return _whole(text)
    m = _CLOCK.match(text)
    if m is None:
        return None
    hours, minutes, seconds = _whole(m[1] or "0"), _whole(m[2]), _whole(m[3])
    if hours is None or minutes is None or seconds is None:
        return None
    if seconds > 59 or (m[1] is not None and minutes > 59):
        return None
    return hours * 3600 + minutes * 60 + seconds


def parse(body: bytes, content_type: str | None = None) -> RoutingQuery:
    form = _form(media_type(content_type)[0])
    # A body of another media type is not read at all: it validates as empty.
    fields = _json(body) if form == "json" else _urlencoded(body) if form == "form" else {}
    messages = validate(fields)
    if messages:
        raise Rejected(_reply(400, BadRequest(messages)))
    call_id, rc, customer = fields["callID"], fields["rclassification"], fields.get("customerID") or ""
    return RoutingQuery(
        protocol=NAME,
        service=rc,
        customer=customer,
        call_id=call_id,
        call_time_s=call_time(fields["callTime"]),
        needs_destination=True,
        # A retry is the same call asking for the same classification; another classification is new.
        idempotency_key=f"{call_id}\x1f{rc}",
    )


def render(decision: Decision, query: RoutingQuery) -> Reply:
    """201 with the number and an mqID, or ``success: false``; says which, and the ids, for the log."""
    call = (("call_id", query.call_id),)
    if decision.disconnect:
        reply = _reply(201, NotFound(False, f"{query.service} not available"))
        return reply._replace(outcome="disconnect", answer=call)
    if not decision.target:
        return _reply(201, NotFound(False, f"{query.service} not found"))._replace(
            outcome="not_found", answer=call
        )
    reply = _reply(201, Found(query.service, decision.target, query.call_id, decision.id or ""))
    return reply._replace(
        outcome="routed", answer=(("number", decision.target), *call, ("mq_id", decision.id or ""))
    )
