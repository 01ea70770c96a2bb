"""Weighted pools, sticky pools and ``when.percent`` over HTTP, on both protocols: one gateway on its
in-process store, and two replicas sharing one Redis (or one Redis Cluster)."""

from __future__ import annotations

import uuid

import pytest

from core.query import RoutingQuery
from core.rules import bucket

pytestmark = pytest.mark.e2e

CYCLE = ["100", "101", "100", "102", "100"]  # weights 3, 1, 1


def config(store: str) -> str:
    return f"""
[store]
{store}
key_prefix = "s{uuid.uuid4().hex[:8]}:"

[smartrouting]
api_keys = ["1234"]

[eml]
retry_window_s = 600

[services.Sales]
numbers = ["100", "101", "102"]
strategy = "weighted"
weights = [3, 1, 1]

[services.Desk]
numbers = ["d1", "d2", "d3"]
strategy = "round_robin"
sticky = "caller"
sticky_s = 600

[services.Renewals]
numbers = ["200", "201", "202"]
strategy = "round_robin"
sticky = "customer"
sticky_s = 600

[services.Trial]
numbers = ["300"]

[services.Trial2]
numbers = ["300"]

[[rules]]
name = "trial"
when = {{ service = ["TRIAL_QUEUE", "Trial", "Trial2"], percent = 30 }}
then = {{ target = "NEW" }}

[[rules]]
name = "desk"
when = {{ protocol = "smartrouting", service = "DESK_QUEUE" }}
then = {{ service = "Desk" }}

[[rules]]
name = "sales"
when = {{ protocol = "smartrouting", service = "SALES_QUEUE" }}
then = {{ service = "Sales" }}
"""


@pytest.fixture(params=["memory", "redis", "cluster"])
def replicas(request, start_gateway):
    """The gateways of one deployment: one on its in-process store, or two sharing one Redis."""
    if request.param == "memory":
        return [start_gateway(config(""))]
    if request.param == "redis":
        store = f'redis_url = "{request.getfixturevalue("redis_server").url}"'
    else:
        store = f'redis_url = "{request.getfixturevalue("cluster").url}"\ncluster = true'
    text = config(store)
    return [start_gateway(text), start_gateway(text)]


def eml(gw, call_id: str, rc: str, customer: str | None = None) -> dict:
    body = {"callID": call_id, "rclassification": rc, "callTime": "1"}
    if customer is not None:
        body["customerID"] = customer
    r = gw.eml(body)
    assert r.status_code == 201, r.text
    return r.json()


def sr(gw, targetid: str, anum: str | None = None):
    body = {"targetid": targetid, "bnum": "+35891234"}
    if anum is not None:
        body["anum"] = anum
    r = gw.smartrouting(body)
    assert r.status_code in (200, 204), r.text
    return r.json().get("InitialTarget") if r.status_code == 200 else None


def test_weighted_split_is_exact_over_each_cycle_across_replicas_and_protocols(replicas):
    # Ten allocations of one pool, in turn on each replica and each protocol: the smooth cycle, twice.
    got = []
    for i in range(10):
        gw = replicas[i % len(replicas)]
        if i % 3 == 2:
            got.append(sr(gw, "SALES_QUEUE", "+358401111111"))
        else:
            got.append(eml(gw, f"w-{i}", "Sales")["number"])
    assert got == CYCLE * 2
    # A retry is its first answer and takes no turn.
    assert eml(replicas[-1], "w-0", "Sales")["number"] == "100"
    assert eml(replicas[0], "w-10", "Sales")["number"] == "100"


def test_a_sticky_caller_keeps_its_number_on_every_replica(replicas):
    a, b = replicas[0], replicas[-1]
    first = sr(a, "DESK_QUEUE", "+358 40 222 2222")
    assert first == "d1"
    assert sr(b, "DESK_QUEUE", "+358403333333") == "d2"
    for gw in (b, a, b):
        assert sr(gw, "DESK_QUEUE", "+358402222222") == first  # the same caller, written otherwise
    assert sr(a, "DESK_QUEUE", "+358404444444") == "d3"  # the sticky answers took no turn
    # A hidden number has nothing to stick by: the rotation answers.
    assert [sr(gw, "DESK_QUEUE") for gw in (a, b, a)] == ["d1", "d2", "d3"]


