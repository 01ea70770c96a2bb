"""Service pools: the numbers behind a classification or target, and how one is chosen."""

from __future__ import annotations

import random
from typing import Annotated, Literal

import msgspec

from core.store import Store


class Service(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[services.NAME]``."""

    numbers: Annotated[list[str], msgspec.Meta(min_length=1)]
    strategy: Literal["first", "round_robin", "random"] = "first"


def counter(name: str) -> str:
    """The store key of the round-robin position of service ``name``."""
    return f"rr:{name}"


def choose(service: Service) -> str | None:
    """The number ``service`` gives without asking the store; None when its shared position decides."""
    numbers = service.numbers
    if service.strategy == "first" or len(numbers) == 1:
        return numbers[0]
    if service.strategy == "random":
        return random.choice(numbers)
    return None


async def pick(name: str, service: Service, store: Store) -> str:
    """Choose one number of ``service``. Round-robin positions live in the store, shared by replicas."""
    number = choose(service)
    if number is not None:
        return number
    turn = await store.incr(counter(name))
    return service.numbers[(turn - 1) % len(service.numbers)]
