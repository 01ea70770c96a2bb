"""Service pools: the numbers behind a classification or target, and the strategies that choose one.

A strategy is an object registered by name in :data:`STRATEGIES`. It chooses in one of two ways:

- shared: its :meth:`Strategy.cycle` is the order of numbers a pool's counter walks, one turn per
  allocation, in the store (Redis: shared by every replica). Turn ``t`` (counting from 1) takes
  ``cycle[(t - 1) % len(cycle)]``, so over any whole cycle the split is exact, whichever replica took
  which turn;
- offline: :meth:`Strategy.offline` chooses in process. A strategy without a cycle always does; the
  others only where the store cannot be asked (the deadline or store fallback).

A new strategy is one :class:`Strategy` subclass and one :func:`register` call here (before
:class:`Service`, whose ``strategy`` accepts the names registered), plus its docs in ``config.toml``.
"""

from __future__ import annotations

import functools
import math
import random
from typing import Annotated, ClassVar, Literal

import msgspec


class Strategy:
    """How a pool chooses one of its numbers (by index into ``Service.numbers``)."""

    name: ClassVar[str]

    def cycle(self, service: Service) -> tuple[int, ...] | None:
        """The order of number indexes the pool's shared counter walks; None when the strategy needs no
        shared state (it chooses offline)."""
        return None

    def offline(self, service: Service) -> int:
        """An index chosen in process, without the store."""
        raise NotImplementedError

    def check(self, service: Service, path: str, problems: list[str]) -> None:
        """Add what is wrong with ``service`` for this strategy (key paths from ``path``)."""
        if service.weights is not None:
            problems.append(f'{path}.weights: only with strategy = "weighted" (this pool is {self.name!r})')


class First(Strategy):
    """Always the first number."""

    name = "first"

    def offline(self, service: Service) -> int:
        return 0


class Random(Strategy):
    """Any number, at random, each time."""

    name = "random"

    def offline(self, service: Service) -> int:
        return random.randrange(len(service.numbers))


class RoundRobin(Strategy):
    """Each number in turn, in the order listed, shared by every replica. Offline: at random."""

    name = "round_robin"

    def cycle(self, service: Service) -> tuple[int, ...]:
        return tuple(range(len(service.numbers)))

    def offline(self, service: Service) -> int:
        return random.randrange(len(service.numbers))


MAX_WEIGHT = 1000
MAX_CYCLE = 1000
"""Turns in one weighted cycle (the weights' sum over their greatest common divisor): an allocation on
Redis sends the whole cycle with it, two bytes a turn."""


