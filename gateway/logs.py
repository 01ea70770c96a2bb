"""JSON log lines on stderr: one per decision, plus start-up, reload and failure events, and every line
uvicorn, asyncio, warnings and uncaught exceptions write.

Every string a line carries passes one filter here, so no caller can forget it: a run of digits that
looks like a phone number is masked (last digits only) and each value is cut at 256 characters.
Lines are written behind the answer: the event loop only formats a line and queues it; a thread writes
the queue to stderr, so a slow log pipe never stalls a request. When the queue is full a line is
dropped and counted (``routing_log_lines_dropped_total``, and a ``log lines dropped`` line once there is
room again).
"""

from __future__ import annotations

import atexit
import collections
import functools
import logging
import logging.handlers
import os
import re
import signal
import sys
import threading
import time
import traceback
from typing import Any

import msgspec

from core.numbers import NUMBER_IN_TEXT, mask
from gateway import metrics

_encode = msgspec.json.Encoder().encode
log = logging.getLogger("routing_gateway")

MAX_CHARS = 256  # per string value (SPEC section 8)
MAX_ITEMS = 50  # per list; a reload refused by more problems says how many more
MAX_DEPTH = 4
QUEUE_LINES = 10_000  # lines waiting for stderr; beyond, lines are dropped and counted
FLUSH_S = (
    0.8  # at exit, how long in all to wait for the queue to reach stderr (within shutdown's last second)
)
STACK_FRAMES = 6

_PHONE = NUMBER_IN_TEXT
_MIN_RUN = 7
# Written by the gateway itself and never a phone number; a digit run in them means nothing.
_OWN_KEYS = frozenset({"version", "previous", "mq_id"})
_BIG = 1 << 63
_PLAIN = frozenset({float, bool, type(None)})


def _masked(m: re.Match) -> str:
    return mask(m[0])


# Most values repeat line after line (protocol, outcome, rule, service): short ones are remembered.
_seen: dict[str, str] = {}
_SEEN_CHARS = 64
_SEEN_MAX = 4096


def clean_text(text: str) -> str:
    """``text`` with phone-number-like runs masked and cut at ``MAX_CHARS`` (marked, with the full size)."""
    n = len(text)
    if n < _MIN_RUN:
        return text
    if n <= _SEEN_CHARS:
        done = _seen.get(text)
        if done is None:
            if len(_seen) >= _SEEN_MAX:
                _seen.clear()
            done = _seen[text] = _PHONE.sub(_masked, text)
        return done
    if n <= MAX_CHARS:
        return _PHONE.sub(_masked, text)
    marker = f"...[cut: {n} chars]"
    return _PHONE.sub(_masked, text[: MAX_CHARS - len(marker)]) + marker


def clean(value: Any, depth: int = 0) -> Any:
    """A field's value made safe for a line: strings cleaned, containers walked (bounded), the rest as
    JSON knows it or as text."""
    if value is None or value is True or value is False or type(value) is float:
        return value
    if type(value) is str:
        return clean_text(value)
    if type(value) is int:
        # Beyond 64 bits JSON encoders refuse it; str() refuses beyond 4300 digits.
        return value if -_BIG <= value < _BIG else f"(an integer of {value.bit_length()} bits)"
    if depth >= MAX_DEPTH:
        return "(nested too deep)"
    if isinstance(value, dict):
        out = {}
        for i, (k, v) in enumerate(value.items()):
            if i == MAX_ITEMS:
                out["..."] = f"{len(value) - MAX_ITEMS} more"
                break
            out[clean_text(k if type(k) is str else str(k))] = clean(v, depth + 1)
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [clean(v, depth + 1) for _, v in zip(range(MAX_ITEMS), value)]
        if len(value) > MAX_ITEMS:
            items.append(f"... and {len(value) - MAX_ITEMS} more")
        return items
    try:
        text = str(value)
    except Exception:  # noqa: BLE001 - a value that cannot be shown must not cost the line
        text = f"(unprintable {type(value).__name__})"
    return clean_text(text)


def _short_path(path: str) -> str:
    head, tail = os.path.split(path)
    return f"{os.path.basename(head)}/{tail}" if head else tail


def _error(exc_info) -> dict[str, str]:
    """The exception as two fields: ``error`` (class and message) and ``stack`` (the innermost frames,
    innermost first, each ``folder/file.py:line function``, joined by `` < ``). No source lines are read."""
    kind, exc, tb = exc_info
    if kind is None:
        return {}
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - an exception whose message fails is still reported by its class
        message = ""
    fields = {"error": f"{kind.__name__}: {message}" if message else kind.__name__}
    frames = list(traceback.walk_tb(tb))[-STACK_FRAMES:]
    if frames:
        fields["stack"] = " < ".join(
            f"{_short_path(f.f_code.co_filename)}:{line} {f.f_code.co_name}" for f, line in reversed(frames)
        )
    return fields


@functools.lru_cache(maxsize=2)
def _second(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch))


