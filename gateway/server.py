"""Running the app under uvicorn, one process or several."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile

import uvicorn
from uvicorn.supervisors import Multiprocess

from gateway.app import CONFIG_ENV, create_app
from gateway.config import Loaded
from gateway.metrics import MULTIPROCESS_ENV


class Supervisor(Multiprocess):
    """uvicorn's worker supervisor, but SIGHUP is passed on to the workers, each of which reloads its
    config in place (refusing an invalid one), instead of restarting them."""

    def handle_hup(self) -> None:
        for process in self.processes:
            if process.pid is not None:
                os.kill(process.pid, signal.SIGHUP)


def serve(loaded: Loaded, host: str | None = None, port: int | None = None, workers: int | None = None) -> None:
    """Serve until SIGINT or SIGTERM; in-flight webhooks finish first."""
    server = loaded.config.server
    base = loaded.path.parent
    options = {
        "host": host or server.host,
        "port": server.port if port is None else port,
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "on",
        "access_log": server.access_log,
        "server_header": False,
        # X-Forwarded-For is read by the app itself, and only from server.trusted_proxies.
        "proxy_headers": False,
        "log_level": "warning",
        "timeout_graceful_shutdown": 30,
    }
    if server.tls_cert:
        options.update(ssl_certfile=str(base / server.tls_cert), ssl_keyfile=str(base / server.tls_key))
    workers = workers or server.workers
    if workers > 1:
        # Each worker loads the config itself, from the path handed down in the environment, and
        # writes its metrics where /metrics in any worker sums them.
        os.environ[CONFIG_ENV] = str(loaded.path.resolve())
        metrics_dir = tempfile.mkdtemp(prefix="routing-gateway-metrics-")
        os.environ[MULTIPROCESS_ENV] = metrics_dir
        config = uvicorn.Config("gateway.app:from_env", factory=True, workers=workers, **options)
        try:
            Supervisor(config, sockets=[config.bind_socket()]).run()
        finally:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    else:
        uvicorn.run(create_app(loaded), **options)
