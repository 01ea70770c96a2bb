"""One client connection: uvicorn's httptools protocol with the limits of SPEC section 8.

- The stream is cut into messages before the parser sees it: a head ends at its empty line, a body after
  its Content-Length or its last chunk, a chunked body's trailer at its empty line. So every byte of a
  head is counted wherever it starts, and the parser never runs ahead of what is allowed.
- A request head (request line plus headers), together with a chunked body's trailer, over
  ``max_header_bytes``, or with more than ``max_headers`` header lines, gets 431 and the connection is
  closed. Bytes are counted as they arrive and reach the parser a whole line at a time: refusing costs
  time linear in what was received, never more. A chunk-size line is at most ``CHUNK_LINE_BYTES``.
- Pipelined requests are read at most ``PIPELINE_DEPTH`` requests and ``PIPELINE_BYTES`` ahead of the one
  being answered; beyond that the connection is not read until answers go out.
- The head, and then the whole body, must each arrive within ``read_timeout_s``, counted from when the
  gateway is ready to read them: a request behind one still being answered waits for it first.
- Every close is bounded: a client that stops reading (or, over TLS, never answers close_notify) is cut
  after ``CLOSE_LINGER_S``.
- At shutdown, idle connections are cut at once; a request in flight has until ``drain_s``.
- What this layer answers itself (400, 431, 503) is a short JSON body, after the answers to the requests
  before it on the connection.

uvicorn builds this protocol with its own ``Config``; the limits are read from ``config.limits``.
"""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

import httptools
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

# How long a closing connection may take to flush what is left to send (over TLS, also to exchange
# close_notify) before it is cut: a client that stops reading must not keep its socket.
CLOSE_LINGER_S = 1.0

# How far a client may send requests ahead of the answers (HTTP pipelining) before the gateway stops
# reading its connection: so many requests, or so many bytes of them.
PIPELINE_DEPTH = 8
PIPELINE_BYTES = 65536

# A chunk's size line with its extensions; a longer one is refused as invalid (no client needs more).
CHUNK_LINE_BYTES = 1024

TOO_LARGE = b'{"error":"request header fields too large"}'
INVALID = b'{"error":"invalid HTTP request"}'
BUSY = b'{"error":"service unavailable: too many connections"}'

# Where the connection is in the stream of requests.
_HEAD, _BODY, _CHUNKS, _TRAILER, _IGNORE = range(5)


class Limits(NamedTuple):
    """What one connection may cost; read by every :class:`Connection` from ``config.limits``."""

    max_header_bytes: int
    max_headers: int
    read_timeout_s: float
    # At shutdown, a request still in flight after this long is cut.
    drain_s: float


def _declared(data: bytes, cut: int) -> int:
    """The Content-Length of the head ``data[:cut]`` when it gives exactly one and no Transfer-Encoding;
    else -1. Only a shortcut: the parser reads the head again and refuses what it refuses."""
    head = data[:cut].lower()
    at = head.find(b"\ncontent-length:")
    if at < 0 or head.find(b"\ncontent-length:", at + 16) >= 0 or b"\ntransfer-encoding:" in head:
        return -1
    end = head.find(b"\n", at + 16)
    try:
        return int(head[at + 16 : end])
    except ValueError:
        return -1


class _TooManyHeaders(Exception):
    """Raised inside the parser's header callback, which stops the parser."""


