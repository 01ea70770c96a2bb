"""A TLS connection until its handshake is done.

The loop's server accepts plain TCP; each connection starts as a :class:`Handshake`, which upgrades it to
TLS with a handshake bounded by ``read_timeout_s`` (the loop's own default is 60 s), then hands it to a
:class:`~gateway.connection.Connection`. From its accept, the connection is one of the server's
connections: it counts toward ``max_connections`` and is cut at once at shutdown.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.connection import Connection


class Handshake(asyncio.Protocol):
    """uvicorn's protocol class for TLS: built like :class:`Connection`, with ``config.tls``."""

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.connection = Connection(config, server_state, app_state, _loop)
        self.connections = server_state.connections
        self.loop = self.connection.loop
        self.context = config.tls
        self.timeout = config.limits.read_timeout_s
        self.transport: Any = None
        self.task: asyncio.Task[None] | None = None
        self.early = bytearray()  # read before the TLS layer was in place

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.connections.add(self)
        self.task = self.loop.create_task(self._handshake(transport))
        # The task's first step puts the TLS layer in place at once; this runs just after it.
        self.loop.call_soon(self._hand_over_early)

    def data_received(self, data: bytes) -> None:
        # The loop starts reading as soon as connection_made returns, before the task has run.
        self.early += data
        self.transport.pause_reading()

    def _hand_over_early(self) -> None:
        """Give the TLS layer what was read before it was in place. Until its own connection_made it
        only buffers what it is given, and the loop reads nothing more before that."""
        layer = self.transport.get_protocol()
        if not self.early or layer is self:
            return
        data, self.early = bytes(self.early), bytearray()
        while data:
            buffer = layer.get_buffer(len(data))
            size = min(len(buffer), len(data))
            buffer[:size] = data[:size]
            layer.buffer_updated(size)
            data = data[size:]

    async def _handshake(self, transport: Any) -> None:
        try:
            if transport.is_closing():
                return
            tls = await self.loop.start_tls(
                transport, self, self.context, server_side=True, ssl_handshake_timeout=self.timeout
            )
        except (OSError, RuntimeError):
            # Timed out, refused, or the client went away: no one to tell.
            transport.abort()
            return
        finally:
            self.connections.discard(self)
        if tls is None or tls.is_closing():
            transport.abort()  # cut during the handshake (at shutdown)
            return
        # uvloop's TLS layer hands over the first application data only after this task has run.
        tls.set_protocol(self.connection)
        self.connection.connection_made(tls)

    def connection_lost(self, exc: Exception | None) -> None:
        # The TLS layer tells this protocol, still its own until the handshake is done, when that fails.
        self.connections.discard(self)

    def shutdown(self) -> None:
        """Called by the server when it starts shutting down: nothing is lost by cutting it now."""
        if self.transport is not None:
            self.transport.abort()
