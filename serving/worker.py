"""The gunicorn worker: gevent greenlets that read a whole request before the app sees it.

A thread per connection (gunicorn's gthread) lets a few slow clients hold every
thread. Here each connection is a greenlet, so a slow client costs a greenlet:
- the request head must arrive within gunicorn's `keepalive` seconds (its async
  workers bound the head read by that), else the connection is closed;
- the body is read here, in full, within REQUEST_BODY_TIMEOUT seconds and up to
  REQUEST_MAX_BYTES, before the app runs: 408 or 413 otherwise;
- the app then runs under a per-worker bulkhead. At most APP_CONCURRENCY requests
  run at once (the query engine serves a few concurrent requests faster than
  many), and `/after-login`, which waits on Clerk, has its own LOGIN_CONCURRENCY
  slots, so a slow Clerk cannot take the slots webhooks need. A request that
  finds no slot within SLOT_TIMEOUT seconds gets 503.

Every answer the server writes itself (these, and gunicorn's 400/414/431 for a
malformed request) is JSON like the app's errors, and closes the connection.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import time
from functools import partial
from http import HTTPStatus
from typing import Any

import gevent
from gevent.lock import BoundedSemaphore
from gevent.pool import Pool
from gevent.server import StreamServer
from gunicorn.http import errors as http_errors
from gunicorn.http.body import LengthReader
from gunicorn.sock import ssl_context
from gunicorn.workers.ggevent import GeventWorker

LOGIN_PATH = "/after-login"
SLOT_TIMEOUT = 10.0  # under Svix's 15 s delivery timeout
DRAIN_SECONDS = 1.0

# gunicorn's request parse errors that are the client's, by the status they answer.
_CLIENT_ERRORS: tuple[tuple[type[Exception], int, str], ...] = (
    (http_errors.LimitRequestHeaders, 431, "headers_too_large"),
    (http_errors.LimitRequestLine, 414, "uri_too_long"),
    (http_errors.UnsupportedTransferCoding, 501, "unsupported_transfer_coding"),
    (http_errors.ExpectationFailed, 417, "expectation_failed"),
    (http_errors.ForbiddenProxyRequest, 403, "forbidden"),
)


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = 0
    if value <= 0:
        raise SystemExit(f"{name} must be a positive number, got {raw!r}")
    return value


class Refused(Exception):
    """An answer the server gives without running the app."""

    def __init__(self, status: int, code: str, message: str, headers: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


class BufferingWorker(GeventWorker):
    """gunicorn's gevent worker, plus whole-body buffering, a bulkhead and JSON errors."""

    def init_process(self) -> None:
        self.body_timeout = _env_number("REQUEST_BODY_TIMEOUT", 10.0)
        self.max_body = int(_env_number("REQUEST_MAX_BYTES", 1024 * 1024))
        self.app_slots = BoundedSemaphore(int(_env_number("APP_CONCURRENCY", 4)))
        self.login_slots = BoundedSemaphore(int(_env_number("LOGIN_CONCURRENCY", 8)))
        self.servers: list[StreamServer] = []
        super().init_process()

    def run(self) -> None:
        """gunicorn's GeventWorker.run, keeping its servers so that a worker told to stop
        (max_requests reached) stops accepting at once, not at the next 1 s check."""
        # gevent prints a greenlet's uncaught error as plain text; log it as JSON instead.
        gevent.get_hub().print_exception = self._log_greenlet_error
        ssl_args = {"ssl_context": ssl_context(self.cfg)} if self.cfg.is_ssl else {}
        for listener in self.sockets:
            listener.setblocking(1)
            pool = Pool(self.worker_connections)
            server = StreamServer(listener, handle=partial(self.handle, listener), spawn=pool, **ssl_args)
            if self.cfg.workers > 1:
                server.max_accept = 1
            server.start()
            self.servers.append(server)
        while self.alive:
            self.notify()
            gevent.sleep(1.0)
        self._stop_accepting()
        started = time.monotonic()  # drain the connections in flight, within graceful_timeout
        while time.monotonic() - started <= self.cfg.graceful_timeout:
            if all(server.pool.free_count() == server.pool.size for server in self.servers):
                for server in self.servers:
                    server.close()
                return
            self.notify()
            gevent.sleep(0.2)
        self.log.warning("worker graceful timeout (pid:%s)", self.pid)
        for server in self.servers:
            server.stop(timeout=1)

    def _stop_accepting(self) -> None:
        # Only the accept watcher: a connection accepted just before still reads the listener's
        # name (gunicorn's `handle`), and a listener closed under it dropped that connection with
        # EBADF, a reset the client saw. The listeners close once the drain is over.
        for server in self.servers:
            server.stop_accepting()

    def _log_greenlet_error(self, context: Any, kind: Any, value: Any, tb: Any) -> None:
        name = getattr(kind, "__name__", kind)
        self.log.error("uncaught error in a greenlet: %s", name, exc_info=(kind, value, tb))

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        try:
            req.body = io.BytesIO(self._read_body(req, sock))
            slots = self.login_slots if req.path == LOGIN_PATH else self.app_slots
            if not slots.acquire(timeout=SLOT_TIMEOUT):
                raise Refused(503, "overloaded", "The server is busy; retry later.", ("Retry-After: 1",))
        except Refused as refused:
            self._refuse(req, sock, refused)
            raise StopIteration from None  # gunicorn's signal to close this connection
        try:
            return super().handle_request(listener_name, req, sock, addr)
        finally:
            slots.release()
            if not self.alive:
                self._stop_accepting()

    def _read_body(self, req: Any, sock: Any) -> bytes:
        reader = req.body.reader
        if isinstance(reader, LengthReader) and reader.length > self.max_body:
            raise self._too_large()
        if isinstance(reader, LengthReader) and reader.length == 0:
            return b""
        if req._expected_100_continue:
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            req._expected_100_continue = False  # so gunicorn doesn't send it again
        chunks: list[bytes] = []
        size = 0
        deadline = gevent.Timeout(self.body_timeout)
        deadline.start()
        try:
            while chunk := req.body.read(65536):
                size += len(chunk)
                if size > self.max_body:
                    raise self._too_large()
                chunks.append(chunk)
        except gevent.Timeout as timeout:
            if timeout is not deadline:
                raise
            raise Refused(408, "request_timeout", "The request body did not arrive in time.") from None
        finally:
            deadline.close()
        return b"".join(chunks)

    def _too_large(self) -> Refused:
        return Refused(413, "payload_too_large", f"Request bodies are limited to {self.max_body} bytes.")

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        if not isinstance(exc, Exception):
            return  # the greenlet is being killed (graceful timeout): nothing to answer
        status, code = _classify(exc)
        if status >= 500:
            self.log.exception("error handling a request")
            message = "The server failed to handle this request."
        else:
            # The type only: a parse error's text quotes the request, which may carry a token.
            message = f"The request is malformed ({type(exc).__name__})."
        self._refuse(req, client, Refused(status, code, message), error=type(exc).__name__)

    def _refuse(self, req: Any, sock: Any, refused: Refused, error: str | None = None) -> None:
        fields: dict[str, Any] = {"event": "refused", "status": refused.status, "code": refused.code}
        if error:
            fields["error"] = error
        if req is not None:
            fields.update(method=req.method, path=req.path)
        self.log.warning("refused: %s %s", refused.status, refused.code, extra={"fields": fields})
        body = json.dumps({"error": {"code": refused.code, "message": refused.message}}).encode()
        head = [
            f"HTTP/1.1 {refused.status} {HTTPStatus(refused.status).phrase}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            "Connection: close",
            *refused.headers,
        ]
        with contextlib.suppress(OSError):
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
            # Half-close, then discard what the client is still sending, briefly: closing with
            # unread data would reset the connection, and the client might lose the answer.
            sock.shutdown(socket.SHUT_WR)
            with gevent.Timeout(DRAIN_SECONDS, False):
                while sock.recv(65536):
                    pass


def _classify(exc: Exception) -> tuple[int, str]:
    """The status and code for an error raised while gunicorn parsed or served a request."""
    for error, status, code in _CLIENT_ERRORS:
        if isinstance(exc, error):
            return status, code
    response_errors = (http_errors.InvalidResponseHeader, http_errors.InvalidResponseHeaderName)
    if isinstance(exc, http_errors.ParseException) and not isinstance(exc, response_errors):
        return 400, "bad_request"
    return 500, "internal_error"
