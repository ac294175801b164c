"""A keep-alive HTTP/1.1 transport between Prisma Client Python and its query engine.

The client talks to its engine over loopback HTTP with httpx, which costs about
1.5 ms of Python CPU per request; a plain `http.client` connection kept alive
costs about 0.4 ms. `install(client)` swaps the engine's httpx session for this
one after `connect()`. Requests carry the same headers (the client merges its
configured `http={"headers": ...}` into each request) and the same timeout.

Failures surface as httpx's exception types, so callers that treat
`httpx.TransportError` as "engine unavailable" keep working. A request sent on
an idle connection that the engine had already closed is retried once on a new
one: the engine never saw it, so nothing is applied twice.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
from prisma import Prisma
from prisma.http_abstract import AbstractResponse

# Connections idle longer than this are dropped rather than reused: the engine closes
# idle ones after 60 s (keepAliveTimeout), and reusing one it is closing loses a request.
MAX_IDLE_SECONDS = 30.0

# The engine closed a kept-alive connection before reading the request.
_STALE_CONNECTION_ERRORS = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
    ConnectionAbortedError,
)


class EngineResponse(AbstractResponse[bytes]):
    """What `SyncHTTPEngine.request` reads from a response: status, headers, JSON or text."""

    __slots__ = ("_headers", "_status")

    def __init__(self, status: int, headers: httpx.Headers, body: bytes) -> None:
        super().__init__(body)
        self._status = status
        self._headers = headers

    @property
    def status(self) -> int:
        return self._status

    @property
    def headers(self) -> httpx.Headers:
        return self._headers

    def json(self, **kwargs: Any) -> Any:
        return json.loads(self.original, **kwargs)

    def text(self, **kwargs: Any) -> str:
        return self.original.decode(**kwargs)


class KeepAliveHTTP:
    """A thread-safe pool of `http.client` connections to one engine, in place of prisma's SyncHTTP."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self._idle: list[tuple[http.client.HTTPConnection, float]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._origin: tuple[str, int] | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    def should_close(self) -> bool:
        return not self._closed

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.close()

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        content: str | bytes | None = None,
        **_: Any,
    ) -> EngineResponse:
        if self._closed:
            raise httpx.ConnectError("the engine transport is closed")
        parts = urlsplit(url)
        origin = (parts.hostname or "localhost", parts.port or 80)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        body = content.encode() if isinstance(content, str) else content
        conn: http.client.HTTPConnection | None = None
        try:
            conn, reused = self._checkout(origin)
            try:
                return self._send(conn, method, path, headers or {}, body)
            except _STALE_CONNECTION_ERRORS:
                if not reused:
                    raise
                conn.close()
                conn = self._connect(origin)
                return self._send(conn, method, path, headers or {}, body)
        except TimeoutError as exc:
            _close(conn)
            raise httpx.ReadTimeout(f"the query engine did not answer in {self.timeout} s") from exc
        except (OSError, http.client.HTTPException) as exc:
            _close(conn)
            raise httpx.ConnectError(f"query engine connection failed: {type(exc).__name__}") from exc
        except BaseException:
            _close(conn)
            raise

    def _send(
        self,
        conn: http.client.HTTPConnection,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes | None,
    ) -> EngineResponse:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        result = EngineResponse(response.status, httpx.Headers(response.getheaders()), data)
        if response.will_close:
            conn.close()
        else:
            self._checkin(conn)
        return result

    def _checkout(self, origin: tuple[str, int]) -> tuple[http.client.HTTPConnection, bool]:
        now = time.monotonic()
        with self._lock:
            if origin != self._origin:  # a new engine (reconnect): old connections point elsewhere
                stale, self._idle, self._origin = self._idle, [], origin
            else:
                stale = []
            while self._idle:
                conn, since = self._idle.pop()
                if now - since < MAX_IDLE_SECONDS:
                    break
                stale.append((conn, since))
            else:
                conn = None
        for old, _ in stale:
            old.close()
        if conn is not None:
            return conn, True
        return self._connect(origin), False

    def _checkin(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append((conn, time.monotonic()))
                return
        conn.close()

    def _connect(self, origin: tuple[str, int]) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(*origin, timeout=self.timeout)
        conn.connect()
        # Small requests and answers: send each at once instead of waiting for an ACK.
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn


def _close(conn: http.client.HTTPConnection | None) -> None:
    if conn is not None:
        conn.close()


def _timeout_seconds(value: Any) -> float | None:
    if isinstance(value, httpx.Timeout):
        parts = [t for t in (value.read, value.connect, value.write, value.pool) if t is not None]
        return max(parts) if parts else None
    return float(value) if value is not None else None


def install(client: Prisma) -> None:
    """Replace the connected client's engine session with `KeepAliveHTTP` (same timeout)."""
    engine = client._engine
    old = engine.session  # type: ignore[attr-defined]
    timeout = _timeout_seconds(old.session_kwargs.get("timeout"))
    engine.session = KeepAliveHTTP(timeout)  # type: ignore[attr-defined]
    old.close()
