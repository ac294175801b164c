"""Structured logs: one JSON line per request, and JSON for every other record too (serving.logs).

Only the method, the path (never the query string), the status, the duration
and ids go into a request line: headers and bodies carry session tokens, Svix
signatures and personal data, so none of them is ever logged.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import uuid
from typing import Any

from flask import Flask, Response, g, request

from serving.logs import JsonFormatter

log = logging.getLogger("app.request")

_REQUEST_ID = "X-Request-Id"
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def configure_logging() -> None:
    """JSON lines on stderr for the `app` loggers, unless the host already set logging up."""
    logger = logging.getLogger("app")
    if logger.handlers:
        return
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())
    logger.propagate = False


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is now, not the one at start-up (test capture, re-opened
    logs), unless a stream is set explicitly (`setStream`, or assigning `stream`)."""

    def __init__(self) -> None:
        self._explicit: Any = None
        super().__init__(sys.stderr)
        self._explicit = None  # the base class's own assignment above is not a choice

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr if self._explicit is None else self._explicit

    @stream.setter
    def stream(self, value: Any) -> None:
        self._explicit = value


def _request_id() -> str:
    # Reuse the load balancer's id when it is a sane token; never echo arbitrary header content.
    incoming = request.headers.get(_REQUEST_ID, "")
    if 0 < len(incoming) <= 128 and set(incoming) <= _ID_CHARS:
        return incoming
    return uuid.uuid4().hex


def init_app(app: Flask) -> None:
    @app.before_request
    def _start() -> None:
        g.request_started = time.perf_counter()
        g.request_id = _request_id()

    @app.after_request
    def _log(response: Response) -> Response:
        started = g.get("request_started")
        fields = {
            "event": "request",
            "request_id": g.get("request_id"),
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2) if started else None,
            "bytes_in": request.content_length,
        }
        if "svix-id" in request.headers:
            fields["svix_id"] = request.headers["svix-id"][:128]
        outcome = response.headers.get("X-Clerk-Sync-Outcome")
        if outcome:
            fields["outcome"] = outcome
        log.info("%s %s %s", request.method, request.path, response.status_code, extra={"fields": fields})
        if g.get("request_id"):
            response.headers[_REQUEST_ID] = g.request_id
        return response
