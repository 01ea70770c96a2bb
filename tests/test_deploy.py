"""What ships for running the gateway for real: the systemd unit and the tested versions."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess

import pytest

from tests.conftest import BIN, ROOT

UNIT = ROOT / "deploy" / "routing-gateway.service"
INSTALLED_AT = "/opt/routing-gateway/venv/bin/routing-gateway"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit_verifies(tmp_path):
    # verify wants the commands to exist: point the unit at this checkout's command instead of /opt.
    text = UNIT.read_text()
    assert INSTALLED_AT in text
    unit = tmp_path / "routing-gateway.service"
    unit.write_text(text.replace(INSTALLED_AT, str(BIN)))
    run = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    # verify exits 0 on unknown keys too, so its output must be empty as well.
    assert run.returncode == 0 and run.stderr == "" and run.stdout == "", run.stderr


def test_systemd_unit_has_what_production_needs():
    lines = {
        line.partition("=")[0]: line.partition("=")[2]
        for line in UNIT.read_text().splitlines()
        if "=" in line
    }
    assert lines["User"] == "routing-gateway"
    assert lines["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    assert lines["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert lines["Restart"] == "on-failure"
    assert int(lines["LimitNOFILE"]) >= 65536
    assert lines["NoNewPrivileges"] == "true" and lines["ProtectSystem"] == "strict"


def test_constraints_pin_what_the_suite_runs_with():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    for dist in (
        "starlette",
        "uvicorn",
        "msgspec",
        "redis",
        "httpx",
        "prometheus-client",
        "httptools",
        "uvloop",
    ):
        assert pins[dist] == importlib.metadata.version(dist), dist
