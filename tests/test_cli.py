"""The command line as an operator meets it: help, version, examples."""

from __future__ import annotations

import importlib.metadata
import subprocess

from tests.conftest import BIN


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([BIN, *args], check=False, capture_output=True, text=True)


def test_version():
    out = run("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"routing-gateway {importlib.metadata.version('routing-gateway')}"


def test_help_is_plain_text_with_examples():
    out = run("--help").stdout
    assert "``" not in out
    assert "examples:" in out and "routing-gateway route --explain" in out
    for command in ("serve", "check", "route"):
        assert command in out


def test_every_argument_is_described():
    check = run("check", "--help").stdout
    assert "path" in check and "$ROUTING_GATEWAY_CONFIG" in check
    route = run("route", "--help").stdout
    assert "--config CONFIG" in route and "$ROUTING_GATEWAY_CONFIG" in route
    assert "schedules' zone" in route
