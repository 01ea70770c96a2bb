"""The adapter seam: a protocol from outside gateway/ is configured, checked, routed and served."""

from __future__ import annotations

import sys

import pytest

import adapters
from core.errors import ConfigError
from gateway.config import load
from tests import toy_protocol
from tests.conftest import ROOT

CONFIG = """
[smartrouting]
api_keys = ["sr-key"]

[toy]
path = "/toy/route"
api_keys = ["toy-key"]

[services.Desk]
numbers = ["100", "200"]
strategy = "round_robin"

[callers."+358501231234"]
tags = ["vip"]

[[rules]]
name = "toy-vip"
when = { protocol = "toy", tag = "vip" }
then = { target = "VIP_DESK" }

[[rules]]
name = "toy-closed"
when = { protocol = "toy", service = "Closed" }
then = { default = true }
"""


def test_every_adapter_satisfies_the_protocol():
    for adapter in adapters.registered():
        assert isinstance(adapter.NAME, str) and issubclass(adapter.Config, adapters.Section)
        for member in ("paths", "retry_window_s", "check_config", "owns", "looks_like"):
            assert callable(getattr(adapter, member)), (adapter.NAME, member)
        for member in ("check_content_type", "parse", "render", "error"):
            assert callable(getattr(adapter, member)), (adapter.NAME, member)


@pytest.fixture
def toy():
    adapters.register(toy_protocol)
    yield toy_protocol
    adapters.unregister(toy_protocol.NAME)


def test_a_protocol_table_is_known_only_once_its_adapter_is_registered(tmp_path, toy):
    path = tmp_path / "c.toml"
    path.write_text(CONFIG)
    loaded = load(path)
    assert toy.paths(loaded.config.toy) == {"path": "/toy/route"}
    adapters.unregister("toy")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert any(p.startswith("toy: unknown key") for p in info.value.problems), info.value.problems
    assert any("'toy' is not one of smartrouting, eml" in p for p in info.value.problems)
    adapters.register(toy)
    # Its own checks and the shared ones (credentials, paths) apply to its table.
    path.write_text(CONFIG.replace('path = "/toy/route"', 'path = "/metrics"').replace('"toy-key"', '" "'))
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.problems == ["toy.api_keys[0]: empty", "toy.path: must start with /toy"]


@pytest.mark.e2e
def test_a_third_protocol_is_served_end_to_end_beside_the_others(start_gateway):
    gw = start_gateway(CONFIG, command=[sys.executable, str(ROOT / "tests" / "toy_serve.py")])
    toy = gw.client
    key = {"X-Toy-Key": "toy-key"}
    # The rule for its protocol, the pool when no rule gives a destination (round-robin), its errors.
    assert toy.post("/toy/route", json={"from": "+358 50 123 1234", "queue": "Desk"}, headers=key).json() == {
        "to": "VIP_DESK"
    }
    assert [toy.post("/toy/route", json={"queue": "Desk"}, headers=key).json()["to"] for _ in range(3)] == [
        "100",
        "200",
        "100",
    ]
    closed = toy.post("/TOY/route/", json={"queue": "Closed"}, headers={"Authorization": "Bearer toy-key"})
    assert (closed.status_code, closed.json()) == (404, {"to": None})
    assert toy.post("/toy/route", json={"queue": "Desk"}).json() == {"toy": "unauthorized"}
    assert toy.post("/toy/route", content=b"[", headers=key).json() == {"toy": "bad body"}
    assert toy.post("/toy/elsewhere", json={}, headers=key).json() == {"toy": "not_found"}
    # The other protocols are served as before, from the same rule base.
    assert (
        gw.smartrouting({"anum": "+358501231234"}, headers={"X-Benemen-APIKey": "sr-key"}).status_code == 204
    )
    assert gw.eml({"callID": "c1", "rclassification": "Desk", "callTime": "1"}).json()["number"] == "200"
    # Logged and counted under its name.
    assert '"protocol":"toy"' in gw.logs() and '"rule":"toy-vip"' in gw.logs()
    assert 'routing_requests_total{outcome="routed",protocol="toy"}' in gw.client.get("/metrics").text
