"""Phone numbers in one comparable form."""

from __future__ import annotations

import re

_DROP = re.compile(r"[\s\-().\u00a0/]")


def normalise(number: str) -> str:
    """Return ``number`` in the one form used for comparison: E.164 with ``+`` where it is international.

    Spaces, dashes, dots, slashes and brackets are dropped and a ``00`` international prefix reads as ``+``.
    Extensions and national numbers (no ``+``, no ``00``) are kept as they are, minus the separators.
    """
    n = _DROP.sub("", number)
    if n.startswith("00"):
        n = "+" + n[2:]
    return n


def mask(number: str, keep: int = 3) -> str:
    """Hide all but the last ``keep`` digits, for logs: ``+358501231234`` -> ``*********234``."""
    if not number:
        return ""
    if len(number) <= keep:
        return "*" * len(number)
    return "*" * (len(number) - keep) + number[-keep:]
