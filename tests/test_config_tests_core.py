"""Config tests (``[[tests]]``) run by the core, with the real adapters handed in for the protocols."""

from __future__ import annotations

import asyncio
import datetime as dt
import tomllib
from pathlib import Path

import msgspec
import pytest

import adapters
from core.checks import (
    ConfigTest,
    Expect,
    check_tests,
    local_zone,
    run_tests,
    run_tests_blocking,
)
from core.decide import RuleBase
from gateway.config import load, parse_test_request, render_test_reply

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
HEL = dt.timezone(dt.timedelta(hours=2))
MONDAY_10 = dt.datetime(2026, 11, 23, 10, tzinfo=HEL)


# What check, test and reload use: a request table read as its protocol reads a body.
parse = parse_test_request
render = render_test_reply


def parsed_tests(text: str) -> list[ConfigTest]:
    return msgspec.convert(tomllib.loads(text)["tests"], list[ConfigTest])


@pytest.fixture(scope="module")
def shipped() -> RuleBase:
    return load(ROOT / "config.toml").rules


async def run(tests, rules, **kw):
    return await run_tests(tests, rules, parse, render, now=lambda: MONDAY_10, **kw)


PASSING = """
[[tests]]
name = "a VIP reaches their own agent in office hours"
at = 2026-11-23T10:00:00+02:00
request = { protocol = "smartrouting", anum = "+358 50 123 1234", bnum = "+4612312345", targetid = "SALES_QUEUE" }
expect = { rule = "vip-to-own-agent", status = 200, body = { RequiredTarget = "agent1@customer.com", ExtraPriority = 100 } }

[[tests]]
name = "sales round-robin starts at the first number"
request = { protocol = "eml", callID = "t1", rclassification = "Sales", callTime = "35" }
expect = { rule = "", status = 201, body = { number = "5032505550", success = true, mqID = "never compared" } }

[[tests]]
name = "and moves on from test to test"
request = { protocol = "eml", callID = "t2", rclassification = "Sales", callTime = "35" }
expect = { body = { number = "5032505551" } }

[[tests]]
name = "a retry keeps its number"
request = { protocol = "eml", callID = "t1", rclassification = "Sales", callTime = "40" }
expect = { body = { number = "5032505550" } }

[[tests]]
name = "closed on Sunday, read in the schedules' zone"
at = 2026-11-22T10:00:00
request = { protocol = "eml", callID = "t3", rclassification = "Sales", callTime = "35" }
expect = { rule = "sales-after-hours", body = { number = "5032505599" } }

[[tests]]
name = "the CRM's answer is stubbed"
request = { protocol = "smartrouting", anum = "+358409999999", bnum = "+358900000" }
lookup = { tags = ["blocked"] }
expect = { rule = "blocked-callers", status = 200, body = { InitialTarget = "DISCONNECT:" } }

[[tests]]
name = "an unknown caller is default routing"
request = { protocol = "smartrouting", anum = "+358409999999", bnum = "+358900000" }
expect = { rule = "", status = 204 }

[[tests]]
name = "a bad request gets the protocol's error"
request = { protocol = "eml", rclassification = "Sales", callTime = "35" }
expect = { rule = "", status = 400, body = { error = "Bad Request" } }

[[tests]]
name = "internal calls by extradata"
request = { protocol = "smartrouting", anum = "+358501231234", extradata = { IsInternalCaller = true } }
expect = { rule = "internal-calls-default", status = 204 }
"""


async def test_passing_tests(shipped):
    tests = parsed_tests(PASSING)
    assert await run(tests, shipped, remember_s=lambda p: 86400.0 if p == "eml" else 0.0) == []
    problems: list[str] = []
    check_tests(tests, [r.name for r in shipped.rules], adapters.names(), problems)
    assert problems == []


