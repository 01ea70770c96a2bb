"""Operating the gateway: metrics, reload, TLS, proxies, graceful shutdown, logs, explain."""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import threading
import time
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import BIN

pytestmark = pytest.mark.e2e


def rule_config(target: str, extra: str = "") -> str:
    return f"""
[smartrouting]
api_keys = ["${{OPS_SR_KEY}}"]
basic_auth = {{ ops = "${{OPS_SR_PW}}" }}

[eml]
api_keys = ["${{OPS_EML_KEY}}"]

[services.Sales]
numbers = ["100", "101"]
strategy = "round_robin"

[callers."+358501231234"]
tags = ["vip"]

[[rules]]
name = "vip"
when = {{ tag = "vip" }}
then = {{ target = "{target}" }}
{extra}
"""


SECRETS = {"OPS_SR_KEY": "sr-key-7f3a9c", "OPS_SR_PW": "sr-pw-2b8d1e", "OPS_EML_KEY": "eml-key-5c6e0a"}
SR = {"X-Benemen-APIKey": SECRETS["OPS_SR_KEY"]}
EML = {"X-API-Key": SECRETS["OPS_EML_KEY"]}


def samples(gw) -> dict[tuple[str, tuple], float]:
    text = gw.client.get("/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found, name, **labels):
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def vip(gw, headers: dict | None = None):
    return gw.client.post("/smartrouting", json={"anum": "+358501231234"}, headers={**SR, **(headers or {})})


def wait_for(predicate, timeout=8.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def traffic(gw):
    for _ in range(3):
        assert vip(gw).status_code == 200
    for _ in range(2):
        assert gw.client.post("/smartrouting", json={"anum": "+3584"}, headers=SR).status_code == 204
    for i in range(2):
        assert gw.client.post(
            "/call/request",
            json={"callID": f"m{i}", "rclassification": "Sales", "callTime": "1"},
            headers=EML,
        ).json()["success"]
    assert gw.client.post(
        "/call/request", json={"callID": "m9", "rclassification": "Nope", "callTime": "1"}, headers=EML
    ).json() == {"success": False, "message": "Nope not found"}
    assert gw.client.post("/call/request", json={"callID": 5}, headers=EML).status_code == 400
    assert gw.client.post("/smartrouting", json={}).status_code == 401


def test_metrics_count_known_traffic(start_gateway):
    gw = start_gateway(rule_config("VIP"), env=SECRETS)
    traffic(gw)
    m = samples(gw)
    assert value(m, "routing_requests_total", protocol="smartrouting", outcome="routed") == 3
    assert value(m, "routing_requests_total", protocol="smartrouting", outcome="default") == 2
    assert value(m, "routing_requests_total", protocol="smartrouting", outcome="unauthorized") == 1
    assert value(m, "routing_requests_total", protocol="eml", outcome="routed") == 2
    assert value(m, "routing_requests_total", protocol="eml", outcome="not_found") == 1
    assert value(m, "routing_requests_total", protocol="eml", outcome="bad_request") == 1
    assert value(m, "routing_rule_matches_total", rule="vip") == 3
    assert value(m, "routing_request_duration_seconds_count", protocol="smartrouting") == 6
    assert value(m, "routing_request_duration_seconds_bucket", protocol="eml", le="0.001") >= 1
    assert value(m, "routing_store_up") == 1
    version = gw.client.get("/readyz").json()["config"]["version"]
    assert value(m, "routing_config_info", version=version) == 1


def test_known_series_start_at_zero(start_gateway):
    # An alert on a rate must see 0 before the first event, not "no data": each series must be there.
    m = samples(start_gateway(rule_config("Z"), env=SECRETS))
    expected = [
        ("routing_lookups_total", {"result": r})
        for r in ("hit", "miss", "rejected", "failed", "timeout", "open", "skipped")
    ]
    expected += [
        ("routing_fallbacks_total", {"reason": "deadline"}),
        ("routing_fallbacks_total", {"reason": "store"}),
        ("routing_config_reloads_total", {"result": "invalid"}),
        ("routing_store_evictions_total", {}),
        ("routing_log_lines_dropped_total", {}),
    ]
    for name, labels in expected:
        assert m[(name, tuple(sorted(labels.items())))] == 0, (name, labels)


def _pids(gw, event: str) -> set[int]:
    return {json.loads(x)["pid"] for x in gw.logs().splitlines() if f'"event":"{event}"' in x}


def test_metrics_are_summed_across_workers(start_gateway, redis_server):
    store = f'[store]\nredis_url = "{redis_server.url}"\nkey_prefix = "w{uuid.uuid4().hex[:6]}:"\n'
    gw = start_gateway(store + rule_config("VIP"), "--workers", "2", env=SECRETS)
    assert wait_for(lambda: len(_pids(gw, "worker started")) == 2)
    # New connections until both workers have answered some (the kernel spreads them), then every scrape,
    # whichever worker answers it, counts all of them.
    sent = 0
    while sent < 20 or (len(_pids(gw, "decision")) < 2 and sent < 400):
        with httpx.Client(base_url=gw.url) as c:
            assert c.post("/smartrouting", json={"anum": "+358501231234"}, headers=SR).status_code == 200
        sent += 1
    assert wait_for(lambda: len(_pids(gw, "decision")) == 2)
    for _ in range(5):
        assert value(samples(gw), "routing_requests_total", protocol="smartrouting", outcome="routed") == sent


def test_reload_on_sighup_and_refusal_of_an_invalid_file(start_gateway):
    gw = start_gateway(rule_config("OLD"), env=SECRETS)
    v1 = gw.client.get("/readyz").json()["config"]
    assert vip(gw).json() == {"InitialTarget": "OLD"}
    gw.config.write_text(rule_config("NEW"))
    gw.signal(signal.SIGHUP)
    assert wait_for(lambda: vip(gw).status_code == 200 and vip(gw).json() == {"InitialTarget": "NEW"})
    v2 = gw.client.get("/readyz").json()["config"]
    assert v2["version"] != v1["version"]
    gw.config.write_text(rule_config("BROKEN").replace('target = "BROKEN"', "priority = 20000"))
    gw.signal(signal.SIGHUP)
    assert wait_for(lambda: "reload refused" in gw.logs())
    assert "rules[0] (vip).then.priority: 20000 is above 10000" in gw.logs()
    assert vip(gw).json() == {"InitialTarget": "NEW"}
    assert gw.client.get("/readyz").json()["config"]["version"] == v2["version"]
    m = samples(gw)
    assert value(m, "routing_config_reloads_total", result="ok") >= 1
    assert value(m, "routing_config_reloads_total", result="invalid") >= 1
    # Only the running version has a series: reloads do not pile them up.
    assert [k for k in m if k[0] == "routing_config_info"] == [
        ("routing_config_info", (("version", v2["version"]),))
    ]
    assert value(m, "routing_config_info", version=v2["version"]) == 1
    assert gw.proc.poll() is None


def test_a_reload_never_serves_a_file_caught_mid_write(start_gateway):
    # Truncated to nothing for a moment (as an editor or a deploy tool may leave it): refused, and the
    # running rules and credentials stay until the whole file is there.
    gw = start_gateway(rule_config("KEPT"), env=SECRETS)
    gw.config.write_text("")
    gw.signal(signal.SIGHUP)
    assert wait_for(lambda: "the file is empty" in gw.logs())
    assert vip(gw).json() == {"InitialTarget": "KEPT"}
    assert gw.client.post("/smartrouting", json={"anum": "+358501231234"}).status_code == 401
    gw.config.write_text(rule_config("WHOLE"))
    assert wait_for(lambda: vip(gw).status_code == 200 and vip(gw).json() == {"InitialTarget": "WHOLE"})


def test_sighup_on_an_unchanged_file_says_so(start_gateway):
    gw = start_gateway(rule_config("SAME"), env=SECRETS)
    gw.signal(signal.SIGHUP)
    assert wait_for(lambda: "reload unchanged" in gw.logs())
    (line,) = [json.loads(x) for x in gw.logs().splitlines() if '"reload unchanged"' in x]
    assert (
        line["reason"] == "SIGHUP" and line["version"] == gw.client.get("/readyz").json()["config"]["version"]
    )
    assert line["pid"] == gw.proc.pid
    assert value(samples(gw), "routing_config_reloads_total", result="unchanged") == 1


def test_reload_says_which_server_limits_wait_for_a_restart(start_gateway):
    gw = start_gateway(rule_config("R"), env=SECRETS)
    gw.config.write_text("[server]\nmax_connections = 2\nread_timeout_ms = 9000\n" + rule_config("R2"))
    gw.signal(signal.SIGHUP)
    assert wait_for(lambda: '"event":"restart needed"' in gw.logs())
    line = next(json.loads(x) for x in gw.logs().splitlines() if '"event":"restart needed"' in x)
    assert line["keys"] == ["server.read_timeout_ms", "server.max_connections"]
    assert vip(gw).json() == {"InitialTarget": "R2"}  # the rules did change


def test_reload_refuses_a_number_out_of_range(start_gateway):
    # A float bound is checked like any other: the reload is refused, listed and counted, never a traceback.
    gw = start_gateway(rule_config("KEEP"), env=SECRETS)
    gw.config.write_text("[lookup]\nurl = 'http://127.0.0.1:9/{caller}'\nopen_s = 0\n" + rule_config("LOST"))
    gw.signal(signal.SIGHUP)
    assert wait_for(lambda: "reload refused" in gw.logs())
    assert "lookup.open_s: 0 is below 0.1" in gw.logs()
    assert "Traceback" not in gw.logs() and "watch failed" not in gw.logs()
    assert value(samples(gw), "routing_config_reloads_total", result="invalid") >= 1
    assert vip(gw).json() == {"InitialTarget": "KEEP"}


def test_reload_when_the_file_or_a_directory_csv_changes(start_gateway, tmp_path):
    (tmp_path / "people.csv").write_text("number,tags\n+3584001,vip\n")
    extra = '[directory]\nfiles = ["people.csv"]\n'
    gw = start_gateway(extra + rule_config("FILE1"), env=SECRETS)
    assert vip(gw).json() == {"InitialTarget": "FILE1"}
    gw.config.write_text(extra + rule_config("FILE2"))
    assert wait_for(lambda: vip(gw).json() == {"InitialTarget": "FILE2"})
    csv_caller = {"anum": "+3584002"}
    assert gw.client.post("/smartrouting", json=csv_caller, headers=SR).status_code == 204
    (tmp_path / "people.csv").write_text("number,tags\n+3584001,vip\n+3584002,vip\n")
    assert wait_for(lambda: gw.client.post("/smartrouting", json=csv_caller, headers=SR).status_code == 200)


def test_reload_with_workers(start_gateway):
    gw = start_gateway(rule_config("W-OLD"), "--workers", "2", env=SECRETS)
    # Both workers running the old file first: a worker still starting would load the new one directly.
    assert wait_for(lambda: len(_pids(gw, "worker started")) == 2)
    gw.config.write_text(rule_config("W-NEW"))
    gw.signal(signal.SIGHUP)

    def all_new():
        for _ in range(10):
            with httpx.Client(base_url=gw.url) as c:
                if c.post("/smartrouting", json={"anum": "+358501231234"}, headers=SR).json() != {
                    "InitialTarget": "W-NEW"
                }:
                    return False
        return True

    assert wait_for(all_new)
    # Each worker reloaded on its own, not one of them twice.
    assert wait_for(lambda: len(_pids(gw, "reloaded")) == 2)
    assert gw.proc.poll() is None


def test_https(start_gateway, tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    tls = '[server]\ntls_cert = "server.pem"\ntls_key = "server.key"\n'
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    gw = start_gateway(tls + rule_config("TLS"), env=SECRETS, scheme="https", verify=context)
    assert vip(gw).json() == {"InitialTarget": "TLS"}
    r = gw.client.post(
        "/call/request", json={"callID": "t1", "rclassification": "Sales", "callTime": "1"}, headers=EML
    )
    assert r.status_code == 201 and r.json()["number"] in ("100", "101")
    with pytest.raises(httpx.TransportError):
        httpx.post(f"http://127.0.0.1:{gw.port}/smartrouting", json={}, timeout=3)
    # The client keeps its TLS connection open: SIGTERM still ends the process at once, normally.
    began = time.monotonic()
    assert gw.stop() == 0
    assert time.monotonic() - began < 8


def test_allow_networks_behind_a_trusted_proxy(start_gateway):
    extra = '[smartrouting]\nallow_networks = ["80.88.186.0/24"]\n[eml]\nallow_networks = ["10.0.0.0/8"]\n'
    text = (
        rule_config("P")
        .replace("[smartrouting]\n", extra.split("[eml]")[0], 1)
        .replace("[eml]\n", "[eml]\n" + 'allow_networks = ["10.0.0.0/8"]\n', 1)
    )
    direct = start_gateway(text, env=SECRETS)
    # Without trusted proxies X-Forwarded-For is not believed: 127.0.0.1 is outside the list.
    r = direct.client.post(
        "/smartrouting", json={"anum": "+358501231234"}, headers={**SR, "X-Forwarded-For": "80.88.186.10"}
    )
    assert r.status_code == 403 and r.json() == {"error": "source address not allowed"}
    r = direct.client.post("/call/request", json={}, headers={**EML, "X-Forwarded-For": "10.1.1.1"})
    assert r.status_code == 403 and r.content == b'{"message":"Forbidden","statusCode":403}'

    proxied = start_gateway('[server]\ntrusted_proxies = ["127.0.0.1/32"]\n' + text, env=SECRETS)
    ok = proxied.client.post(
        "/smartrouting",
        json={"anum": "+358501231234"},
        headers={**SR, "X-Forwarded-For": "203.0.113.9, 80.88.186.10"},
    )
    assert ok.json() == {"InitialTarget": "P"}
    spoofed = proxied.client.post(
        "/smartrouting", json={}, headers={**SR, "X-Forwarded-For": "80.88.186.10, 8.8.8.8"}
    )
    assert spoofed.status_code == 403
    assert proxied.client.post("/smartrouting", json={}, headers=SR).status_code == 403


def test_operational_endpoints_answer_only_ops_networks(start_gateway):
    # Behind a trusted proxy, the client's own address decides, as for the webhooks.
    ops = '[server]\ntrusted_proxies = ["127.0.0.1/32"]\nops_allow_networks = ["127.0.0.0/8", "10.0.0.0/8"]\n'
    gw = start_gateway(ops + rule_config("P"), env=SECRETS)
    for path in ("/healthz", "/readyz", "/metrics"):
        assert gw.client.get(path, headers={"X-Forwarded-For": "10.2.3.4"}).status_code == 200
        outside = gw.client.get(path, headers={"X-Forwarded-For": "203.0.113.9"})
        assert outside.status_code == 403, path
        assert outside.json() == {"error": "source address not allowed"}
    # The webhooks keep their own allow-lists (none here).
    assert vip(gw, headers={"X-Forwarded-For": "203.0.113.9"}).json() == {"InitialTarget": "P"}
    # Two X-Forwarded-For lines (a proxy adding its own) read as one list: the last one names the client.
    two = [("X-Forwarded-For", "10.2.3.4"), ("X-Forwarded-For", "203.0.113.9")]
    assert gw.client.get("/metrics", headers=two).status_code == 403
    assert gw.client.get("/metrics", headers=list(reversed(two))).status_code == 200


def test_graceful_shutdown_finishes_in_flight_webhooks(start_gateway, crm):
    crm.modes["+46700000001"] = "slow"  # 4 s; the lookup waits up to 2.5 s
    lookup = f'[server]\ndeadline_ms = 3000\n[lookup]\nurl = "{crm.url}"\ntimeout_ms = 2500\n'
    gw = start_gateway(lookup + rule_config("X"), env=SECRETS)
    result = {}

    def slow_call():
        began = time.perf_counter()
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            r = c.post("/smartrouting", json={"anum": "+46700000001"}, headers=SR)
        result.update(status=r.status_code, took=time.perf_counter() - began)

    caller = threading.Thread(target=slow_call)
    caller.start()
    assert wait_for(lambda: crm.hits["+46700000001"] == 1)
    gw.signal(signal.SIGTERM)

    def refused() -> bool:
        try:
            httpx.post(f"{gw.url}/smartrouting", json={}, timeout=2)
        except httpx.TransportError:
            return True
        return False

    assert wait_for(refused)  # no longer accepting
    caller.join()
    # The call in flight got its answer (the lookup's 2.5 s, then the default routing), not a cut.
    assert result["status"] == 204 and 2.0 < result["took"] < 8
    assert gw.proc.wait(10) == 0
    assert '"event":"stopped"' in gw.logs()


def test_logs_mask_numbers_and_never_hold_a_secret(start_gateway):
    gw = start_gateway(rule_config("L"), env=SECRETS)
    traffic(gw)
    gw.client.post(
        "/smartrouting", json={"anum": "+358501231234"}, headers={"X-Benemen-APIKey": "wrong-guess"}
    )
    gw.client.post(
        "/smartrouting",
        json={"anum": "+358501231234"},
        headers={"Authorization": "Basic b3BzOnNyLXB3LTJiOGQxZQ=="},
    )
    gw.signal(signal.SIGHUP)
    assert wait_for(lambda: "reload unchanged" in gw.logs())
    gw.stop()
    logs = gw.logs()
    for secret in SECRETS.values():
        assert secret not in logs
    assert "+358501231234" not in logs and "358501231234" not in logs
    assert '"caller":"**********234"' in logs
    lines = [line for line in logs.splitlines() if '"event":"decision"' in line]
    assert len(lines) >= 10
    for key in ("request_id", "protocol", "outcome", "latency_ms"):
        assert all(f'"{key}"' in line for line in lines)
    assert any('"rule":"vip"' in line for line in lines)


def test_route_explain_changes_nothing(start_gateway, tmp_path):
    gw = start_gateway(
        rule_config("E")
        + """
[schedules.office]
timezone = "Europe/Helsinki"
mon = ["08:00-17:00"]
[[rules]]
name = "sales-open"
when = { protocol = "eml", service = "Sales", open = "office" }
then = { service = "Sales" }
""",
        env=SECRETS,
    )
    body = '{"callID":"x1","rclassification":"Sales","callTime":"1"}'

    def route(at):
        run = subprocess.run(
            [BIN, "route", "--config", str(gw.config), "--explain", "--at", at, body],
            check=False,
            capture_output=True,
            text=True,
            env={**SECRETS, "PATH": "/usr/bin:/bin"},
        )
        assert run.returncode == 0, run.stderr
        return run.stdout

    open_out = route("2026-11-23T10:00:00+02:00")
    assert "* sales-open: matches" in open_out
    assert "- vip: no: when.tag does not hold" in open_out
    assert '"number":"100"' in open_out and "reply: 201" in open_out
    assert "as smartrouting would answer the same decision: 200" in open_out
    assert '{"InitialTarget":"100"}' in open_out
    assert '"number":"100"' in route("2026-11-23T10:00:00+02:00")  # not advanced
    closed_out = route("2026-11-22T10:00:00+02:00")
    assert "- sales-open: no: when.open does not hold" in closed_out and "rule: (none matched)" in closed_out
    # Without an offset the time is read in the schedules' zone: 16:30 in Helsinki is open, 16:30 UTC is not.
    local = route("2026-11-23T16:30")
    assert "read in Europe/Helsinki" in local and "time: 2026-11-23T16:30:00+02:00" in local
    assert "* sales-open: matches" in local


def test_route_explain_says_later_rules_are_not_reached(start_gateway):
    gw = start_gateway(
        rule_config("FIRST")
        + """
[[rules]]
name = "also-vip"
when = { tag = "vip" }
then = { target = "SECOND" }
""",
        env=SECRETS,
    )
    run = subprocess.run(
        [BIN, "route", "--config", str(gw.config), "--explain", '{"anum": "+358501231234"}'],
        check=False,
        capture_output=True,
        text=True,
        env={**SECRETS, "PATH": "/usr/bin:/bin"},
    )
    assert "* vip: matches: decides" in run.stdout
    assert "- also-vip: not reached (an earlier rule decided)" in run.stdout
    r = gw.client.post(
        "/call/request", json={"callID": "x1", "rclassification": "Sales", "callTime": "1"}, headers=EML
    )
    assert r.json()["number"] == "100"


def test_in_process_store_evictions_are_counted_and_logged(start_gateway):
    # A store too small for the calls it must remember: each record dropped inside its retry window is
    # counted, and the operator is told to raise max_entries.
    gw = start_gateway("[store]\nmax_entries = 100\n" + rule_config("E"), env=SECRETS)
    for i in range(150):
        r = gw.client.post(
            "/call/request",
            json={"callID": f"ev{i}", "rclassification": "Sales", "callTime": "1"},
            headers=EML,
        )
        assert r.status_code == 201
    assert value(samples(gw), "routing_store_evictions_total") == 50
    assert wait_for(lambda: '"event":"store evicted"' in gw.logs())
    line = next(json.loads(x) for x in gw.logs().splitlines() if '"event":"store evicted"' in x)
    assert line["kind"] == "call" and line["max_entries"] == 100


def test_decision_line_says_what_was_answered(start_gateway):
    gw = start_gateway(
        rule_config("ANSWER")
        + """
[callers."+358401110001"]
tags = ["gone"]
[[rules]]
name = "hang-up"
when = { tag = "gone" }
then = { disconnect = true }
""",
        env=SECRETS,
    )
    vip(gw)
    gw.client.post("/smartrouting", json={"anum": "+358401110001"}, headers=SR)
    assert wait_for(lambda: gw.logs().count('"event":"decision"') >= 2)
    lines = [json.loads(x) for x in gw.logs().splitlines() if '"event":"decision"' in x]
    routed = next(x for x in lines if x.get("rule") == "vip")
    assert routed["outcome"] == "routed" and routed["target"] == "ANSWER"
    gone = next(x for x in lines if x.get("rule") == "hang-up")
    assert gone["outcome"] == "disconnect" and gone["target"] == "DISCONNECT:"
    assert value(samples(gw), "routing_requests_total", protocol="smartrouting", outcome="disconnect") == 1


def test_eml_decision_line_answers_which_number_a_call_got(start_gateway):
    # "Which number did we give call X?" is one grep; an EML disconnect is not counted as routed.
    gw = start_gateway(
        rule_config("E")
        + """
[[rules]]
name = "closed-desk"
when = { protocol = "eml", service = "Closed" }
then = { disconnect = true }
""",
        env=SECRETS,
    )
    r = gw.client.post(
        "/call/request", json={"callID": "call-x1", "rclassification": "Sales", "callTime": "1"}, headers=EML
    ).json()
    gw.client.post(
        "/call/request", json={"callID": "call-x2", "rclassification": "Closed", "callTime": "1"}, headers=EML
    )
    assert wait_for(lambda: gw.logs().count('"event":"decision"') >= 2)
    lines = [json.loads(x) for x in gw.logs().splitlines() if '"event":"decision"' in x]
    given = next(x for x in lines if x.get("call_id") == "call-x1")
    assert (given["outcome"], given["number"], given["mq_id"]) == ("routed", r["number"], r["mqID"])
    closed = next(x for x in lines if x.get("call_id") == "call-x2")
    assert closed["outcome"] == "disconnect" and closed["rule"] == "closed-desk"
    m = samples(gw)
    assert value(m, "routing_requests_total", protocol="eml", outcome="disconnect") == 1
    assert value(m, "routing_requests_total", protocol="eml", outcome="routed") == 1
