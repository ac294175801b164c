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

import httpx
from flask import Flask, current_app
from prisma import Prisma
from prisma import errors as prisma_errors

from prisma_engines import transport

log = logging.getLogger(__name__)

# Errors that mean "the database (or its engine) is not answering right now":
# the request may succeed if retried, so callers answer 503.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    prisma_errors.PrismaError,
    prisma_errors.ClientNotConnectedError,
    httpx.TransportError,
)


# Longer than sync.TRANSACTION_TIMEOUT, after which the engine gives up by itself.
ENGINE_REQUEST_TIMEOUT = 20.0


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
                    # httpx's 5 s default is shorter than a write may queue for its user's lock.
                    http={"timeout": ENGINE_REQUEST_TIMEOUT},
                )
                client.connect()
                transport.install(client)  # keep-alive http.client instead of httpx
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
