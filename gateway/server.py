"""Running the app under uvicorn, one process or several, with the limits of SPEC section 8."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import ssl
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from gateway.app import CONFIG_ENV, create_app, describe
from gateway.config import Loaded, ServerConfig
from gateway.connection import Connection, Limits
from gateway.handshake import Handshake
from gateway.logs import event
from gateway.metrics import MULTIPROCESS_ENV

logger = logging.getLogger("uvicorn.error")


class Config(uvicorn.Config):
    """uvicorn's config, serving each connection with :class:`Connection` under ``limits``; with TLS,
    each starts as a :class:`Handshake`. Picklable, as the worker processes receive it."""

    def __init__(self, app: Any, *, limits: Limits, **options: Any) -> None:
        super().__init__(app, http=Connection, ws="none", **options)
        self.limits = limits
        self.tls: ssl.SSLContext | None = None

    def load(self) -> None:
        # Run in each worker too. uvicorn would hand the TLS context to the loop's server, whose handshakes
        # are not counted as connections and take up to 60 s: the server stays plain TCP, and each
        # connection does its own handshake (gateway.handshake), whichever way uvicorn creates the server.
        super().load()
        self.tls, self.ssl = self.ssl, None
        if self.tls is not None:
            self.http_protocol_class = Handshake

    def configure_logging(self) -> None:
        # Run in each worker too. Without a log config (gateway.logs formats every line) uvicorn sets no
        # levels, and its access lines are at info: let them through when they are asked for.
        super().configure_logging()
        if self.access_log:
            logging.getLogger("uvicorn.access").setLevel(logging.INFO)


class Server(uvicorn.Server):
    """uvicorn's server, but a stop asked for with SIGTERM or SIGINT ends the process normally (exit
    code 0), instead of by the signal re-raised once shutdown is done; and ``started`` is logged only
    once the socket is bound (a busy port gives an error, never a ``started`` line first)."""

    async def startup(self, sockets: list | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            bound = (
                self.servers[0].sockets[0].getsockname()
                if self.servers
                else (self.config.host, self.config.port)
            )
            event(
                "started",
                host=self.config.host,
                port=bound[1],
                scheme=_scheme(self.config),
                workers=1,
                **describe(self.config.app),
            )

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()


class Supervisor(Multiprocess):
    """uvicorn's worker supervisor, but SIGHUP is passed on to the workers, each of which reloads its
    config in place (refusing an invalid one), instead of restarting them; and at shutdown a worker
    still running a second after its own shutdown timeout is killed."""

    def handle_hup(self) -> None:
        for process in self.processes:
            if process.pid is not None:
                os.kill(process.pid, signal.SIGHUP)

    def join_all(self) -> None:
        deadline = time.monotonic() + (self.config.timeout_graceful_shutdown or 0) + 2
        for process in self.processes:
            process.process.join(max(0.0, deadline - time.monotonic()))
            if process.process.is_alive():
                logger.error("Worker [%s] did not stop in time; killed", process.pid)
                process.kill()
                process.process.join()


def _scheme(config: uvicorn.Config) -> str:
    return "https" if config.ssl_certfile else "http"


def options(server: ServerConfig) -> tuple[Limits, dict[str, Any]]:
    """The connection limits and uvicorn's options for ``[server]`` (host, port and TLS aside)."""
    stop = float(server.shutdown_timeout_s)
    # The last second (half, for a 1 s timeout) is left to the app for closing the store and the
    # CRM client; connections still busy are cut half a second before uvicorn cancels their tasks.
    graceful = stop - min(1.0, stop / 2)
    limits = Limits(
        max_header_bytes=server.max_header_bytes,
        max_headers=server.max_headers,
        read_timeout_s=server.read_timeout_ms / 1000,
        drain_s=max(graceful - 0.5, graceful / 2),
    )
    return limits, {
        "loop": "uvloop",
        "lifespan": "on",
        "access_log": server.access_log,
        "server_header": False,
        # X-Forwarded-For is read by the app itself, and only from server.trusted_proxies.
        "proxy_headers": False,
        # The gateway's logging (gateway.logs) stays as it is set up: no dictConfig, no levels set here.
        # uvicorn's own messages still go to the "uvicorn.error" logger.
        "log_config": None,
        "log_level": None,
        # uvicorn counts this request's own connection, and refuses at `>=`: one more than the open
        # connections allowed. (It also refuses while as many requests are still being answered.)
        "limit_concurrency": server.max_connections + 1,
        "timeout_keep_alive": server.keepalive_timeout_s,
        "timeout_graceful_shutdown": graceful,
    }


def serve(
    loaded: Loaded, host: str | None = None, port: int | None = None, workers: int | None = None
) -> None:
    """Serve until SIGINT or SIGTERM; in-flight webhooks finish first, within ``shutdown_timeout_s``."""
    server = loaded.config.server
    base = loaded.path.parent
    limits, opts = options(server)
    opts.update(host=host or server.host, port=server.port if port is None else port)
    if server.tls_cert:
        opts.update(ssl_certfile=str(base / server.tls_cert), ssl_keyfile=str(base / server.tls_key))
    workers = workers or server.workers
    if workers > 1:
        # Each worker loads the config itself, from the path handed down in the environment, and
        # writes its metrics where /metrics in any worker sums them.
        os.environ[CONFIG_ENV] = str(loaded.path.resolve())
        metrics_dir = tempfile.mkdtemp(prefix="routing-gateway-metrics-")
        os.environ[MULTIPROCESS_ENV] = metrics_dir
        config = Config("gateway.app:from_env", factory=True, workers=workers, limits=limits, **opts)
        try:
            sock = config.bind_socket()
            event(
                "started",
                host=config.host,
                port=sock.getsockname()[1],
                scheme=_scheme(config),
                workers=workers,
                config=str(loaded.path),
                version=loaded.version,
            )
            Supervisor(config, sockets=[sock]).run()
        finally:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    else:
        single = Server(Config(create_app(loaded), limits=limits, **opts))
        single.run()
        if not single.started:
            sys.exit(STARTUP_FAILURE)
