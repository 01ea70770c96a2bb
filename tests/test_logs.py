"""Log lines: no whole phone number and nothing over 256 characters in any field, JSON on every line of
stderr (uvicorn's, asyncio's, warnings, crashes included), and written behind the answer."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import termios
import threading
import time

import httpx
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from gateway.logs import MAX_CHARS, JsonFormatter, Output
from tests.conftest import BIN, ROOT, free_port

SEPARATORS = re.compile(r"[\s\-()/+\u00a0]")


def fmt(event: str = "decision", *, name: str = "routing_gateway", args=None, exc_info=None, **fields):
    """A record as the gateway (or another logger) makes it, through the formatter: the text and the JSON."""
    record = logging.LogRecord(name, logging.INFO, __file__, 1, event, args, exc_info)
    record.fields = fields
    text = JsonFormatter().format(record)
    return text, json.loads(text)


def strings(value):
    """Every string in a parsed line, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def assert_not_whole(text: str, *numbers: str) -> None:
    """None of ``numbers`` appears whole in ``text``, however it was written (separators dropped)."""
    flat = SEPARATORS.sub("", text)
    for number in numbers:
        digits = re.sub(r"\D", "", number)
        assert digits not in flat, (number, text)


# --- the formatter -----------------------------------------------------------------------------------


def test_numbers_are_masked_in_every_field_nested_listed_and_as_keys():
    text, line = fmt(
        service="+358501231234",
        national="0501231234",
        nested={"a": {"b": ["+358 50 123 1234", {"c": "(050) 765-4321"}]}},
        listed=("0401234567", "+46 70 123 45 67"),
        keyed={"+358409998888": True},
        problems=['callers."+358401112222".tags: expected a list of strings, got str'],
    )
    assert_not_whole(
        text,
        "+358501231234",
        "0501231234",
        "0507654321",
        "0401234567",
        "+46701234567",
        "+358409998888",
        "+358401112222",
    )
    assert line["service"] == "**********234"
    assert line["national"] == "*******234"
    assert line["nested"]["a"]["b"][0] == "*************234"
    assert line["keyed"] == {"**********888": True}
    assert line["problems"] == ['callers."**********222".tags: expected a list of strings, got str']
    assert list(line)[:3] == ["ts", "level", "event"]


def test_numbers_are_masked_in_messages_and_errors_of_any_logger():
    try:
        raise ValueError("no CRM answer for +358501231234")
    except ValueError:
        exc_info = sys.exc_info()
    access = (
        '%s - "%s %s HTTP/%s" %d',
        ("10.1.2.3:5000", "POST", "/smartrouting?anum=%2B358409998888", "1.1", 200),
    )
    text, line = fmt(access[0], name="uvicorn.access", args=access[1], exc_info=exc_info)
    assert_not_whole(text, "+358501231234", "+358409998888")
    assert line["logger"] == "uvicorn.access"
    assert line["event"] == '10.1.2.3:5000 - "POST /smartrouting?anum=%2B*********888 HTTP/1.1" 200'
    assert line["error"] == "ValueError: no CRM answer for **********234"
    # The stack is one field, innermost frame first, and no raw traceback lines.
    assert line["stack"].startswith("tests/test_logs.py:")
    assert "test_numbers_are_masked_in_messages_and_errors_of_any_logger" in line["stack"]
    assert "\n" not in text


def test_an_international_number_is_masked_wherever_it_stands():
    text, line = fmt(service="+358401112222QQQ", url="x%2B358401112222y", word="Q+358 40 111 2222")
    assert_not_whole(text, "+358401112222")
    assert line["service"] == "**********222QQQ"


@pytest.mark.parametrize(
    "kept",
    [
        "a06ada065dee0ed2",  # a request id
        "1ef698cb-ffa3-6b00-8113-768365ac9ea8",  # an mqID
        "rules[0].then.priority: 20000 is above 10000",
        "closed_dates[0]: '2026-13-01' is not a date",
        "2026-11-21T19:30:51",
        "allow_networks[0]: '192.168.100.200/33' is not an address",
        "numbers = ['100', '101']",
        "**********234",  # already masked
    ],
)
def test_what_is_not_a_phone_number_is_kept(kept):
    _, line = fmt(kept, value=kept)
    assert line["event"] == kept and line["value"] == kept


