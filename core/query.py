"""The internal routing query and decision: what adapters produce and render."""

from __future__ import annotations

import msgspec

Scalar = str | bool | int | float | None


class RoutingQuery(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One routing question, whatever protocol asked it.

    ``protocol`` is an opaque name for ``when.protocol``; the core attaches no meaning to it.
    """

    protocol: str
    caller: str = ""
    """Normalised caller number; empty when hidden or unknown."""
    dialed: str = ""
    """Normalised dialled number; empty when unknown."""
    service: str = ""
    """The service as sent (targetid, rclassification); empty when none."""
    customer: str = ""
    call_id: str = ""
    call_time_s: int | None = None
    """How long the call has lasted; None when not given or unreadable."""
    attributes: dict[str, Scalar] = {}
    """Free call attributes (SmartRouting extradata)."""
    needs_destination: bool = False
    """The protocol must answer with a destination: when no rule gives one, take it from
    the ``[services]`` entry named by ``service``."""
    idempotency_key: str | None = None
    """A retry with the same key inside the retry window gets the first answer again."""


class Decision(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """What the core decided. Unset fields are ``None`` (or empty); adapters render only what is set."""

    rule: str | None = None
    """Name of the rule that matched; None when none did."""
    target: str | None = None
    """The destination: a literal target or a number taken from a service pool."""
    service: str | None = None
    """The service whose pool gave ``target``."""
    disconnect: bool = False
    fail_target: str | None = None
    required_agent: str | None = None
    preferred_agents: tuple[str, ...] = ()
    priority: int | None = None
    extra_priority: int | None = None
    tts: str | None = None
    msi: str | None = None
    id: str | None = None
    """A fresh time-ordered id of this allocation (set when ``target`` is)."""
    fallback: str | None = None
    """Why the answer is a fallback (``deadline``, ...); None for a normal decision."""
    replayed: bool = False
    """The answer is a stored one, given again for a retry."""

    @property
    def routes(self) -> bool:
        """Whether the decision changes anything (else: default routing)."""
        return bool(
            self.target
            or self.disconnect
            or self.fail_target
            or self.required_agent
            or self.preferred_agents
            or self.priority is not None
            or self.extra_priority is not None
            or self.tts
            or self.msi
        )