def test_a_sticky_customer_keeps_its_number_on_every_replica_and_new_call(replicas):
    a, b = replicas[0], replicas[-1]
    first = eml(a, "c-1", "Renewals", "ACME-001")
    assert first["number"] == "200"
    assert eml(b, "c-2", "Renewals", "GLOBEX-7")["number"] == "201"
    for i, gw in enumerate((b, a, b)):
        again = eml(gw, f"c-acme-{i}", "Renewals", "ACME-001")
        assert again["number"] == "200" and again["mqID"] != first["mqID"]
    assert eml(b, "c-1", "Renewals", "ACME-001") == first  # a retry: the first answer, whole
    assert eml(a, "c-3", "Renewals")["number"] == "202"  # no customer: not sticky
    assert eml(b, "c-4", "Renewals", "")["number"] == "200"


def callers(inside: bool, n: int = 3) -> list[str]:
    """Caller numbers ``when.percent = 30`` puts inside (or outside) its slice."""
    found = []
    for i in range(1000):
        number = f"+35850{i:07d}"
        if (bucket(RoutingQuery(protocol="smartrouting", caller=number)) < 30) == inside:
            found.append(number)
        if len(found) == n:
            return found
    raise AssertionError("no such callers")


def call_ids(inside: bool, n: int = 3) -> list[str]:
    found = [f"call-{i}" for i in range(1000)]
    return [c for c in found if (bucket(RoutingQuery(protocol="eml", call_id=c)) < 30) == inside][:n]


def test_percent_puts_a_caller_on_the_same_side_on_every_replica(replicas):
    # Each replica decides afresh: for EML, the same callIDs under another classification are new calls.
    for gw, rc in zip([*replicas, *replicas][:2], ["Trial", "Trial2"], strict=True):
        for number in callers(inside=True):
            assert sr(gw, "TRIAL_QUEUE", number) == "NEW"
        for number in callers(inside=False):
            assert sr(gw, "TRIAL_QUEUE", number) is None
        # EML calls have no caller number: the callID places them.
        for call_id in call_ids(inside=True):
            answer = eml(gw, call_id, rc)
            assert answer["number"] == "NEW" and answer["rclassification"] == rc
        for call_id in call_ids(inside=False):
            assert eml(gw, call_id, rc)["number"] == "300"


def test_route_explain_shows_weighted_sticky_and_percent(tmp_path):
    import subprocess

    from tests.conftest import BIN

    path = tmp_path / "c.toml"
    path.write_text(config(""))

    def route(body: str) -> str:
        run = subprocess.run(
            [BIN, "route", "--config", str(path), "--explain", body],
            check=False,
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0, run.stderr
        return run.stdout

    outside = callers(inside=False, n=1)[0]
    out = route(f'{{"anum": "{outside}", "targetid": "TRIAL_QUEUE"}}')
    b = bucket(RoutingQuery(protocol="smartrouting", caller=outside))
    assert "- trial: no: when.percent does not hold" in out
    assert f"percent 30 (buckets 0-29): this caller's bucket {b}, not in it" in out
    inside = callers(inside=True, n=1)[0]
    out = route(f'{{"anum": "{inside}", "targetid": "TRIAL_QUEUE"}}')
    assert "* trial: matches: decides" in out and "in it" in out and '"InitialTarget":"NEW"' in out

    out = route('{"anum": "+358402222222", "targetid": "DESK_QUEUE"}')
    assert "service: Desk (strategy round_robin; sticky by caller for 600 s)" in out
    assert "pick: turn 1 of the pool's shared counter: place 1 of 3 in its rotation" in out
    assert "sticky: nothing kept for this caller yet" in out

    out = route('{"callID": "x", "rclassification": "Sales", "callTime": "1"}')
    assert "service: Sales (strategy weighted; weights 3, 1, 1)" in out
    assert "place 1 of 5 in its smooth weighted cycle" in out and '"number":"100"' in out