@pytest.mark.parametrize(
    "text",
    [
        "+358.50.123.1234",
        "358.50.123.1234",
        "+358501   231234",
        "+358\u200950\u2009123\u20091234",
        "+358\u300050\u3000123\u30001234",
        'callers."+358.40.765.4321".tags',
        "/call/request/358.50.123.1234?b=1",
    ],
)
def test_every_way_normalise_reads_a_number_is_masked(text):
    # Whatever the gateway takes for a caller's number is masked in a line too.
    from core.numbers import normalise

    digits = normalise(text.split('"')[1] if '"' in text else text.rpartition("/")[2].partition("?")[0])
    _, line = fmt("decision", service=text)
    assert digits.lstrip("+") not in line["service"] and line["service"].count("*") >= 7


def test_addresses_and_dates_stay_readable():
    _, line = fmt("x", a="192.168.100.200:54321", b="2026-11-23T10:00:00+02:00", c="10.1.2.3")
    assert (line["a"], line["b"], line["c"]) == (
        "192.168.100.200:54321",
        "2026-11-23T10:00:00+02:00",
        "10.1.2.3",
    )


def test_own_fields_and_numbers_are_kept():
    _, line = fmt("reloaded", version="123456789012", previous="098765432109", latency_ms=0.47)
    assert line["version"] == "123456789012" and line["previous"] == "098765432109"
    assert line["pid"] == os.getpid() and line["latency_ms"] == 0.47  # every line says which process wrote it


def test_every_string_is_cut_at_256_characters_with_a_marker():
    long = "x" * 1000
    _, line = fmt(
        long,
        value=long,
        items=[long] * 3,
        nested={"k": {long: long}},
        many=list(range(500)),
    )
    assert all(len(s) <= MAX_CHARS for s in strings(line))
    assert line["value"].endswith("...[cut: 1000 chars]") and len(line["value"]) == MAX_CHARS
    assert line["event"] == line["value"] == line["items"][2] == next(iter(line["nested"]["k"]))
    assert line["many"][:50] == list(range(50)) and line["many"][50] == "... and 450 more"


def test_a_90_kb_value_makes_a_short_line_and_its_numbers_are_masked():
    targetid = "+358501231234 " + "Q" * 90_000
    text, line = fmt(service=targetid, other="9" * 92_160)
    assert len(text.encode()) < 1024
    assert line["service"] == "**********234 " + "Q" * (MAX_CHARS - 14 - 21) + "...[cut: 90014 chars]"
    assert line["other"].endswith("...[cut: 92160 chars]") and "9999999" not in line["other"]


def test_values_json_cannot_hold_become_text():
    class Odd:
        def __str__(self):
            raise RuntimeError("no text")

    _, line = fmt(path=ROOT / "x+358501231234", big=10**5000, odd=Odd(), deep={"a": {"b": {"c": {"d": {}}}}})
    assert line["path"] == f"{ROOT}/x**********234"
    assert line["big"] == "(an integer of 16610 bits)"
    assert line["odd"] == "(unprintable Odd)"
    assert line["deep"] == {"a": {"b": {"c": "(nested too deep)"}}}


def written(plus: str, groups: list[str], seps: list[str]) -> str:
    return plus + "".join(g + s for g, s in zip(groups[:-1], seps)) + groups[-1]


written_numbers = st.builds(
    written,
    st.sampled_from(["", "+", "00"]),
    st.lists(st.text("0123456789", min_size=1, max_size=4), min_size=2, max_size=6),
    st.lists(st.sampled_from([" ", "-", "/", ") ", " (", "\u00a0", "-"]), min_size=6, max_size=6),
)


