"""One client connection: uvicorn's httptools protocol with the limits of SPEC section 8.

- A request head (request line plus headers) over ``max_header_bytes``, or with more than
  ``max_headers`` header lines, gets 431 and the connection is closed. Bytes are counted as they arrive,
  before the parser sees them, and reach it a whole line at a time: refusing a head costs time linear
  in what was received, never more.
- The head, and then the whole body, must each arrive within ``read_timeout_s``, else the connection
  is cut.
- Every close is bounded: a client that stops reading (or, over TLS, never answers close_notify) is cut
  after ``CLOSE_LINGER_S``.
- At shutdown, idle connections are cut at once; a request in flight has until ``drain_s``.

uvicorn builds this protocol with its own ``Config``; the limits are read from ``config.limits``.
"""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

# How long a closing connection may take to flush what is left to send (over TLS, also to exchange
# close_notify) before it is cut: a client that stops reading must not keep its socket.
CLOSE_LINGER_S = 1.0

REFUSED_HEAD = b'{"error":"request header fields too large"}'


class Limits(NamedTuple):
    """What one connection may cost; read by every :class:`Connection` from ``config.limits``."""

    max_header_bytes: int
    max_headers: int
    read_timeout_s: float
    # At shutdown, a request still in flight after this long is cut.
    drain_s: float


class _TooManyHeaders(Exception):
    """Raised inside the parser's header callback, which stops the parser."""


class _Transport:
    """The connection's transport, whose ``close()`` is bounded in time: whatever is left to send is
    flushed for at most ``CLOSE_LINGER_S``, then the connection is cut."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._cut: asyncio.TimerHandle | None = None

    def close(self) -> None:
        self._transport.close()
        self.abort_after(CLOSE_LINGER_S)

    def abort_after(self, delay: float) -> None:
        """Cut the connection in ``delay`` seconds, unless an earlier cut is already due."""
        due = self._loop.time() + delay
        if self._cut is not None:
            if self._cut.when() <= due:
                return
            self._cut.cancel()
        self._cut = self._loop.call_at(due, self._transport.abort)

    def forget(self) -> None:
        """The connection is gone: nothing left to cut."""
        if self._cut is not None:
            self._cut.cancel()
            self._cut = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class Connection(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the head limits, read deadlines and bounded closes above."""

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits: Limits = config.limits
        # uvicorn logs access lines whenever its logger has a handler anywhere; the setting decides here.
        self.access_log = self.access_log and config.access_log
        self._read_deadline: asyncio.TimerHandle | None = None
        self._in_head = True  # between the end of one message and the end of the next one's head
        self._head_bytes = 0
        self._partial = bytearray()  # the start of a head line the parser has not seen yet
        self._heads = 0  # heads completed on this connection
        self._too_many_headers = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_Transport(transport, self.loop))  # type: ignore[arg-type]
        self._arm_read_deadline()  # the first head counts from the connection

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._cancel_read_deadline()
        self.transport.forget()  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return  # refused or timed out: what still arrives is not parsed
        self._unset_keepalive_if_required()
        if self._read_deadline is None:
            self._arm_read_deadline()  # a next request's head counts from its first byte
        if self._in_head:
            self._head_received(data)
        else:
            # A pipelined request's head that starts inside a chunk fed here is counted from the next
            # chunk on: at most one read more than the limit, still at a linear cost.
            self._feed(data)

    def _head_received(self, data: bytes) -> None:
        """Count the bytes of a head, and give them to the parser a whole line at a time: httptools
        joins the pieces of a line by copying, quadratic in the number of pieces."""
        size = min(len(data), self.limits.max_header_bytes - self._head_bytes)
        self._head_bytes += size
        view = memoryview(data)
        end = data.rfind(b"\n", 0, size) + 1  # just after the last whole line
        if end:
            heads, lines = self._heads, self._partial + view[:end]
            self._partial = bytearray(view[end:size])
            if not self._feed(lines):
                return
            if self._heads != heads:
                # The head is complete: what follows is a body, or the next requests.
                after, self._partial = self._partial + view[size:], bytearray()
                if after:
                    self._feed(after)
                return
        else:
            self._partial += view[:size]
        if size < len(data):
            self._refuse_head()  # the head goes on past the limit, whatever follows

    def _feed(self, data: bytes | memoryview) -> bool:
        """Parse ``data``; False once the connection is being closed."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()
            return False
        except httptools.HttpParserError:
            if self._too_many_headers:
                self._refuse_head()
            else:
                msg = "Invalid HTTP request received."
                self.logger.warning(msg)
                self.send_400_response(msg)
            return False
        return not self.transport.is_closing()

    def _refuse_head(self) -> None:
        self.logger.warning("Request header fields too large.")
        content = [STATUS_LINE[431]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(REFUSED_HEAD)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                REFUSED_HEAD,
            ]
        )
        self._cancel_read_deadline()
        self.transport.write(b"".join(content))
        self.transport.close()

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._read_deadline is None:
            self._arm_read_deadline()

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        if len(self.headers) > self.limits.max_headers:
            self._too_many_headers = True
            raise _TooManyHeaders

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._heads += 1
        self._arm_read_deadline()  # the body counts from the end of the head
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0
        self._cancel_read_deadline()

    # Deadlines

    def _arm_read_deadline(self) -> None:
        self._cancel_read_deadline()
        self._read_deadline = self.loop.call_later(self.limits.read_timeout_s, self._read_timed_out)

    def _cancel_read_deadline(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if self.flow.read_paused:
            # The gateway stopped reading (a pipelined request waits for the one before): the client is
            # not late, so its time starts again.
            self._arm_read_deadline()
            return
        self.transport.abort()

    def shutdown(self) -> None:
        """Called once by the server when it starts shutting down."""
        if self.cycle is None or self.cycle.response_complete:
            # Idle, or at most part of a next head: nothing is lost by cutting it now. A polite close
            # would wait for the client (over TLS, for its close_notify) while SIGTERM waits too.
            if self.transport.get_write_buffer_size():
                self.transport.close()
            else:
                self.transport.abort()
        else:
            self.cycle.keep_alive = False
            self.transport.abort_after(self.limits.drain_s)  # type: ignore[attr-defined]