def _put(out: dict[str, Any], fields: dict[str, Any], skip_none: bool = False) -> None:
    """``fields`` cleaned into ``out``, never over a key ``out`` already holds."""
    for k, v in fields.items():
        if k in out or v is None and skip_none:
            continue
        kind = type(v)  # the common cases first: this runs for every decision
        if kind is str:
            out[k] = v if k in _OWN_KEYS and len(v) <= MAX_CHARS else clean_text(v)
        elif kind in _PLAIN or kind is int and -_BIG <= v < _BIG:
            out[k] = v
        else:
            out[k] = clean(v, 1)


class JsonFormatter(logging.Formatter):
    """``{"ts": ..., "level": ..., "event": ..., "pid": ..., <fields>}`` on one line, every value cleaned."""

    def line(self, record: logging.LogRecord) -> bytes:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a foreign record with bad arguments still gives a line
            message = str(record.msg)
        out: dict[str, Any] = {
            "ts": f"{_second(int(record.created))}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": clean_text(message),
            # With --workers N, which worker wrote the line.
            "pid": record.process,
        }
        if record.name != log.name:
            out["logger"] = record.name
        fields = getattr(record, "fields", None)
        if fields:
            _put(out, fields)
        if record.exc_info:
            out.update(clean(_error(record.exc_info), 1))
        return _encode(out)

    def format(self, record: logging.LogRecord) -> str:
        return self.line(record).decode()


class _Behind(logging.handlers.QueueHandler):
    """Formats on the caller's thread and queues the finished line; never waits for room: with ``limit``
    lines waiting, a line is dropped and counted."""

    def __init__(self, q: collections.deque, wake: threading.Event, limit: int) -> None:
        super().__init__(q)  # type: ignore[arg-type]
        self.setFormatter(JsonFormatter())
        self.wake = wake
        self.limit = limit
        self.dropped = 0
        self._unreported = 0

    def prepare(self, record: logging.LogRecord) -> bytes:
        return self.formatter.line(record) + b"\n"

    def enqueue(self, line: bytes) -> None:
        # A deque (appends are atomic, no lock to take) bounded here: handlers hold their own lock while
        # emitting. The writer is woken once per batch, not once per line.
        q = self.queue
        if len(q) >= self.limit:
            self.dropped += 1
            self._unreported += 1
            metrics.LOG_DROPPED.inc()
            return
        if self._unreported:
            q.append(self._drops_line())
            self._unreported = 0
        q.append(line)
        if not self.wake.is_set():
            self.wake.set()

    def _drops_line(self) -> bytes:
        record = logging.LogRecord(log.name, logging.WARNING, __file__, 0, "log lines dropped", None, None)
        record.fields = {"count": self._unreported, "note": "stderr did not keep up"}
        return self.formatter.line(record) + b"\n"

    def handleError(self, record: logging.LogRecord) -> None:
        # Formatting failed: count it as a lost line rather than print a traceback to stderr.
        self.dropped += 1
        metrics.LOG_DROPPED.inc()


_STOP = object()
# A pipe takes a write of up to this many bytes whole: lines from several workers sharing stderr never mix.
_PIPE_BUF = 4096
# Once woken, the writer lets lines gather this long: a write (and a turn of the GIL) per batch, not per line.
GATHER_S = 0.002


class _Writer(threading.Thread):
    """The thread that writes queued lines to a file descriptor (stderr), as many as are waiting in one
    write (up to a pipe's atomic size). It writes with os.write, so a blocked pipe holds no lock that
    the rest of the process (or its exit) needs."""

    def __init__(self, q: collections.deque, wake: threading.Event, fd: int) -> None:
        super().__init__(name="log-writer", daemon=True)
        self.queue = q
        self.wake = wake
        self.fd = fd

    def run(self) -> None:
        q = self.queue
        while True:
            self.wake.wait()
            # Cleared before taking the lines: a line queued from here on wakes the writer again.
            self.wake.clear()
            time.sleep(GATHER_S)
            items = [q.popleft() for _ in range(len(q))]
            lines = [x for x in items if type(x) is bytes]
            if lines:
                self._write(b"".join(lines))
            # Flush marks are set once every line queued before them is written; then a stop ends.
            for item in items:
                if type(item) is threading.Event:
                    item.set()
            if any(item is _STOP for item in items):
                return

    def _write(self, data: bytes) -> None:
        start, end = 0, len(data)
        try:
            while start < end:
                # Whole lines, at most a pipe's atomic size at a time (a longer line goes alone).
                stop = end
                if end - start > _PIPE_BUF:
                    stop = data.rfind(b"\n", start, start + _PIPE_BUF) + 1
                    if stop <= start:
                        nl = data.find(b"\n", start)
                        stop = end if nl < 0 else nl + 1
                view = memoryview(data)[start:stop]
                while view:
                    view = view[os.write(self.fd, view) :]
                start = stop
        except OSError:
            pass  # stderr is gone: nothing else can be told

    def stop(self, timeout: float = FLUSH_S) -> None:
        """Write what is queued, then end."""
        self.queue.append(_STOP)
        self.wake.set()
        self.join(timeout)


