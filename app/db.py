"""The Prisma client: one per server process, connected after fork.

Prisma Client Python runs its query engine as a child process. A process forked
from one that is connected (gunicorn's workers) must not reuse its parent's
engine, so the client connects lazily in the process that uses it, reconnects
if its engine has died, and disconnects at exit so no engine outlives it.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
from flask import Flask, current_app
from prisma import Prisma, _builder
from prisma import errors as prisma_errors

from prisma_engines import auth, builder, transport

from . import metrics

log = logging.getLogger(__name__)

# Prisma Client Python 0.15 corrupts U+0085/U+2028/U+2029 in strings it sends; see prisma_engines.builder.
builder.patch(_builder)

# Read by prisma/query-engine.mjs: the pid that starts it, so it can tell it was orphaned while starting.
ENGINE_PARENT_VARIABLE = "CLERK_SYNC_ENGINE_PARENT"

# Every failure of the database or its engine: `db_errors.classify` says which are transient.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (prisma_errors.PrismaError, httpx.TransportError)


def engine_request_timeout(url: str) -> float:
    """Seconds to wait for one engine answer: longer than the engine's own bounds, so it answers first.

    The offline engine waits at most `pool_timeout` for a connection, then `socket_timeout`
    for the query (URL parameters, defaults 10 and 10; prisma/src/pool.mjs), and
    an interactive transaction start at most its max_wait (10 s, app/sync.py).
    """
    params = parse_qs(urlsplit(url).query)

    def seconds(name: str, default: float) -> float:
        try:
            return float(params[name][0])
        except (KeyError, IndexError, ValueError):
            return default

    return max(seconds("pool_timeout", 10) + seconds("socket_timeout", 10), 10) + 5


class Database:
    """Owns this process's Prisma client."""

    def __init__(self, url: str, *, connect_timeout: timedelta = timedelta(seconds=15)) -> None:
        self._url = url
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._client: Prisma | None = None
        self._pid: int | None = None

    def client(self) -> Prisma:
        """The connected client, connecting (or reconnecting) first if needed."""
        client = self._client
        if client is not None and self._pid == os.getpid() and _engine_alive(client):
            return client
        with self._lock:
            if self._client is not None and self._pid != os.getpid():
                # Inherited through fork: the engine belongs to the parent. Forget it, don't stop it.
                self._client = None
            if self._client is not None and not _engine_alive(self._client):
                log.warning("prisma query engine exited; reconnecting")
                self._disconnect()
            if self._client is None:
                client = Prisma(
                    datasource={"url": self._url},
                    connect_timeout=self._connect_timeout,
                    http=auth.http_options(timeout=engine_request_timeout(self._url)),
                )
                # The engine exits at once if this process is gone before it starts (see query-engine.mjs);
                # only for the engine started here, not inherited by other children of this process.
                os.environ[ENGINE_PARENT_VARIABLE] = str(os.getpid())
                try:
                    client.connect()
                finally:
                    os.environ.pop(ENGINE_PARENT_VARIABLE, None)
                transport.install(client)  # keep-alive http.client instead of httpx
                metrics.time_engine(client)
                self._client, self._pid = client, os.getpid()
            return self._client

    def close(self) -> None:
        """Disconnect, stopping the engine process, if this process owns a client."""
        with self._lock:
            if self._client is not None and self._pid == os.getpid():
                self._disconnect()
            self._client = None

    def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None and client.is_connected():
            try:
                client.disconnect(timeout=timedelta(seconds=5))
            except Exception:  # the engine may already be gone; nothing left to release
                log.debug("error while disconnecting prisma", exc_info=True)


def _engine_alive(client: Prisma) -> bool:
    if not client.is_connected():
        return False
    process = getattr(client._engine, "process", None)
    return process is None or process.poll() is None


def init_app(app: Flask, database_url: str) -> Database:
    database = Database(database_url)
    app.extensions["database"] = database
    atexit.register(database.close)
    return database


def get_db() -> Prisma:
    """The current app's connected Prisma client."""
    database: Database = current_app.extensions["database"]
    return database.client()