def smooth(weights: list[int] | tuple[int, ...]) -> tuple[int, ...]:
    """One whole cycle of the smooth weighted rotation (nginx's): at each turn every index gains its
    weight, the one with the most (the first of equals) is taken and gives back the total. Weights 3,1,1
    give 0 1 0 2 0: each index as often as its weight, spread out, never a run of one where it can be
    avoided. The weights are divided by their greatest common divisor first: the same rotation, shorter."""
    g = functools.reduce(math.gcd, weights)
    w = [x // g for x in weights]
    total = sum(w)
    current = [0] * len(w)
    order = []
    for _ in range(total):
        for i, x in enumerate(w):
            current[i] += x
        best = max(range(len(w)), key=current.__getitem__)
        current[best] -= total
        order.append(best)
    return tuple(order)


class Weighted(Strategy):
    """A smooth weighted rotation (``weights``, one per number), shared by every replica like round-robin.
    Offline: at random, in the same proportions."""

    name = "weighted"

    def cycle(self, service: Service) -> tuple[int, ...]:
        return smooth(service.weights or [1] * len(service.numbers))

    def offline(self, service: Service) -> int:
        return random.choice(service.cycle)  # the cycle made once, with each index as often as its weight

    def check(self, service: Service, path: str, problems: list[str]) -> None:
        weights, n = service.weights, len(service.numbers)
        if weights is None:
            problems.append(f'{path}.weights: strategy = "weighted" needs one weight per number')
            return
        if len(weights) != n:
            problems.append(
                f"{path}.weights: {len(weights)} weight{'s' * (len(weights) != 1)} for {n} numbers"
            )
        bad = False
        for i, w in enumerate(weights):
            if not 1 <= w <= MAX_WEIGHT:
                problems.append(f"{path}.weights[{i}]: {w} is not a whole number from 1 to {MAX_WEIGHT}")
                bad = True
        if not bad and weights:
            turns = sum(weights) // functools.reduce(math.gcd, weights)
            if turns > MAX_CYCLE:
                problems.append(
                    f"{path}.weights: one cycle takes {turns} turns (their sum over their greatest common "
                    f"divisor); at most {MAX_CYCLE}"
                )


STRATEGIES: dict[str, Strategy] = {}
"""Every strategy, by the name ``[services.NAME] strategy`` gives."""


def register(strategy: Strategy) -> None:
    STRATEGIES[strategy.name] = strategy


for _s in (First(), RoundRobin(), Random(), Weighted()):
    register(_s)

StrategyName = Literal[tuple(STRATEGIES)]  # type: ignore[valid-type]

MAX_STICKY_S = 366 * 86400


class Service(msgspec.Struct, frozen=True, forbid_unknown_fields=True, dict=True):
    """``[services.NAME]``."""

    numbers: Annotated[list[str], msgspec.Meta(min_length=1)]
    strategy: StrategyName = "first"
    weights: list[int] | None = None
    """With ``strategy = "weighted"``: one positive weight per number."""
    sticky: Literal["caller", "customer"] | None = None
    """Give a caller (the normalised caller number) or a customer (EML customerID) the number it got from
    this pool last time, while it is still in the pool and the entry lives."""
    sticky_s: int | None = None
    """How long a sticky entry lives after the last number it gave."""

    @property
    def chooser(self) -> Strategy:
        return STRATEGIES[self.strategy]

    @functools.cached_property
    def cycle(self) -> tuple[int, ...]:
        """The order of number indexes the shared counter walks (empty when the strategy has none).
        Made once a service."""
        return STRATEGIES[self.strategy].cycle(self) or ()

    @functools.cached_property
    def rotates(self) -> bool:
        """Whether a number is a turn of the pool's shared counter (else :meth:`Strategy.offline`
        chooses it in process, unless a sticky entry gives it)."""
        return len(self.numbers) > 1 and bool(self.cycle)


def check_service(path: str, service: Service, problems: list[str]) -> None:
    """Add every problem of one ``[services.NAME]`` table beyond types (``path`` is its key path, e.g.
    ``services.Sales``): numbers not empty, weights (count, range, only with ``weighted``), sticky
    with a positive ``sticky_s`` (and ``sticky_s`` only with ``sticky``)."""
    for i, number in enumerate(service.numbers):
        if not number.strip():
            problems.append(f"{path}.numbers[{i}]: empty")
    service.chooser.check(service, path, problems)
    if service.sticky is not None and service.sticky_s is None:
        problems.append(f"{path}.sticky_s: required with sticky (seconds a caller keeps its number)")
    if service.sticky_s is not None:
        if service.sticky is None:
            problems.append(f'{path}.sticky_s: only with sticky = "caller" or "customer"')
        if not 1 <= service.sticky_s <= MAX_STICKY_S:
            problems.append(
                f"{path}.sticky_s: {service.sticky_s} is not a whole number of seconds from 1 to {MAX_STICKY_S}"
            )


def counter(name: str) -> str:
    """The store key of the shared position of service ``name``."""
    return f"rr:{name}"


def offline(service: Service) -> str:
    """A number of ``service`` chosen in process, without the store."""
    return service.numbers[service.chooser.offline(service)]


def at(service: Service, turn: int) -> int:
    """The index of the number turn ``turn`` (from 1) of the shared counter takes."""
    cycle = service.cycle
    return cycle[(turn - 1) % len(cycle)]
