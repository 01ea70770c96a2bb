"""Enreach SmartRouting: ``{anum, bnum, targetid, extradata}`` in; 200 with routing or 204 out."""

from __future__ import annotations

from typing import Any

import msgspec

from adapters import Rejected, Reply, Section, media_type
from core.numbers import normalise
from core.query import Decision, RoutingQuery, Scalar

NAME = "smartrouting"
API_KEY_HEADER = "x-benemen-apikey"
AUTH_SCHEMES = ("basic",)
JSON = "application/json"


class Config(Section, frozen=True, forbid_unknown_fields=True):
    """``[smartrouting]``."""

    path: str = "/smartrouting"
    basic_auth: dict[str, str] = msgspec.field(default_factory=dict)


class Request(msgspec.Struct, gc=False):
    """The webhook body. Unknown fields are ignored: the platform may add some."""

    anum: str | None = None
    bnum: str | None = None
    targetid: str | None = None
    extradata: dict[str, Scalar] | None = None


class Response(
    msgspec.Struct,
    omit_defaults=True,
    rename={
        "initial_target": "InitialTarget",
        "fail_target": "FailTarget",
        "required_target": "RequiredTarget",
        "allocation_targets": "AllocationTargets",
        "priority": "Priority",
        "extra_priority": "ExtraPriority",
        "custom_tts": "CustomTTS",
        "custom_msi": "CustomMSI",
    },
):
    """The 200 body: only what the decision sets, never a null or a default of ours."""

    initial_target: str | None = None
    fail_target: str | None = None
    required_target: str | None = None
    allocation_targets: list[str] | None = None
    priority: int | None = None
    extra_priority: int | None = None
    custom_tts: str | None = None
    custom_msi: str | None = None


class _Error(msgspec.Struct):
    error: str


_decode = msgspec.json.Decoder(Request).decode
_encode = msgspec.json.Encoder().encode
DISCONNECT = "DISCONNECT:"
NO_CONTENT = Reply(204, outcome="default")
_ERRORS = {
    "unauthorized": (401, "missing or invalid credentials"),
    "forbidden": (403, "source address not allowed"),
    "not_found": (404, "not found"),
    "method": (405, "method not allowed; use POST"),
    "too_large": (413, "request body too large"),
    "internal": (500, "internal error"),
}


def _error(status: int, reason: str) -> Reply:
    return Reply(status, _encode(_Error(reason)), JSON)


def error(kind: str, method: str = "", target: str = "", section: Any = None) -> Reply:
    reply = _error(*_ERRORS[kind])
    if kind == "method":
        return reply._replace(headers=(("allow", "POST"),))
    if kind == "unauthorized" and section is not None and section.basic_auth:
        return reply._replace(headers=(("www-authenticate", f'Basic realm="{NAME}"'),))
    return reply


def paths(section: Config) -> dict[str, str]:
    return {"path": section.path}


def retry_window_s(section: Config) -> float:
    return 0.0


def check_config(section: Config, problems: list[str], warnings: list[str]) -> None:
    if not section.path.startswith("/"):
        problems.append(f"{NAME}.path: must start with /")
    if not section.api_keys and not section.basic_auth:
        warnings.append(f"{NAME}: no api_keys and no basic_auth; the endpoint is open to anyone")


def owns(path: str, section: Config) -> int | None:
    return None


def looks_like(body: Any) -> bool:
    return isinstance(body, dict) and any(k in body for k in ("anum", "bnum", "targetid"))


def check_content_type(value: str | None) -> None:
    """JSON only (a missing type is read as JSON); UTF-8 only."""
    kind, charset = media_type(value)
    if kind and kind != JSON and not (kind.startswith("application/") and kind.endswith("+json")):
        raise Rejected(_error(415, "content type must be application/json"))
    if charset not in (None, "utf-8", "utf8"):
        raise Rejected(_error(415, "charset must be utf-8"))


def parse(body: bytes, content_type: str | None = None) -> RoutingQuery:
    """The query; :class:`Rejected` with a 400 whose reason names the problem, never the bytes sent."""
    if not body.isascii():
        # JSON is UTF-8 (RFC 8259); msgspec checks only the strings it keeps, and fails on them with
        # UnicodeDecodeError. Checking the whole body refuses one wherever the bad bytes are.
        try:
            body.decode()
        except UnicodeDecodeError:
            raise Rejected(_error(400, "body is not valid UTF-8")) from None
    try:
        req = _decode(body)
    except msgspec.ValidationError as exc:
        # msgspec names the field and the expected type (``Expected `str`, got `int` - at `$.anum```),
        # never the value sent.
        reason = f"invalid field: {exc}" if " - at `$." in str(exc) else "body is not a JSON object"
        raise Rejected(_error(400, reason)) from None
    except msgspec.DecodeError:
        raise Rejected(_error(400, "body is not a JSON object")) from None
    except RecursionError:
        raise Rejected(_error(400, "body is nested too deeply")) from None
    return RoutingQuery(
        protocol=NAME,
        caller=normalise(req.anum or ""),
        dialed=normalise(req.bnum or ""),
        service=req.targetid or "",
        attributes=req.extradata or {},
    )


def render(decision: Decision, query: RoutingQuery) -> Reply:
    """200 with the properties the decision sets; 204 (default routing) when it sets none."""
    if not decision.routes:
        return NO_CONTENT
    body = Response(
        initial_target=DISCONNECT if decision.disconnect else decision.target,
        fail_target=decision.fail_target,
        required_target=decision.required_agent,
        allocation_targets=list(decision.preferred_agents) or None,
        priority=decision.priority,
        extra_priority=decision.extra_priority,
        custom_tts=decision.tts,
        custom_msi=decision.msi,
    )
    outcome = "disconnect" if decision.disconnect else "routed"
    return Reply(200, _encode(body), JSON, outcome=outcome, answer=(("target", body.initial_target or ""),))
