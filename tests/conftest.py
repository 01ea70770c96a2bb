"""Shared fixtures: free ports, gateway processes started as a user starts them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
BIN = Path(sys.executable).parent / "routing-gateway"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    """A ``routing-gateway serve`` process on a free port, with its log file."""

    def __init__(
        self,
        config: Path,
        log: Path,
        args: tuple[str, ...] = (),
        env: dict | None = None,
        scheme: str = "http",
        verify=True,
        command: list[str] | None = None,
    ) -> None:
        self.config = config
        self.port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.log = log
        self._log = open(log, "ab")  # noqa: SIM115 - open for the process's lifetime, closed in stop()
        full_env = {**os.environ, **(env or {})}
        self.proc = subprocess.Popen(
            [*(command or [str(BIN)]), "serve", "--config", str(config), "--port", str(self.port), *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
        self.client = httpx.Client(base_url=self.url, timeout=10, verify=verify)
        try:
            self.wait_ready()
        except BaseException:
            self.stop()  # a gateway that never became ready must not outlive the test
            raise

    def wait_ready(self, timeout: float = 20) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"gateway not ready:\n{self.log.read_text()}")

    def smartrouting(self, body: dict | None = None, **kw) -> httpx.Response:
        kw.setdefault("headers", {"X-Benemen-APIKey": "1234"})
        return self.client.post("/smartrouting", json=body, **kw)

    def eml(self, body: dict | None = None, **kw) -> httpx.Response:
        return self.client.post("/call/request", json=body, **kw)

    def logs(self) -> str:
        return self.log.read_text()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.client.close()
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def start_gateway(tmp_path):
    """Start gateways from a config text or path; all are stopped at the end of the test."""
    started: list[Gateway] = []

    def start(
        config: str | Path, *args: str, env: dict | None = None, files: dict | None = None, **kw
    ) -> Gateway:
        for name, text in (files or {}).items():
            (tmp_path / name).write_text(text)
        if isinstance(config, str):
            path = tmp_path / f"config{len(started)}.toml"
            path.write_text(config)
            config = path
        gw = Gateway(config, tmp_path / f"gateway{len(started)}.log", args, env, **kw)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


E2E_ENV = {"TEST_SR_KEY": "1234", "TEST_SR_PASSWORD": "s3cret-pass"}


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    """One gateway on tests/data/e2e.toml, shared by a module's tests."""
    tmp = tmp_path_factory.mktemp("e2e")
    gw = Gateway(DATA / "e2e.toml", tmp / "gateway.log", env=E2E_ENV)
    yield gw
    gw.stop()


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One real redis-server for the session (never the shared 6379); tests use their own key prefixes."""
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.kill()


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of the test's own, for tests that kill it."""
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path)
    yield server
    server.kill()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """A real local 3-node Redis Cluster."""
    from tests.redis_server import RedisCluster

    c = RedisCluster(tmp_path_factory.mktemp("cluster"))
    yield c
    c.kill()


@pytest.fixture(scope="session")
def sentinel(tmp_path_factory):
    """A Redis master watched by a real Redis Sentinel as ``mymaster``."""
    from tests.redis_server import RedisSentinel

    s = RedisSentinel(tmp_path_factory.mktemp("sentinel"))
    yield s
    s.kill()


@pytest.fixture
def crm():
    """A local HTTP server standing in for the CRM."""
    from tests.crm import FakeCrm

    server = FakeCrm()
    yield server
    server.close()