@given(
    number=written_numbers,
    before=st.sampled_from(["", " ", '"', "=", "%2B", "tel:", "callers.", "(", "[", "\n", "_"]),
    after=st.sampled_from(["", " ", '"', ".tags", "&x=1", "]", ")", ",", "\t"]),
)
def test_a_phone_number_never_appears_whole(number, before, after):
    digits = re.sub(r"\D", "", number)
    assume(len(digits) >= 7)
    assume(not re.fullmatch(r"(00)?\d{4}-[01]\d-[0-3]\d", number))  # a date, kept as one
    value = before + number + after
    text, _ = fmt(value, service=value, items=[value], nested={value: value})
    assert digits not in SEPARATORS.sub("", text)


# --- written behind ----------------------------------------------------------------------------------


def dropped_total() -> float:
    return REGISTRY.get_sample_value("routing_log_lines_dropped_total") or 0.0


def test_a_stalled_output_drops_and_counts_lines_instead_of_blocking():
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
    out = Output(w, lines=8).start()
    logger = logging.getLogger("test.stalled")
    logger.handlers[:] = [out.handler]
    logger.propagate = False
    before = dropped_total()
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(r, 65536), b"")))
    try:
        # ~330 bytes a line: the pipe holds about 12, the queue 8; nobody reads the pipe.
        sender = threading.Thread(
            target=lambda: [
                logger.warning("line %d", i, extra={"fields": {"pad": "p" * 250}}) for i in range(200)
            ]
        )
        sender.start()
        sender.join(10)
        assert not sender.is_alive(), "logging blocked on a stalled output"
        dropped = out.handler.dropped
        assert dropped >= 200 - 13 - 8 - 5
        assert dropped_total() - before == dropped
        # Read again: what was queued comes out, then a line saying how many were lost, then the next.
        reader.start()
        assert out.flush(10)
        logger.warning("after")
        assert out.flush(10)
    finally:
        if not reader.is_alive():
            os.close(r)  # a blocked write fails instead of holding the writer for ever
        out.writer.stop()
        os.close(w)
    reader.join(10)
    os.close(r)
    lines = [json.loads(x) for x in b"".join(chunks).decode().splitlines()]
    assert [x["event"] for x in lines[-2:]] == ["log lines dropped", "after"]
    # Each time room came back, the lines lost until then were reported: all of them, once.
    assert sum(x["count"] for x in lines if x["event"] == "log lines dropped") == dropped
    assert sum(x["event"].startswith("line ") for x in lines) == 200 - dropped


SCRIPT = r"""
import asyncio, gc, logging, logging.config, threading, warnings
from uvicorn.config import LOGGING_CONFIG

# What uvicorn does with its default log_config, in a worker before the app (and its logging) is loaded.
logging.config.dictConfig(LOGGING_CONFIG)
from gateway import logs
logs.setup()
logging.getLogger("uvicorn.error").warning("Invalid HTTP request received.")
logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "POST",
                                         "/smartrouting?anum=%2B358501231234", "1.1", 200)
warnings.warn("caller +358501231234 is deprecated")

async def main():
    async def boom():
        raise ValueError("lookup for +358501231234")
    task = asyncio.get_running_loop().create_task(boom())
    await asyncio.sleep(0.01)
    del task
    gc.collect()
asyncio.run(main())

def crash():
    raise KeyError("+358501231234")
t = threading.Thread(target=crash, name="helper")
t.start(); t.join()

class Leaky:
    def __del__(self):
        raise OSError("closing +358501231234")
Leaky()
logs.event("stopped", pid=1)
raise RuntimeError("the end of +358501231234")
"""


def test_setup_turns_every_line_of_the_process_into_json():
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT], check=False, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 1
    assert run.stdout == ""
    assert "358501231234" not in run.stderr
    lines = [json.loads(x) for x in run.stderr.splitlines()]
    by_event = {x["event"].split("\n")[0]: x for x in lines}
    assert by_event["Invalid HTTP request received."]["logger"] == "uvicorn.error"
    assert by_event['127.0.0.1:5000 - "POST /smartrouting?anum=%2B*********234 HTTP/1.1" 200']
    warning = next(x for x in lines if x.get("logger") == "py.warnings")
    assert "**********234 is deprecated" in warning["event"]
    task = by_event["Task exception was never retrieved"]
    assert task["logger"] == "asyncio" and task["error"] == "ValueError: lookup for **********234"
    assert "boom" in task["stack"]
    assert by_event["thread crashed"]["thread"] == "helper"
    assert by_event["exception ignored"]["error"] == "OSError: closing **********234"
    assert lines[-2]["event"] == "stopped"
    crashed = lines[-1]
    assert (crashed["level"], crashed["event"]) == ("critical", "crashed")
    assert crashed["error"] == "RuntimeError: the end of **********234" and "<module>" in crashed["stack"]


