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


async def pick(name: str, service: Service, store: Store) -> str:
    """Choose one number of ``service``. Round-robin positions live in the store, shared by replicas."""
    numbers = service.numbers
    if service.strategy == "first" or len(numbers) == 1:
        return numbers[0]
    if service.strategy == "random":
        return random.choice(numbers)
    turn = await store.incr(f"rr:{name}")
    return numbers[(turn - 1) % len(numbers)]
