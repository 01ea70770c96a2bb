"""Strict config loading: every problem listed with its key path; check and serve agree."""

from __future__ import annotations

import json
import subprocess

import pytest

from core.errors import ConfigError
from gateway.config import load
from tests.conftest import BIN, ROOT, free_port

BROKEN = """
[server]
port = 99999
deadline_ms = "fast"
colour = "blue"
ops_allow_networks = ["10.0.0.0/8", "intranet"]

[smartrouting]
basic_auth = { enreach = "" }

[store]
timeout_ms = 0
retry_after_s = 0.05
redis_url = "http://localhost"
sentinels = ["nohost"]

[services.Sales]
numbers = []
strategy = "sometimes"

[schedules.office]
timezone = "Mars/Olympus"
mon = ["9-17", "18:00-17:00"]
closed_dates = ["2026-13-01"]

[callers."+358501231234"]
tags = "vip"

[[rules]]
name = "a"
when = { tag = "vip", open = "nowhere", protocol = "sip" }
then = { service = "Nope", priority = 20000 }

[[rules]]
name = "a"
when = { bogus = 1 }
then = { target = "x", disconnect = true, tts = "{callr.agent}" }

[[rules]]
name = "empty"
then = {}

[[rules]]
name = "quiet"
then = { default = true, extra_priority = -20000 }
"""

EXPECTED = [
    "server.port: 99999 is above 65535",
    "server.deadline_ms: expected an integer, got a string",
    "server.colour: unknown key",
    "store.timeout_ms: 0 is below 1",
    "store.retry_after_s: 0.05 is below 0.1",
    "server.ops_allow_networks[1]: 'intranet' is not an address or CIDR network",
    "smartrouting.basic_auth.enreach: empty password",
    "store.redis_url: must start with redis://, rediss:// or unix://",
    "store.sentinels[0]: 'nohost' is not \"host:port\"",
    "store.sentinel_master: required with store.sentinels",
    "services.Sales.numbers: needs at least 1 item",
    "services.Sales.strategy: 'sometimes' is not one of 'first', 'random', 'round_robin'",
    'callers."+358501231234".tags: expected a list of strings, got str',
    "rules[0] (a).then.priority: 20000 is above 10000",
    "rules[1] (a).when.bogus: unknown key",
    "rules[3] (quiet).then.extra_priority: -20000 is below -10000",
    "schedules.office.timezone: 'Mars/Olympus' is not an IANA time zone",
    "schedules.office.mon[0]: '9-17' is not \"HH:MM-HH:MM\"",
    "schedules.office.mon[1]: '18:00-17:00' ends before it starts",
    "schedules.office.closed_dates[0]: '2026-13-01' is not a date",
    "rules[0] (a).when.open: no schedule 'nowhere' in [schedules]",
    "rules[0] (a).when.protocol: 'sip' is not one of smartrouting, eml",
    "rules[0] (a).then.service: no service 'Nope' in [services]",
    "rules[1] (a).name: 'a' is the name of an earlier rule",
    "rules[1] (a).then: target and disconnect exclude each other",
    "rules[1] (a).then.tts: {callr.agent} names no caller attribute",
    "rules[2] (empty).then: sets nothing",
]


