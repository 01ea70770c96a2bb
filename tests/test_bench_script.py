"""bench/webhooks.py in a tiny run against a real Redis: its EML requests are new calls, never replays,
and it leaves none of its keys behind, whether the run ends or is interrupted."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "bench" / "webhooks.py"
RUN = re.compile(r"^run (\S+); store: .*, keys under (\S+)$")


def bench(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), "--callers", "50", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def keys_under(client, prefix: str) -> list[bytes]:
    return list(client.scan_iter(match=re.sub(r"([\\*?\[\]])", r"\\\1", prefix) + "*", count=1000))


def decisions(log: Path, protocol: str) -> list[dict]:
    lines = (json.loads(line) for line in log.read_text().splitlines() if line.startswith("{"))
    return [d for d in lines if d.get("event") == "decision" and d.get("protocol") == protocol]


@pytest.fixture
def bystanders(redis_server):
    """Keys that were in the Redis before the run, one of them looking like another run's."""
    client = redis_server.client()
    other = f"bench:other-{uuid.uuid4().hex}:"
    keys = {f"{other}call:x": b"1", f"{other}rr:Sales": b"7", f"keep-{uuid.uuid4().hex}": b"mine"}
    for key, value in keys.items():
        client.set(key, value, ex=3600)
    yield client, keys
    client.delete(*keys)
    client.close()


def assert_untouched(client, keys: dict[str, bytes]) -> None:
    for key, value in keys.items():
        assert client.get(key) == value, key
        assert client.ttl(key) > 0, key


def test_eml_requests_are_new_calls_and_no_keys_stay(redis_server, bystanders, tmp_path):
    client, before = bystanders
    log = tmp_path / "gateway.log"
    proc = bench(
        "--requests", "20", "--warmup", "5", "--concurrency", "1,4",
        "--redis", redis_server.url, "--gateway-log", str(log),
    )  # fmt: skip
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    tag, prefix = RUN.match(out.splitlines()[0]).groups()

    eml = decisions(log, "eml")
    # Warm-up and measured requests at each concurrency: every one a new call, answered by allocation.
    assert len(eml) == 2 * (5 + 20)
    assert not [d for d in eml if d.get("replayed")]
    assert {d["outcome"] for d in eml} == {"routed"}
    call_ids = [d["call_id"] for d in eml]
    assert len(set(call_ids)) == len(call_ids)
    assert all(tag in c for c in call_ids)  # and so unlike any other run's
    assert len(decisions(log, "smartrouting")) == 2 * (5 + 20)

    # The gateway wrote its call records there, and they are gone; the keys that were there stay.
    removed = re.search(rf"removed (\d+) keys under {re.escape(prefix)}", err)
    assert removed and int(removed.group(1)) >= len(eml), err
    assert keys_under(client, prefix) == []
    assert_untouched(client, before)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_leaves_no_keys(redis_server, bystanders, tmp_path, sig):
    client, before = bystanders
    log = tmp_path / "gateway.log"
    proc = bench(
        "--protocols", "eml", "--requests", "1000000", "--warmup", "0", "--concurrency", "1",
        "--redis", redis_server.url, "--gateway-log", str(log),
    )  # fmt: skip
    try:
        _, prefix = RUN.match(proc.stdout.readline().rstrip("\n")).groups()
        end = time.monotonic() + 30
        while not keys_under(client, prefix):  # the run is writing
            assert proc.poll() is None and time.monotonic() < end, proc.stderr.read()
            time.sleep(0.02)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert re.search(rf"removed [1-9]\d* keys under {re.escape(prefix)}", err), err
    assert keys_under(client, prefix) == []
    assert_untouched(client, before)
    # The gateway it started is stopped too.
    started = next(json.loads(line) for line in log.read_text().splitlines() if '"started"' in line)
    assert not os.path.exists(f"/proc/{started['pid']}")
