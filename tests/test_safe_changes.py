"""Changing rules safely, end to end (SPEC section 9): config tests, the journal shared by replicas,
reading it over HTTP and from the CLI, and replaying it against a candidate config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid

import pytest

from tests.conftest import BIN

pytestmark = pytest.mark.e2e

RULES = """
[services.Sales]
numbers = ["100", "101", "102"]
strategy = "round_robin"

[services.Support]
numbers = ["5032505555"]

[callers."+358501231234"]
tags = ["vip"]

[[rules]]
name = "vip"
when = { tag = "vip" }
then = { target = "VIP", extra_priority = 100 }

[[rules]]
name = "support-line"
when = { service = "Support" }
then = { service = "Support" }
"""


def config(prefix: str, url: str = "", extra: str = "") -> str:
    store = f'redis_url = "{url}"\nkey_prefix = "{prefix}"\ntimeout_ms = 100\nretry_after_s = 0.3\n'
    return f"[store]\n{store}\n[eml]\nretry_window_s = 600\n{extra}\n{RULES}"


def run(*args: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, **(env or {})}
    return subprocess.run(
        [str(BIN), *args], check=False, capture_output=True, text=True, timeout=timeout, env=full
    )


def wait_until(predicate, timeout: float = 20, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def dump(client, prefix: str) -> dict[bytes, bytes]:
    """Every key under ``prefix`` but the journal's stream, as DUMP gives it (type, value, encoding)."""
    return {k: client.dump(k) for k in client.scan_iter(match=prefix + "*") if not k.endswith(b"journal")}