# --- through the real server -------------------------------------------------------------------------

CONFIG = """
[smartrouting]
api_keys = ["${LOGS_SR_KEY}"]

[eml]
api_keys = ["${LOGS_EML_KEY}"]

[services.Sales]
numbers = ["+358201234567"]

[callers."+358501231234"]
tags = ["vip"]

[[rules]]
name = "vip"
when = { tag = "vip" }
then = { target = "VIP" }
"""
ENV = {"LOGS_SR_KEY": "sr-key-8d1f", "LOGS_EML_KEY": "eml-key-3b7c"}
SR = {"X-Benemen-APIKey": ENV["LOGS_SR_KEY"]}
NUMBERS = ("+358501231234", "+358401112222", "+358409998888", "+358201234567")


def parse_all(text: str) -> list[dict]:
    lines = []
    for raw in text.splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            pytest.fail(f"not a JSON line: {raw[:300]!r}")
    return lines


def check_lines(text: str) -> list[dict]:
    lines = parse_all(text)
    assert_not_whole(text, *NUMBERS)
    for line in lines:
        assert isinstance(line, dict) and {"ts", "level", "event"} <= set(line)
        assert all(len(s) <= MAX_CHARS for s in strings(line)), line
    return lines


def garbage(port: int) -> bytes:
    """A request uvicorn cannot parse; its answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GARBAGE \x00\x01 nonsense\r\n\r\n")
        return s.recv(4096)


@pytest.mark.e2e
def test_every_stderr_line_is_json_from_start_to_stop(start_gateway):
    gw = start_gateway(CONFIG, env=ENV)
    assert (
        gw.smartrouting({"anum": "+358501231234", "targetid": "+358401112222"}, headers=SR).status_code == 200
    )
    huge = gw.smartrouting({"anum": "+358501231234", "targetid": "+358401112222" + "Q" * 90_000}, headers=SR)
    assert huge.status_code == 200
    assert (
        gw.smartrouting({"anum": "+358501231234"}, headers={"X-Benemen-APIKey": "wrong"}).status_code == 401
    )
    eml = gw.eml(
        {"callID": "c1", "rclassification": "+358409998888", "callTime": "5"},
        headers={"X-API-Key": ENV["LOGS_EML_KEY"]},
    )
    assert eml.status_code == 201
    assert garbage(gw.port).startswith(b"HTTP/1.1 400")
    gw.config.write_text(CONFIG + '\n[callers."+358409998888"]\ntags = "vip"\n')
    gw.signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while "reload refused" not in gw.logs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gw.stop() in (0, -signal.SIGTERM)
    lines = check_lines(gw.logs())
    events = [x["event"] for x in lines]
    assert events[0] == "started" and events[-1] == "stopped"
    assert "Invalid HTTP request received." in events
    decisions = [x for x in lines if x["event"] == "decision"]
    assert [x.get("service") for x in decisions] == [
        "**********222",
        "**********222" + "Q" * 222 + "...[cut: 90013 chars]",
        None,
        "**********888",
    ]
    refused = next(x for x in lines if x["event"] == "reload refused")
    assert 'callers."**********888".tags: expected a list of strings, got str' in refused["problems"]


@pytest.mark.e2e
def test_a_busy_port_is_reported_in_json(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = subprocess.run(
            [str(BIN), "serve", "--config", str(config), "--port", str(port)],
            check=False,
            capture_output=True,
            text=True,
            env={**os.environ, **ENV},
            timeout=60,
        )
    assert run.returncode != 0
    assert run.stdout == ""
    lines = check_lines(run.stderr)
    assert any(x["level"] == "error" and "address already in use" in x["event"] for x in lines), run.stderr
    # Nothing claims to have started: "started" is logged only once the socket is bound.
    assert not any(x["event"] in ("started", "worker started") for x in lines), run.stderr


@pytest.mark.e2e
@pytest.mark.parametrize("workers", [1, 2])
def test_started_says_where_it_listens(start_gateway, workers):
    gw = start_gateway(CONFIG, "--workers", str(workers), env=ENV)
    deadline = time.monotonic() + 10  # lines are written behind: wait for it

    def started() -> list[dict]:
        return [json.loads(x) for x in gw.logs().splitlines() if '"event":"started"' in x]

    while not started() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(started()) == 1
    line = started()[0]
    assert (line["host"], line["port"], line["scheme"], line["workers"]) == (
        "127.0.0.1",
        gw.port,
        "http",
        workers,
    )
    assert (
        line["pid"] == gw.proc.pid and line["version"] == gw.client.get("/readyz").json()["config"]["version"]
    )


def pending(fd: int) -> int:
    """Bytes written to a pipe and not yet read."""
    return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"), sys.byteorder)


@pytest.mark.e2e
@contextlib.contextmanager
def stalled_stderr(tmp_path, config_text: str):
    """A gateway whose stderr is a 4 KiB pipe nobody reads (yet): (process, its stderr fd, pipe size,
    a client). The process is killed if still running at the end."""
    config = tmp_path / "config.toml"
    config.write_text(config_text)
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN), "serve", "--config", str(config), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **ENV},
    )
    err = proc.stderr.fileno()
    try:
        fcntl.fcntl(err, fcntl.F_SETPIPE_SZ, 4096)  # before the process has written anything
        size = fcntl.fcntl(err, fcntl.F_GETPIPE_SZ)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None and time.monotonic() < deadline
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.05)
            yield proc, err, size, client
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_a_stalled_stderr_does_not_stop_webhooks(tmp_path):
    with stalled_stderr(tmp_path, CONFIG) as (proc, err, size, client):
        # Nobody reads stderr: after a dozen decision lines the pipe is full and stays full.
        body = {"anum": "+358501231234", "targetid": "T" * 2000}
        for _ in range(300):
            assert client.post("/smartrouting", json=body, headers=SR).status_code == 200
        assert pending(err) > size - 1024  # full: the next line does not fit
        chunks: list[bytes] = []
        reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(err, 65536), b"")))
        reader.start()
        assert client.post("/smartrouting", json=body, headers=SR).status_code == 200
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        reader.join(10)
    lines = check_lines(b"".join(chunks).decode())
    # Nothing was lost: the queue held what the pipe could not take, and the last line came out at exit.
    assert sum(x["event"] == "decision" for x in lines) == 301
    assert lines[-1]["event"] == "stopped"


def test_a_stalled_stderr_does_not_stretch_shutdown(tmp_path):
    # With stderr full for good, SIGTERM still ends the process within shutdown_timeout_s: the lines
    # that cannot be written are given up on once, not waited for at every flush.
    with stalled_stderr(tmp_path, "[server]\nshutdown_timeout_s = 3\n" + CONFIG) as (proc, err, size, client):
        # Until the queue behind the full pipe is full too, and lines are being dropped.
        body = {"anum": "+358501231234", "targetid": "T" * 200}
        for sent in range(30_000):
            assert client.post("/smartrouting", json=body, headers=SR).status_code == 200
            if sent % 500 == 0 and "routing_log_lines_dropped_total 0.0" not in client.get("/metrics").text:
                break
        assert pending(err) > size - 1024
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        took = time.monotonic() - began
    # shutdown_timeout_s, plus what a loaded machine takes to end a process.
    assert took < 3 + 1.5, took


@pytest.mark.e2e
def test_workers_write_their_last_lines(start_gateway):
    gw = start_gateway(CONFIG, "--workers", "2", env=ENV)
    deadline = time.monotonic() + 30
    while gw.logs().count('"event":"worker started"') < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gw.smartrouting({"anum": "+358501231234"}, headers=SR).status_code == 200
    gw.stop()
    lines = check_lines(gw.logs())
    assert sum(x["event"] == "stopped" for x in lines) == 2
