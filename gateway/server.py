"""Running the app under uvicorn, one process or several."""

from __future__ import annotations

import os

import uvicorn

from gateway.app import CONFIG_ENV, create_app
from gateway.config import Loaded


def serve(loaded: Loaded, host: str | None = None, port: int | None = None, workers: int | None = None) -> None:
    """Serve until SIGINT or SIGTERM; in-flight webhooks finish first."""
    server = loaded.config.server
    base = loaded.path.parent
    options = dict(
        host=host or server.host,
        port=server.port if port is None else port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=server.access_log,
        server_header=False,
        # X-Forwarded-For is read by the app itself, and only from server.trusted_proxies.
        proxy_headers=False,
        log_level="warning",
        timeout_graceful_shutdown=30,
    )
    if server.tls_cert:
        options.update(ssl_certfile=str(base / server.tls_cert), ssl_keyfile=str(base / server.tls_key))
    workers = workers or server.workers
    if workers > 1:
        # Each worker loads the config itself, from the path handed down in the environment.
        os.environ[CONFIG_ENV] = str(loaded.path.resolve())
        uvicorn.run("gateway.app:from_env", factory=True, workers=workers, **options)
    else:
        uvicorn.run(create_app(loaded), **options)
