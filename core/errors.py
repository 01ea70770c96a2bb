"""The gateway's exceptions, one tree.

    GatewayError
    ├── ConfigError          the config (or a directory file) is invalid; .problems lists every one
    ├── StoreError           the shared store failed (Redis down, timed out, refused)
    │   ├── StoreBusy        ... only because every pooled connection stayed in use: not an outage
    │   └── StoreRefused     ... because Redis answered it with an error (out of memory, read-only)
    └── LookupFailed         an external caller lookup gave no usable answer
        └── LookupTimeout    ... because it ran out of time

Errors of third-party clients (redis, httpx) are wrapped into these where they are called
and never leave ``core/``.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """The configuration is invalid. ``problems`` holds one line per problem, each with its key path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class StoreError(GatewayError):
    """A call to the shared store failed or timed out. A write that timed out may have landed."""


class StoreBusy(StoreError):
    """Every pooled connection stayed in use for the whole wait: the call was never sent. Redis is
    answering the calls ahead of it, so this is load, not an outage."""


class StoreRefused(StoreError):
    """Redis answered the call with an error (out of memory, read-only, a wrong type): it is reachable,
    and still cannot serve."""


class LookupFailed(GatewayError):
    """An external lookup failed: an unexpected status, a bad body, a refused connection."""


class LookupTimeout(LookupFailed):
    """An external lookup did not answer within its budget."""
