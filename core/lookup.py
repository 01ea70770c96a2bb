"""External caller lookups (a CRM): config, client, cache, single flight, circuit breaker."""

from __future__ import annotations

from typing import Annotated

import msgspec


class LookupConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[lookup]``."""

    url: str
    headers: dict[str, str] = {}
    timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=4500)] = 800
    ttl_s: Annotated[int, msgspec.Meta(ge=1, le=30 * 86400)] = 3600
    negative_ttl_s: Annotated[int, msgspec.Meta(ge=0, le=30 * 86400)] = 300
    stale_s: Annotated[int, msgspec.Meta(ge=0, le=30 * 86400)] = 0
    tags_field: str = "tags"
    attributes: list[str] = []
    failures_to_open: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 5
    open_s: Annotated[float, msgspec.Meta(ge=0.1, le=3600)] = 30.0