@pytest.fixture
def broken(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text(BROKEN)
    return path


def test_load_lists_every_problem(broken):
    with pytest.raises(ConfigError) as info:
        load(broken)
    problems = info.value.problems
    for expected in EXPECTED:
        assert any(p.startswith(expected) for p in problems), f"missing: {expected}\ngot:\n" + "\n".join(
            problems
        )


def test_check_cli_lists_every_problem_and_fails(broken):
    run = subprocess.run([BIN, "check", str(broken)], check=False, capture_output=True, text=True)
    assert run.returncode == 1
    for expected in EXPECTED:
        assert expected in run.stderr


def test_serve_refuses_a_broken_config_with_the_same_list(broken):
    run = subprocess.run(
        [BIN, "serve", "--config", str(broken), "--port", str(free_port())],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 1
    # A server writes only JSON lines: the problems come as one "not started" event.
    lines = [json.loads(line) for line in run.stderr.splitlines()]
    (refusal,) = [line for line in lines if line["event"] == "not started"]
    for expected in EXPECTED:
        # Logged lines never hold a whole phone number, a caller's key path included.
        expected = expected.replace('"+358501231234"', '"**********234"')
        assert any(p.startswith(expected) for p in refusal["problems"]), expected


def test_shipped_config_is_valid_and_warns_about_open_endpoint():
    run = subprocess.run(
        [BIN, "check", str(ROOT / "config.toml")], check=False, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert "ok (version" in run.stdout
    # Once, in check's own output; a dry run does not repeat it.
    assert run.stdout.count("open to anyone") == 1 and not run.stderr
    dry = subprocess.run(
        [BIN, "route", "--config", str(ROOT / "config.toml"), '{"anum": "+3581"}'],
        check=False,
        capture_output=True,
        text=True,
    )
    assert dry.returncode == 0 and "open to anyone" not in dry.stdout + dry.stderr


def test_environment_variables(tmp_path, monkeypatch):
    path = tmp_path / "c.toml"
    path.write_text('[smartrouting]\napi_keys = ["${SR_KEY}"]\nbasic_auth = { u = "p-${SR_PW}-x" }\n')
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.problems == [
        "smartrouting.api_keys[0]: environment variable SR_KEY is not set",
        "smartrouting.basic_auth.u: environment variable SR_PW is not set",
    ]
    monkeypatch.setenv("SR_KEY", "k1")
    monkeypatch.setenv("SR_PW", "secret")
    cfg = load(path).config
    assert cfg.smartrouting.api_keys == ["k1"] and cfg.smartrouting.basic_auth == {"u": "p-secret-x"}


def test_when_service_needs_no_services_entry(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[[rules]]\nname = "r"\nwhen = { service = "SALES_QUEUE" }\nthen = { target = "x" }\n')
    assert load(path).rules.rules[0].name == "r"


def test_webhook_paths_cannot_hide_others(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[smartrouting]\npath = "/Healthz/"\n')
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.problems == ["smartrouting.path: /Healthz/ is reserved for the gateway itself"]
    path.write_text('[smartrouting]\npath = "/qm/call/request"\n[eml]\nbase = "/qm"\n')
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.problems == ["eml.base: the same path as smartrouting's /qm/call/request"]


def test_not_toml(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[server\nport = 1")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert "not valid TOML" in info.value.problems[0]


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "nope.toml")
    assert "cannot be read" in info.value.problems[0]


def test_directory_csv_problems(tmp_path):
    (tmp_path / "c.csv").write_text("number,tags,agent\n+3581,vip,a\n,vip,b\n+3582,x\n+358 1,vip,c\n")
    path = tmp_path / "c.toml"
    path.write_text('[directory]\nfiles = ["c.csv", "missing.csv"]\n')
    with pytest.raises(ConfigError) as info:
        load(path)
    text = "\n".join(info.value.problems)
    assert "directory.files[0] (c.csv):3: no number" in text
    assert "directory.files[0] (c.csv):4: 2 columns where the header has 3" in text
    assert "directory.files[0] (c.csv):5: +3581 appears twice" in text
    assert "directory.files[1] (missing.csv): cannot be read" in text


def test_callers_table_wins_over_files(tmp_path):
    (tmp_path / "c.csv").write_text("number,tags,agent\n+3581,vip,from-file\n+3582,gold,\n")
    path = tmp_path / "c.toml"
    path.write_text('[directory]\nfiles = ["c.csv"]\n[callers."+3581"]\ntags = ["x"]\nagent = "from-table"\n')
    callers = load(path).rules.callers
    assert callers["+3581"].attributes == {"agent": "from-table"} and callers["+3581"].tags == {"x"}
    assert callers["+3582"].tags == {"gold"} and callers["+3582"].attributes == {}


def test_version_changes_with_the_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[server]\nport = 1\n")
    v1 = load(path).version
    path.write_text("[server]\nport = 2\n")
    assert load(path).version != v1


def test_store_timeout_must_be_below_the_deadline(tmp_path):
    # A Redis call the deadline always cuts short would never fail on its own, and Redis would never be
    # taken for down however long it hangs.
    path = tmp_path / "c.toml"
    path.write_text("[server]\ndeadline_ms = 300\n[store]\ntimeout_ms = 300\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.problems == ["store.timeout_ms: 300 must be below server.deadline_ms (300)"]
    path.write_text("[server]\ndeadline_ms = 300\n[store]\ntimeout_ms = 299\n")
    assert load(path).config.store.timeout_ms == 299


def test_empty_credentials_are_refused(tmp_path, monkeypatch):
    # A variable that is set but empty must not open the endpoint to `curl -u enreach:`.
    monkeypatch.setenv("EMPTY_SECRET", "")
    path = tmp_path / "c.toml"
    path.write_text(
        '[smartrouting]\napi_keys = ["  ", " padded"]\nbasic_auth = { enreach = "${EMPTY_SECRET}" }\n'
        '[eml]\napi_keys = ["${EMPTY_SECRET}"]\n'
    )
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.problems == [
        "smartrouting.api_keys[0]: empty",
        "smartrouting.api_keys[1]: spaces or tabs around a key are not part of it",
        "smartrouting.basic_auth.enreach: empty password",
        "eml.api_keys[0]: empty",
    ]


def test_mistakes_that_can_never_work(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("""
[eml]
base = "/qm/"
[callers."+358 40 765 4321"]
agent = "a@x"
[callers."+358 40 765 432O"]
tags = ["typo"]
[[rules]]
name = "key-accounts"
when = { tag = "vip" }
then = { target = "Q", required_agent = "{caller.agnet}", preferred_agents = ["{caller.agent}"] }
""")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.problems == [
        'callers."+358 40 765 432O": can never be a caller\'s number (an optional + and 3 to 20 digits)',
        (
            "rules[0] (key-accounts).then.required_agent: no caller source has the attribute 'agnet' "
            "(not [callers], not a directory file's columns, not lookup.attributes)"
        ),
    ]
    # The name is fine once the lookup gives it; a base with a trailing slash routes as without one.
    path.write_text(
        path.read_text()
        .replace('[callers."+358 40 765 432O"]\ntags = ["typo"]\n', "")
        .replace("[eml]", "[lookup]\nurl = 'http://crm/{caller}'\nattributes = ['agnet']\n[eml]")
    )
    from adapters import eml

    assert eml.paths(load(path).config.eml) == {"base": "/qm/call/request"}


def test_priority_zero_sets_something(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[[rules]]\nname = "calm"\nthen = { priority = 0 }\n')
    assert load(path).rules.rules[0].then.priority == 0


def test_headers_and_keys_that_can_never_be_sent(tmp_path, monkeypatch):
    monkeypatch.setenv("NON_ASCII", "p:w ä")
    path = tmp_path / "c.toml"
    path.write_text(
        '[smartrouting]\napi_keys = ["two\\nlines"]\n'
        '[lookup]\nurl = "http://crm/{caller}"\n'
        'headers = { Authorization = "Bearer ${NON_ASCII}", "X-Split" = "a\\r\\nInjected: 1", "Bad Name" = "v" }\n'
    )
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.problems == [
        "smartrouting.api_keys[0]: a control character (a line break?) no client can send",
        "lookup.headers.Authorization: a header value is ASCII without control characters",
        "lookup.headers.X-Split: a header value is ASCII without control characters",
        'lookup.headers."Bad Name": not a valid header name',
    ]


def test_an_empty_file_is_refused(tmp_path):
    # A file caught between its truncation and its write (a reload watching it) must not load as "no rules".
    path = tmp_path / "c.toml"
    path.write_text("  \n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.problems == [f"{path}: the file is empty"]
