"""Only the client that started the offline query engine may use it.

The engine listens on loopback, where any local user can connect; unguarded, anyone
could run `queryRaw` with the service's database role. So each process makes a
secret, puts it in the environment its engine inherits (Prisma Client Python spawns
the engine with a copy of `os.environ`) as ``QUERY_ENGINE_TOKEN``, and sends it on
every request in the ``X-Query-Engine-Token`` header, which `http_options()` adds to
the client's `http` options, so whatever transport carries the requests forwards it.
The engine (prisma/src/server.mjs) compares it in constant time and refuses anything
else with 401. Environment files are readable only by their owner (`/proc/<pid>/environ`),
and the token is never on a command line. Prisma's native engine ignores the header.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from typing import Any

TOKEN_ENV = "QUERY_ENGINE_TOKEN"  # noqa: S105 - a variable name, not a secret
TOKEN_HEADER = "X-Query-Engine-Token"  # noqa: S105

_lock = threading.Lock()
_token: tuple[int, str] | None = None


def engine_token() -> str:
    """This process's token, made on first use (and again after a fork), and exported for its engines."""
    global _token
    with _lock:
        if _token is None or _token[0] != os.getpid():
            _token = (os.getpid(), secrets.token_urlsafe(32))
        os.environ[TOKEN_ENV] = _token[1]
        return _token[1]


def http_options(**options: Any) -> dict[str, Any]:
    """`Prisma(http=...)` options that authenticate to the engine, plus `options` (httpx settings)."""
    return {**options, "headers": {TOKEN_HEADER: engine_token()}}


class _NoRequestHeaders(logging.Filter):
    """Prisma logs each request's headers at debug level; those carry the token."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Request headers")


logging.getLogger("prisma.engine._http").addFilter(_NoRequestHeaders())
