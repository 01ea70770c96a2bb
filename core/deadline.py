"""Running a coroutine against a deadline, at no cost when it never has to wait."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")


class _Rest:
    """The rest of a coroutine that has already taken its first step: awaiting this goes on with it
    where it stopped, passing what the event loop sends and throws (a cancellation too) through."""

    __slots__ = ("coro", "first")

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self.coro, self.first
        while True:
            try:
                sent = yield value
            except BaseException as exc:  # noqa: BLE001 - handed to the coroutine, whose answer counts
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def within(coro: Coroutine[Any, Any, T], deadline: float) -> T:
    """``await coro``, raising :class:`TimeoutError` once the event loop's clock passes ``deadline``.

    Most decisions finish without waiting on anything (a static rule, a cached caller); a timer for
    them would be armed and cancelled for nothing. So ``coro`` runs first, and only when it waits
    (for Redis, for a CRM) does the rest of it run under ``asyncio.timeout_at``."""
    try:
        first = coro.send(None)
    except StopIteration as stop:
        return stop.value
    async with asyncio.timeout_at(deadline):
        return await _Rest(coro, first)