def test_two_replicas_one_journal_found_by_call_and_replayed_without_writing(
    start_gateway, redis_server, tmp_path
):
    prefix = f"j{uuid.uuid4().hex[:8]}:"
    text = config(prefix, redis_server.url)
    a = start_gateway(text)
    b = start_gateway(text)
    answers = {}
    for i, gw in enumerate([a, b, a, b, a, b]):
        r = gw.eml({"callID": f"call-{i}", "rclassification": "Sales", "callTime": "5"})
        assert r.status_code == 201, r.text
        answers[f"call-{i}"] = r.json()
    assert a.smartrouting({"anum": "+358 50 123 1234"}).status_code == 200
    assert b.eml({"callID": "sup-1", "rclassification": "Support", "callTime": "5"}).status_code == 201
    # A retry is answered again and journaled as a replay.
    assert (
        b.eml({"callID": "call-0", "rclassification": "Sales", "callTime": "6"}).json() == answers["call-0"]
    )

    def journal(*args):
        out = run("journal", "--config", str(a.config), "--json", *args)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)["entries"]

    entries = wait_until(lambda: (e := journal("--last", "100")) and len(e) == 9 and e, what="9 entries")
    assert {e["request_id"] for e in entries} == {e["request_id"] for e in entries}  # one stream for both
    assert sum(e["protocol"] == "smartrouting" for e in entries) == 1
    # "Which number did EML call X get, by which rule, under which config version?" is one command.
    found = journal("--call", "call-3")
    assert len(found) == 1
    (one,) = found
    assert one["target"] == answers["call-3"]["number"] and one["mq_id"] == answers["call-3"]["mqID"]
    assert one["pool"] == "Sales" and one["version"] and one["status"] == 201 and "rule" not in one
    text_out = run("journal", "--config", str(a.config), "--call", "call-3")
    assert answers["call-3"]["number"] in text_out.stdout and answers["call-3"]["mqID"] in text_out.stdout
    # Over HTTP from either replica, the same journal.
    assert {e["request_id"] for e in b.client.get("/journal", params={"last": 100}).json()["entries"]} == {
        e["request_id"] for e in entries
    }
    retry = [e for e in journal("--call", "call-0") if e.get("replayed")]
    assert len(retry) == 1 and retry[0]["mq_id"] == answers["call-0"]["mqID"]
    vip = journal("--rule", "vip")
    assert len(vip) == 1 and vip[0]["tags"] == ["vip"]

    # A candidate that sends Support to another line changes exactly the one Support call.
    candidate = tmp_path / "candidate.toml"
    candidate.write_text(text.replace('then = { service = "Support" }', 'then = { target = "OTHER" }'))
    client = redis_server.client()
    before = dump(client, prefix)
    assert any(b"rr:" in k for k in before) and any(b"call:" in k for k in before)
    out = run("replay", str(candidate), "--config", str(a.config), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["changed"] == 1 and len(report["groups"]) == 1
    (group,) = report["groups"]
    assert group["before"] == {"rule": "support-line", "service": "Support"}
    assert group["after"] == {"rule": "support-line", "target": "OTHER"}
    assert group["count"] == 1 and len(group["examples"]) == 1
    # The same config replays as no change, whatever a rotation would give; nothing shared was written.
    same = run("replay", str(a.config), "--config", str(a.config), "--fail-on-change")
    assert same.returncode == 0, same.stdout + same.stderr
    assert run("replay", str(candidate), "--config", str(a.config), "--fail-on-change").returncode == 1
    assert dump(client, prefix) == before


def test_journal_in_process_read_over_http_with_token_and_networks(start_gateway):
    gw = start_gateway(
        config("p:", extra='[server]\nadmin_token = "${ADMIN_TOKEN}"\n'), env={"ADMIN_TOKEN": "t0k"}
    )
    assert gw.smartrouting({"anum": "+358501231234"}).status_code == 200
    assert gw.client.get("/journal").status_code == 401
    bearer = {"Authorization": "Bearer t0k"}
    got = wait_until(lambda: gw.client.get("/journal", headers=bearer).json()["entries"], what="an entry")
    assert got[0]["rule"] == "vip" and got[0]["caller"] == "+358501231234"
    assert gw.client.get("/journal", params={"since": "yesterday"}, headers=bearer).status_code == 400
    # The CLI reads an in-process journal from the running gateway.
    out = run("journal", "--config", str(gw.config), "--url", gw.url, "--token", "t0k", "--rule", "vip")
    assert out.returncode == 0 and "rule=vip" in out.stdout, out.stdout + out.stderr
    nothere = run("journal", "--config", str(gw.config), env={"ADMIN_TOKEN": "t0k"})
    assert nothere.returncode != 0 and "--url" in nothere.stderr


def test_config_tests_gate_check_and_reload(start_gateway, tmp_path):
    good = (
        config("p:")
        + """
[[tests]]
name = "vip goes to the VIP line"
request = { protocol = "smartrouting", anum = "+358501231234" }
expect = { rule = "vip", status = 200, body = { InitialTarget = "VIP" } }

[[tests]]
name = "support calls take the support number"
request = { protocol = "eml", callID = "t1", rclassification = "Support", callTime = "1" }
expect = { rule = "support-line", status = 201, body = { number = "5032505555", success = true } }
"""
    )
    gw = start_gateway(good)
    assert run("check", str(gw.config)).returncode == 0
    assert "2 of 2 tests pass" in run("test", str(gw.config)).stdout
    # A rule change that breaks a test: check and test name it, expected vs got; a reload is refused.
    gw.config.write_text(good.replace('target = "VIP"', 'target = "VIP2"'))
    checked = run("check", str(gw.config))
    assert checked.returncode == 1
    assert (
        'tests[0] (vip goes to the VIP line): body.InitialTarget: expected "VIP", got "VIP2"'
        in checked.stderr
    )
    tested = run("test", str(gw.config))
    assert (
        tested.returncode == 1 and "vip goes to the VIP line" in tested.stdout and "1 of 2" in tested.stdout
    )
    gw.signal(signal.SIGHUP)
    wait_until(
        lambda: '"event":"reload refused"' in gw.logs() or '"reload failed"' in gw.logs(), what="refusal"
    )
    assert gw.smartrouting({"anum": "+358501231234"}).json()["InitialTarget"] == "VIP"  # the old rules answer
    # Refused and counted (the file watch may see the change too: once or twice, never accepted).
    refused = [
        float(row.split()[-1])
        for row in gw.client.get("/metrics").text.splitlines()
        if row.startswith('routing_config_reloads_total{result="invalid"}')
    ]
    assert refused and refused[0] >= 1
    assert '"event":"reloaded"' not in gw.logs()


def test_killing_redis_loses_no_answer_and_counts_the_journal_drops(start_gateway, own_redis):
    gw = start_gateway(config(f"k{uuid.uuid4().hex[:6]}:", own_redis.url))
    for i in range(20):
        assert (
            gw.eml({"callID": f"before-{i}", "rclassification": "Sales", "callTime": "1"}).status_code == 201
        )
    own_redis.kill()
    for i in range(200):
        r = gw.eml({"callID": f"during-{i}", "rclassification": "Sales", "callTime": "1"})
        assert r.status_code == 201 and r.json()["success"] is True
        assert gw.smartrouting({"anum": "+358501231234"}).status_code == 200

    def dropped() -> float:
        for row in gw.client.get("/metrics").text.splitlines():
            if row.startswith('routing_journal_dropped_total{reason="store"}'):
                return float(row.split()[-1])
        return 0.0

    assert wait_until(lambda: dropped() > 0, what="journal drops counted")


def test_masked_journal_keeps_no_number_anywhere_and_a_reload_to_masked_applies_at_once(start_gateway):
    gw = start_gateway(config("m:", extra='[journal]\nnumbers = "full"\n'))
    sr = {"anum": "+358501231234", "bnum": "+35891234567", "extradata": {"DYN_PAR_Callback": "+358401112223"}}
    assert gw.smartrouting(sr).status_code == 200
    full = wait_until(lambda: gw.client.get("/journal").json()["entries"], what="an entry")
    assert full[0]["caller"] == "+358501231234"
    # A reload to "masked" applies to the next call, without a restart.
    gw.config.write_text(gw.config.read_text().replace('numbers = "full"', 'numbers = "masked"'))
    gw.signal(signal.SIGHUP)
    wait_until(lambda: gw.logs().count('"event":"reloaded"') >= 1, what="the reload")
    assert gw.smartrouting(sr).status_code == 200
    eml = {
        "callID": "+358409998887",
        "rclassification": "Support",
        "customerID": "0401234567",
        "callTime": "3",
    }
    assert gw.eml(eml).status_code == 201
    entries = wait_until(
        lambda: (e := gw.client.get("/journal").json()["entries"]) and len(e) == 3 and e, what="3 entries"
    )
    text = json.dumps(entries[:2])
    for number in ("358501231234", "35891234567", "358401112223", "358409998887", "0401234567"):
        assert number not in text, number
    assert entries[0]["masked"] and entries[0]["customer"].endswith("567")
    # The masked call is still found by its callID.
    found = gw.client.get("/journal", params={"call": "+358409998887"}).json()["entries"]
    assert len(found) == 1 and found[0]["pool"] == "Support"
