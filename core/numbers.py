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


# A phone number as people and platforms write one: at least 7 digits, with any separators between two
# digits that core.numbers.normalise drops (any white space, dots, dashes, slashes, brackets), so that
# whatever the gateway reads as a caller is masked in a log line or a masked journal entry too. After a "+" (or a URL-encoded one, %2B)
# it is one wherever it stands. Without, it must stand alone, not inside a word or a hex id (a request id,
# a UUID, a config version: digits between dashes inside such an id are not one either); an ISO date
# and a dotted IPv4 address (neither followed by more digits) are not one.
_SEP_T = r"[\s().\u00a0/-]*"
NUMBER_IN_TEXT = re.compile(
    rf"""
      (?: \+ | (?<=%2[Bb]) ) {_SEP_T} \d (?: {_SEP_T} \d ){{6,}}
    | (?<! [0-9A-Za-z] ) (?<! [0-9A-Fa-f]- ) (?<! \d\. )
      (?! \d{{4}}-[01]\d-[0-3]\d (?! {_SEP_T} \d ) )
      (?! \d{{1,3}} (?: \.\d{{1,3}} ){{3}} (?! [\d.] ) )
      \d (?: {_SEP_T} \d ){{6,}} (?! [0-9A-Za-z] ) (?! -[0-9A-Fa-f] )
    """,
    re.VERBOSE,
)


def _masked(m: re.Match) -> str:
    return mask(m[0])


def mask_numbers(text: str) -> str:
    """``text`` with every run that looks like a phone number masked (last digits only)."""
    return NUMBER_IN_TEXT.sub(_masked, text) if len(text) >= 7 else text