def _response(status: int, body: bytes, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """A whole answer with a JSON body, after which the connection closes."""
    content = [STATUS_LINE[status]]
    for name, value in default_headers:
        content.extend([name, b": ", value, b"\r\n"])
    content.extend(
        [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
            b"connection: close\r\n",
            b"\r\n",
            body,
        ]
    )
    return b"".join(content)


async def _busy(scope: Any, receive: Any, send: Any) -> None:
    """The answer beyond ``max_connections``."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(BUSY)).encode("ascii")),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": BUSY})


class _Flow(FlowControl):
    """uvicorn's flow control, but reading stays paused while ``held``: uvicorn resumes reading whenever
    an app waits for its body or an answer goes out, and the connection may not be ready for more."""

    held = False

    def resume_reading(self) -> None:
        if not self.held:
            super().resume_reading()


class _Transport:
    """The connection's transport, whose ``close()`` is bounded in time: whatever is left to send is
    flushed for at most ``CLOSE_LINGER_S``, then the connection is cut."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._cut: asyncio.TimerHandle | None = None
        # Called for every request: bound here rather than looked up through __getattr__.
        self.write = transport.write
        self.is_closing = transport.is_closing

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
    """uvicorn's httptools protocol, with the limits above."""

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits: Limits = config.limits
        self._max_headers = self.limits.max_headers
        # uvicorn logs access lines whenever its logger has a handler anywhere; the setting decides here.
        self.access_log = self.access_log and config.access_log
        # The connection limit is checked here, to answer it in JSON.
        self._limit, self.limit_concurrency = self.limit_concurrency, None
        # When the head or body being read is due (loop time), or None when nothing is being read. One
        # timer checks it, re-armed only when it fires early: no timer is made and cancelled per request.
        self._read_due: float | None = None
        self._read_timer: asyncio.TimerHandle | None = None
        self._state = _HEAD
        self._head_bytes = 0  # of the head (and trailer) being read, counted as they arrive
        self._partial = bytearray()  # the start of a head line the parser has not seen yet
        self._left = 0  # bytes to come of a Content-Length body, or of a chunk and its CRLF
        self._chunked = False
        self._size_line = b""  # the start of a chunk-size line split between reads
        self._ahead = 0  # bytes read ahead of the answers, since the last time there were none
        self._held: tuple[bytes, int] | None = None  # data not parsed yet, and where it starts
        self._refusal: bytes | None = None  # an answer that waits for the answers before it
        self._refused_in_head = False
        self._too_many_headers = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_Transport(transport, self.loop))  # type: ignore[arg-type]
        self.flow = _Flow(self.transport)
        self._arm_read_deadline()  # the first head counts from the connection

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._cancel_read_deadline()
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        self._held = None
        self.transport.forget()  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return  # refused or timed out: what still arrives is not parsed
        self._unset_keepalive_if_required()
        if self._held is not None:
            # Read before reading stopped (over TLS, a record already decrypted): kept behind the rest.
            held, start = self._held
            self._held = (held[start:] + data, 0)
            return
        if (
            self._state == _HEAD
            and not self._head_bytes
            and not self._partial
            and (self.cycle is None or self.cycle.response_complete)
        ):
            # The usual case, a whole request in one read on an idle connection: its head is fed in
            # one piece, and its body too when it is all here and nothing follows it.
            found = data.find(b"\n\r\n", 0, self.limits.max_header_bytes)
            if found >= 0:
                cut = found + 3
                self._head_bytes = cut
                if cut < len(data) and _declared(data, cut) == len(data) - cut:
                    # Exactly one request with its whole body, as webhooks come: one pass of the parser.
                    self._feed(data)
                    return
                if not self._feed(memoryview(data)[:cut]) or cut == len(data):
                    return
                if self._state == _BODY and self._left == len(data) - cut and not self.pipeline:
                    self._left = 0
                    self._feed(memoryview(data)[cut:])
                    return
                self._take(data, cut)
                return
        self._take(data, 0)

    # Cutting the stream into messages

    def _take(self, data: bytes, pos: int) -> None:
        """Parse ``data`` from ``pos``, one part of a message at a time, until it is all parsed, the
        connection may not read further ahead (the rest is held), or it is closing."""
        view = memoryview(data)
        end = len(data)
        while pos < end:
            state = self._state
            ahead = self._is_ahead()
            start = pos
            if state == _HEAD:
                if not self._head_bytes:  # a request starts here
                    if ahead:
                        if len(self.pipeline) >= PIPELINE_DEPTH or self._ahead >= PIPELINE_BYTES:
                            self._hold(data, pos)
                            return
                    elif self._read_due is None:
                        self._arm_read_deadline()
                pos = self._header_block(data, view, pos, end)
            elif state == _TRAILER:
                pos = self._header_block(data, view, pos, end)
            elif state == _IGNORE:
                return
            else:
                stop = end
                if ahead:
                    if self._ahead >= PIPELINE_BYTES:
                        self._hold(data, pos)
                        return
                    stop = min(end, pos + PIPELINE_BYTES - self._ahead)
                if state == _BODY:
                    stop = min(stop, pos + self._left)
                    self._left -= stop - pos
                else:
                    stop = self._chunks(data, pos, stop)
                if stop <= pos:
                    # A chunk-size line that is not one; or (no known input does this) a body the parser
                    # has already seen the end of.
                    self.logger.warning("Invalid HTTP request received.")
                    self._refuse(400, INVALID)
                    return
                pos = stop if self._feed(view[pos:stop]) else -1
            if pos < 0:
                return
            if ahead:
                self._ahead += pos - start

    def _header_block(self, data: bytes, view: memoryview, pos: int, end: int) -> int:
        """Feed a head, or a trailer, from ``pos``: up to its empty line once that is here, else its
        whole lines (the rest waits in ``_partial``), each byte counted first. Where it got to, or -1
        when the connection stops parsing."""
        stop = min(end, pos + self.limits.max_header_bytes - self._head_bytes)  # beyond: over the limit
        partial = self._partial
        # What was fed, and the partial line, end and start lines: the block ends at a CRLF of its own.
        if not partial and data.startswith(b"\r\n", pos, stop):
            cut = pos + 2
        elif partial == b"\r" and data.startswith(b"\n", pos, stop):
            cut = pos + 1
        else:
            found = data.find(b"\n\r\n", pos, stop)
            cut = found + 3 if found >= 0 else 0
        rest = None
        if not cut:  # the block goes on after this read
            if stop < end:
                self.logger.warning("Request header fields too large.")
                self._refuse(431, TOO_LARGE)
                return -1
            cut = data.rfind(b"\n", pos, end) + 1  # just after the last whole line
            if not cut:
                self._head_bytes += end - pos
                partial += view[pos:end]
                return end
            rest = view[cut:end]
        reached = cut if rest is None else end
        self._head_bytes += reached - pos
        lines: bytearray | memoryview = view[pos:cut]
        if partial:
            partial += lines
            lines, self._partial = partial, bytearray()
        if rest is not None:
            self._partial = bytearray(rest)
        return reached if self._feed(lines) else -1

    def _chunks(self, data: bytes, pos: int, end: int) -> int:
        """Where a chunked body's data, from ``pos``, stops within ``data[:end]``: at ``end``, or just
        after the last chunk's size line (the trailer follows). -1 for a size line that is not one."""
        left = self._left
        while pos < end:
            if left:
                step = min(left, end - pos)
                pos += step
                left -= step
                continue
            nl = data.find(b"\n", pos, end)
            if nl < 0:
                self._size_line += data[pos : min(end, pos + CHUNK_LINE_BYTES + 1)]
                if len(self._size_line) > CHUNK_LINE_BYTES:
                    return -1
                pos = end
                break
            line = data[pos:nl]
            if self._size_line:
                line, self._size_line = self._size_line + line, b""
            if len(line) > CHUNK_LINE_BYTES:
                return -1
            pos = nl + 1
            try:
                # int() takes more than the parser does (signs, spaces, "0x"), never less: what the
                # parser refuses, it refuses itself when it reaches this line.
                size = int(line.split(b";", 1)[0].rstrip(b"\r"), 16)
            except ValueError:
                return -1
            if size < 0:
                return -1
            if not size:
                self._state = _TRAILER
                break
            left = size + 2  # the data and its CRLF
        self._left = left
        return pos

    def _feed(self, data: bytes | bytearray | memoryview) -> bool:
        """Parse ``data``; False once the connection stops parsing."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()
            return False
        except httptools.HttpParserError:
            if self._too_many_headers:
                self.logger.warning("Request header fields too large.")
                self._refuse(431, TOO_LARGE)
            else:
                self.logger.warning("Invalid HTTP request received.")
                self._refuse(400, INVALID)
            return False
        return self._state != _IGNORE and not self.transport.is_closing()

    def _is_ahead(self) -> bool:
        """Whether what is read now waits behind a request still being answered."""
        if self._state == _HEAD:
            return self.cycle is not None and not self.cycle.response_complete
        return bool(self.pipeline)  # this message's own cycle is queued

    def _hold(self, data: bytes, pos: int) -> None:
        """Stop reading; ``data[pos:]`` is parsed when an answer goes out."""
        self._held = (data, pos)
        self.flow.held = True
        self.flow.pause_reading()

    def _refuse(self, status: int, body: bytes) -> None:
        """Answer ``status`` and close, once the requests before this one are answered; nothing more
        is read."""
        self._refused_in_head = self._state == _HEAD
        ahead = self._is_ahead()
        self._state = _IGNORE
        self._held = None
        self._cancel_read_deadline()
        response = _response(status, body, self.server_state.default_headers)
        if ahead:
            self._refusal = response
            self.flow.held = True
            self.flow.pause_reading()
        else:
            self.transport.write(response)
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, INVALID)

    # Parser callbacks

    # Headers are counted once the head (at most max_header_bytes, so at most so many lines) is parsed,
    # and a trailer's with its message: no callback of ours runs per header.

    def on_headers_complete(self) -> None:
        headers = self.headers
        if len(headers) > self._max_headers:
            self._too_many_headers = True
            raise _TooManyHeaders
        for name, value in headers:
            if name == b"content-length":
                self._left = int(value)
            elif name == b"transfer-encoding":
                self._chunked = True  # the parser refuses any other transfer coding of a request
        limit = self._limit
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            self.logger.warning("Exceeded concurrency limit.")
            self.app = _busy
            try:
                super().on_headers_complete()
            finally:
                self.app = self.config.loaded_app
        else:
            super().on_headers_complete()
        # Only now: a head uvicorn refuses (its URL) is refused as a head, after the answers before it.
        self._state = _CHUNKS if self._chunked else _BODY
        self._chunked = False
        if self.pipeline:
            self._cancel_read_deadline()  # queued: its body's time starts when it is its turn
        else:
            self._arm_read_deadline()  # the body counts from the end of the head

    def on_message_complete(self) -> None:
        if len(self.headers) > self._max_headers:  # with a chunked body's trailer
            self._too_many_headers = True
            raise _TooManyHeaders
        super().on_message_complete()
        # After a request that closes the connection, the parser ignores what follows; so does this.
        self._state = _HEAD if self.cycle is None or self.cycle.keep_alive else _IGNORE
        self._head_bytes = 0
        self._left = 0
        self._cancel_read_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # starts the next request queued, if any
        if self.transport.is_closing():
            return
        if not self.pipeline:
            self._ahead = 0
        if self._refusal is not None:
            if self.cycle.response_complete if self._refused_in_head else not self.pipeline:
                self.transport.write(self._refusal)
                self.transport.close()
            return
        if self._held is not None:
            data, pos = self._held
            self._held = None
            self.flow.held = False
            self._take(data, pos)
            if self._held is None:
                self.flow.resume_reading()
        state = self._state
        if (
            self._read_due is None
            and (self._head_bytes if state == _HEAD else state != _IGNORE)
            and not self._is_ahead()
        ):
            # A request that arrived in part while others were answered: it is read against the clock now.
            self._unset_keepalive_if_required()
            self._arm_read_deadline()

    # Deadlines

    def _arm_read_deadline(self) -> None:
        due = self.loop.time() + self.limits.read_timeout_s
        self._read_due = due
        if self._read_timer is None:
            self._read_timer = self.loop.call_at(due, self._check_read_deadline)

    def _cancel_read_deadline(self) -> None:
        self._read_due = None

    def _check_read_deadline(self) -> None:
        self._read_timer = None
        due = self._read_due
        if due is None:
            return  # nothing is being read: the next read arms the timer again
        if self.loop.time() < due:
            self._read_timer = self.loop.call_at(due, self._check_read_deadline)
            return
        self._read_timed_out()

    def _read_timed_out(self) -> None:
        self._read_due = None
        if self.flow.read_paused:
            # The gateway stopped reading (the app has not taken the body yet): the client is not late,
            # so its time starts again.
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