async def test_failures_say_expected_and_got(shipped):
    tests = parsed_tests(
        """
[[tests]]
name = "wrong everything"
request = { protocol = "smartrouting", anum = "+358501231234", targetid = "SALES_QUEUE" }
at = 2026-11-22T10:00:00+02:00
expect = { rule = "vip-to-own-agent", status = 204, body = { RequiredTarget = "agent1@customer.com", Priority = 10000, InitialTarget = "+358123456789" } }

[[tests]]
name = "right"
request = { protocol = "eml", callID = "x", rclassification = "Support", callTime = "35" }
expect = { rule = "", body = { number = "5032505555" } }

[[tests]]
name = "types count"
request = { protocol = "eml", callID = "y", rclassification = "Support", callTime = "35" }
expect = { rule = "long-support-calls", body = { success = 1 } }
"""
    )
    failures = await run(tests, shipped)
    assert [(f.index, f.name) for f in failures] == [(0, "wrong everything"), (2, "types count")]
    assert str(failures[0]).splitlines() == [
        'tests[0] "wrong everything" failed',
        '  rule: expected "vip-to-own-agent", got "vip-after-hours"',
        "  status: expected 204, got 200",
        '  body.RequiredTarget: expected "agent1@customer.com", got nothing',
    ]
    assert str(failures[1]).splitlines()[1:] == [
        '  rule: expected "long-support-calls", got no rule',
        "  body.success: expected 1, got true",
    ]
    assert failures[1].problems() == [
        'tests[2] (types count): rule: expected "long-support-calls", got no rule',
        "tests[2] (types count): body.success: expected 1, got true",
    ]


async def test_no_lookup_without_a_stub_and_a_refused_request_named(shipped):
    tests = parsed_tests(
        """
[[tests]]
name = "bad"
request = { protocol = "smartrouting", anum = 5 }
expect = { rule = "", status = 200 }
"""
    )
    (f,) = await run(tests, shipped)
    assert [str(m) for m in f.mismatches] == ["status: expected 200, got 400"]


async def test_a_parse_that_breaks_is_a_failure_not_a_crash(shipped):
    def broken(protocol, fields):
        raise KeyError(protocol)

    tests = [ConfigTest(name="x", request={"protocol": "nope"}, expect=Expect(status=200))]
    (f,) = await run_tests(tests, shipped, broken, render)
    assert str(f.mismatches[0]).startswith("request: could not be run (KeyError")


async def test_tests_share_one_fresh_store_and_touch_nothing_else(shipped):
    tests = [
        ConfigTest(
            name=f"n{i}",
            request={"protocol": "eml", "callID": f"c{i}", "rclassification": "Sales", "callTime": "1"},
            expect=Expect(body={"number": f"503250555{i % 3}"}),
        )
        for i in range(5)
    ]
    # Twice: each run starts again at the first number.
    assert await run(tests, shipped) == []
    assert await run(tests, shipped) == []


def test_blocking_runner_with_and_without_a_running_loop(shipped):
    tests = parsed_tests(PASSING)[:3]
    kw = {"now": lambda: MONDAY_10}
    assert run_tests_blocking(tests, shipped, parse, render, **kw) == []

    async def inside():
        return run_tests_blocking(tests, shipped, parse, render, **kw)

    assert asyncio.run(inside()) == []
    assert run_tests_blocking([], shipped, parse, render) == []


def test_checks_of_the_tests_themselves(shipped):
    tests = parsed_tests(
        """
[[tests]]
name = "a"
request = { anum = "1" }
expect = { rule = "nope", status = 999 }
[[tests]]
name = "a"
request = { protocol = "sip" }
expect = {}
[[tests]]
name = " "
request = { protocol = "eml" }
expect = { rule = "" }
"""
    )
    problems: list[str] = []
    check_tests(tests, [r.name for r in shipped.rules], adapters.names(), problems)
    assert problems == [
        "tests[0].request.protocol: missing (one of smartrouting, eml)",
        "tests[0].expect.rule: no rule 'nope' in [[rules]] (\"\" for none)",
        "tests[0].expect.status: 999 is not an HTTP status",
        "tests[1].name: 'a' is the name of an earlier test",
        "tests[1].request.protocol: 'sip' is not one of smartrouting, eml",
        "tests[1].expect: expects nothing (give rule, status or body)",
        "tests[2].name: must not be empty",
    ]


def test_strict_tables():
    with pytest.raises(msgspec.ValidationError, match="unknown field `expected`"):
        parsed_tests('[[tests]]\nname = "x"\nrequest = {}\nexpected = {}\n')
    with pytest.raises(msgspec.ValidationError, match="unknown field `colour`"):
        parsed_tests('[[tests]]\nname = "x"\nrequest = {}\nexpect = {}\nlookup = { colour = "red" }\n')


def test_local_zone(shipped, tmp_path):
    assert str(local_zone(shipped)) == "Europe/Helsinki"
    assert local_zone(RuleBase()) is dt.UTC