class Output:
    """Lines written behind: a handler that formats and queues (at most ``lines`` waiting), and a thread
    that writes them to ``fd``."""

    def __init__(self, fd: int, lines: int = QUEUE_LINES) -> None:
        q: collections.deque = collections.deque()
        wake = threading.Event()
        self.handler = _Behind(q, wake, lines)
        self.writer = _Writer(q, wake, fd)
        self.stalled = False

    def start(self) -> Output:
        self.writer.start()
        return self

    def flush(self, timeout: float = FLUSH_S) -> bool:
        """Wait (up to ``timeout``) until every line queued so far is written. False if the output did not
        take them in time: after that, later flushes do not wait again (a stalled stderr must not stretch
        a shutdown once per flush)."""
        if self.stalled:
            return False
        done = threading.Event()
        self.writer.queue.append(done)
        self.writer.wake.set()
        self.stalled = not done.wait(timeout)
        return not self.stalled


_output: Output | None = None


def flush(timeout: float = FLUSH_S) -> bool:
    """Write what is queued before going on (at exit: the last lines). False if stderr did not take them
    within ``timeout``."""
    return True if _output is None else _output.flush(timeout)


def _flush_then_raise(sig: int, frame) -> None:
    # uvicorn ends a signalled process by raising the signal again once it has shut down, after
    # putting back the handler it found: this one. Write what is queued ("stopped"), then end as
    # the signal would have.
    flush()
    signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
    signal.raise_signal(sig)


def _uncaught(kind, exc, tb) -> None:
    if issubclass(kind, KeyboardInterrupt):
        return
    log.critical("crashed", exc_info=(kind, exc, tb))
    flush()


def _thread_uncaught(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    log.error(
        "thread crashed",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        extra={"fields": {"thread": args.thread.name if args.thread else None}},
    )


def _unraisable(u) -> None:
    log.error(
        "exception ignored",
        exc_info=(u.exc_type, u.exc_value, u.exc_traceback),
        extra={"fields": {"where": u.err_msg or None, "object": u.object}},
    )


def _stderr_fd() -> int:
    try:
        return sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):  # no stderr object, or one without a descriptor
        return 2


def setup(level: str = "info") -> None:
    """Send every log line of the process to stderr as JSON, written behind by a thread.

    The gateway's own logger logs at ``level``; uvicorn, asyncio, Python warnings and any other library
    go through the root logger (warnings and above, and uvicorn's own level). Uncaught exceptions become
    lines too. Called again (a worker process, a test), it sets levels again and starts nothing twice."""
    global _output
    if _output is None:
        _output = Output(_stderr_fd()).start()
        atexit.register(flush)
        if threading.current_thread() is threading.main_thread():
            for sig, default in (
                (signal.SIGTERM, signal.SIG_DFL),
                (signal.SIGINT, signal.default_int_handler),
            ):
                if signal.getsignal(sig) is default:
                    signal.signal(sig, _flush_then_raise)
        sys.excepthook = _uncaught
        threading.excepthook = _thread_uncaught
        sys.unraisablehook = _unraisable
    handler = _output.handler
    root = logging.getLogger()
    if handler not in root.handlers:
        root.addHandler(handler)
    root.setLevel(logging.WARNING)
    log.handlers[:] = []
    log.propagate = True
    log.setLevel(level.upper())
    # With log_config=None uvicorn installs no handlers; any it did (or another library did) would write
    # plain text, so these loggers hand their lines to the root's JSON handler instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.asgi", "asyncio", "py.warnings"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    access = logging.getLogger("uvicorn.access")
    if access.handlers:  # no handlers and no propagation: uvicorn switched it off (server.access_log)
        access.handlers[:] = []
        access.propagate = True
    logging.captureWarnings(True)


def decision_line(
    request_id: str, protocol: str, status: int, fields: dict[str, Any], own_id: bool = False
) -> None:
    """The ``decision`` line of one answer: the same line :func:`event` writes, made without a
    ``logging`` record (it is written for every webhook, and a record costs more than the line).
    Fields that are None are left out. ``own_id``: the gateway made the request id, which is never a number."""
    out = _output
    if out is None or not log.isEnabledFor(logging.INFO):
        kept = {k: v for k, v in fields.items() if v is not None}
        event("decision", request_id=request_id, protocol=protocol, status=status, **kept)
        return
    now = time.time()
    second = int(now)
    line: dict[str, Any] = {
        "ts": f"{_second(second)}.{int((now - second) * 1000):03d}Z",
        "level": "info",
        "event": "decision",
        "pid": os.getpid(),
        "request_id": request_id if own_id else clean_text(request_id),
        "protocol": protocol,
        "status": status,
    }
    _put(line, fields, skip_none=True)
    out.handler.enqueue(_encode(line) + b"\n")


def event(name: str, level: int = logging.INFO, exc_info: bool = False, **fields: Any) -> None:
    """One line: ``name`` as its event, ``fields`` as they are (the formatter masks and cuts them)."""
    if log.isEnabledFor(level):
        log.log(level, name, extra={"fields": fields}, exc_info=exc_info)
