"""Credentials and source networks, checked before a body is read."""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
from collections.abc import Iterable, Mapping

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


# Optional whitespace around a header value (RFC 9110: spaces and tabs) is not part of a credential.
_OWS = " \t"
_OWS_BYTES = b" \t"


def _same(given: bytes, expected: Iterable[bytes]) -> bool:
    # Compare against every expected value, in constant time each, and without stopping early.
    found = False
    for candidate in expected:
        found |= hmac.compare_digest(given, candidate)
    return found


def _sent(value: str) -> bytes:
    """The bytes the client sent, from a header value decoded as latin-1 (as the app and ASGI do)."""
    value = value.strip(_OWS)
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:  # not from latin-1 bytes, so real text: a key is compared as UTF-8
        return value.encode("utf-8")


class Credentials:
    """What one endpoint accepts: API keys in a header (or as a Bearer token), and/or Basic users.
    With nothing configured, the endpoint is open.

    Header values come decoded as latin-1, i.e. one character per byte sent; the bytes are compared with
    the UTF-8 bytes of the configured keys and users, so a non-ASCII key matches as a client sends it.
    Spaces and tabs around a key, a token or the Basic credentials are not part of them."""

    def __init__(
        self, key_header: str, schemes: tuple[str, ...], api_keys: list[str], basic: Mapping[str, str]
    ) -> None:
        self.key_header = key_header.lower()
        self._key_header = self.key_header.encode("latin-1")
        self.bearer = "bearer" in schemes
        self.keys = [k.encode() for k in api_keys]
        self.basic = [f"{u}:{p}".encode() for u, p in basic.items()] if "basic" in schemes else []
        self.open = not self.keys and not self.basic

    def accept(self, headers: Mapping[str, str]) -> bool:
        """``headers`` by lower-case name, values decoded as latin-1."""
        if self.open:
            return True
        key = headers.get(self.key_header)
        authorization = headers.get("authorization")
        return self._accept(
            None if key is None else _sent(key), None if authorization is None else _sent(authorization)
        )

    def accept_raw(self, headers: Mapping[bytes, bytes]) -> bool:
        """``headers`` as an ASGI server gives them: bytes by lower-case name."""
        if self.open:
            return True
        key = headers.get(self._key_header)
        authorization = headers.get(b"authorization")
        return self._accept(
            None if key is None else key.strip(_OWS_BYTES),
            None if authorization is None else authorization.strip(_OWS_BYTES),
        )

    def _accept(self, key: bytes | None, authorization: bytes | None) -> bool:
        if key is not None and self.keys and _same(key, self.keys):
            return True
        scheme, _, value = (authorization or b"").partition(b" ")
        scheme = scheme.lower()
        value = value.strip(_OWS_BYTES)
        if scheme == b"bearer" and self.bearer and self.keys:
            return _same(value, self.keys)
        if scheme == b"basic" and self.basic:
            try:
                pair = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return False
            return _same(pair, self.basic)
        return False


def networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def _address(text: str) -> Address | None:
    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _within(addr: Address | None, nets: tuple[Network, ...]) -> bool:
    return addr is not None and any(addr.version == n.version and addr in n for n in nets)


def client_address(
    peer: str | None, forwarded_for: str | None, trusted: tuple[Network, ...]
) -> Address | None:
    """The caller's address: the peer's, or when the peer is a trusted proxy, the right-most address in
    ``X-Forwarded-For`` that is not itself a trusted proxy."""
    addr = _address(peer) if peer else None
    if not forwarded_for or not _within(addr, trusted):
        return addr
    for hop in reversed(forwarded_for.split(",")):
        hop_addr = _address(hop)
        if hop_addr is None:
            return None
        if not _within(hop_addr, trusted):
            return hop_addr
    return addr


def allowed(addr: Address | None, nets: tuple[Network, ...]) -> bool:
    """Whether ``addr`` may call an endpoint limited to ``nets`` (none: any address)."""
    return not nets or _within(addr, nets)
