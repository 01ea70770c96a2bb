"""Phone numbers in one comparable form."""

from __future__ import annotations

import re

_DROP = re.compile(r"[\s\-().\u00a0/]")
_PHONE = re.compile(r"\+?[0-9]{3,20}")
PHONE_MAX = 21
"""The longest normalised number that can be a phone number: ``+`` and 20 digits."""


def normalise(number: str) -> str:
    """Return ``number`` in the one form used for comparison: E.164 with ``+`` where it is international.

    Spaces, dashes, dots, slashes and brackets are dropped and a ``00`` international prefix reads as ``+``.
    Extensions and national numbers (no ``+``, no ``00``) are kept as they are, minus the separators.
    """
    n = _DROP.sub("", number)
    if n.startswith("00"):
        n = "+" + n[2:]
    return n


def is_phone_number(number: str) -> bool:
    """Whether the normalised ``number`` can be a phone number or an extension: an optional ``+`` and 3 to
    20 ASCII digits. Only such numbers are looked up or used in keys, so a caller sets neither what a CRM
    is asked nor how big a key grows."""
    return len(number) <= PHONE_MAX and _PHONE.fullmatch(number) is not None


def mask(number: str, keep: int = 3) -> str:
    """Hide all but the last ``keep`` digits, for logs: ``+358501231234`` -> ``*********234``."""
    if not number:
        return ""
    if len(number) <= keep:
        return "*" * len(number)
    return "*" * (len(number) - keep) + number[-keep:]
