"""Config reload on SIGHUP and when the config file or a directory CSV changes.

The new file is read and checked off the event loop; only a valid one replaces the running config, in
one assignment, so a request in flight finishes on the config it started with. An invalid file is
refused: its problems are logged and counted, and the running config stays.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path

from core.errors import ConfigError
from gateway import config as config_mod
from gateway import metrics
from gateway.logs import event

# Changing these needs a restart: they shape the process (listening socket, TLS, workers, store).
RESTART_ONLY = (
    "server.host",
    "server.port",
    "server.workers",
    "server.tls_cert",
    "server.tls_key",
    "server.access_log",
    "server.max_header_bytes",
    "server.max_headers",
    "server.read_timeout_ms",
    "server.keepalive_timeout_s",
    "server.max_connections",
    "server.shutdown_timeout_s",
    "store",
    "journal.max_entries",
)


class Reloader:
    def __init__(self, current: Callable[[], config_mod.Loaded], apply: Callable[[config_mod.Loaded], None]):
        self._current = current
        self._apply = apply
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()

    def watched(self) -> set[Path]:
        """The config file and the directory files it names, resolved."""
        loaded = self._current()
        base = loaded.path.parent
        return {loaded.path.resolve(), *((base / f).resolve() for f in loaded.config.directory.files)}

    async def reload(self, reason: str) -> bool:
        async with self._lock:
            old = self._current()
            try:
                # Off the loop: a large directory takes a moment to read, and webhooks go on meanwhile.
                new = await asyncio.to_thread(config_mod.load, old.path)
            except ConfigError as exc:
                metrics.RELOADS.labels("invalid").inc()
                event(
                    "reload refused", logging.ERROR, reason=reason, version=old.version, problems=exc.problems
                )
                return False
            if new.version == old.version:
                # Nothing to swap, but the operator who sent the signal sees it arrived.
                metrics.RELOADS.labels("unchanged").inc()
                event("reload unchanged", reason=reason, version=old.version)
                return True
            changed = [k for k in RESTART_ONLY if _get(old.config, k) != _get(new.config, k)]
            self._apply(new)
            metrics.RELOADS.labels("ok").inc()
            metrics.config_loaded(new.version, old.version, time.time())
            event("reloaded", reason=reason, version=new.version, previous=old.version)
            if changed:
                event(
                    "restart needed",
                    logging.WARNING,
                    keys=changed,
                    note="these settings take effect at the next start",
                )
            return True

    def trigger(self, reason: str) -> None:
        task = asyncio.get_running_loop().create_task(self.reload(reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def install(self) -> None:
        """Reload on SIGHUP (a single uvicorn process would otherwise die of it) and on file changes."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.trigger, "SIGHUP")
        task = loop.create_task(self._watch())
        self._tasks.add(task)

    async def _watch(self) -> None:
        from watchfiles import awatch

        while True:
            files = self.watched()
            folders = {f.parent for f in files if f.parent.is_dir()}
            try:
                async for changes in awatch(*folders, debounce=300, step=50, recursive=False):
                    if any(Path(p).resolve() in files for _, p in changes):
                        await self.reload("file changed")
                        break  # the files to watch may have changed with the config
            except Exception:  # noqa: BLE001 - the watcher must outlive any error; SIGHUP still works
                event("watch failed", logging.ERROR, exc_info=True)
                await asyncio.sleep(5)

    def close(self) -> None:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        for task in self._tasks:
            task.cancel()


def _get(cfg: config_mod.Config, dotted: str):
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value
