"""A total deadline on calls to Clerk, however slowly Clerk sends its bytes.

httpx's timeouts bound each socket operation, not the call: a Clerk (or a proxy)
that trickles one byte every few seconds never trips a read timeout, and held a
login for 42 s with a 5 s timeout. Here every connect, read and write is given
at most the time left until the caller's deadline, and fails once it has passed,
so a call, or a group of calls (one login), ends by its deadline.

    with deadline(5.0):
        api.get_user(user_id)  # raises ClerkUnavailable after 5 s in all

The deadline is a context variable, so each thread or greenlet (each request) has its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import httpcore
import httpx
from httpx._utils import get_environment_proxies  # private, but the reader httpx.Client() itself uses

__all__ = ["DeadlineTransport", "deadline", "new_client", "remaining"]

_DEADLINE: ContextVar[float | None] = ContextVar("clerk_deadline", default=None)


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Calls to Clerk inside the block end within `seconds` from now (or an outer, earlier deadline)."""
    outer = _DEADLINE.get()
    mine = time.monotonic() + seconds
    token = _DEADLINE.set(mine if outer is None else min(outer, mine))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def remaining() -> float | None:
    """Seconds left before the current deadline; None without one."""
    current = _DEADLINE.get()
    return None if current is None else current - time.monotonic()


def _clamp(timeout: float | None, expired: type[Exception]) -> float | None:
    left = remaining()
    if left is None:
        return timeout
    if left <= 0:
        raise expired("the deadline for this call to Clerk has passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _clamp(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        tls = self._inner.start_tls(ssl_context, server_hostname, _clamp(timeout, httpcore.ConnectTimeout))
        return _DeadlineStream(tls)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        timeout = _clamp(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_tcp(host, port, timeout, local_address, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class DeadlineTransport(httpx.HTTPTransport):
    """httpx's own transport, on a network backend that honours `deadline()`.

    httpx has no public way to pass httpcore a network backend, so the pool (or
    the HTTP proxy, when `proxy` is given) is rebuilt as httpx builds it, with that
    backend (httpx 0.28 is pinned; tests trickle bytes through it, so a change here
    fails loudly).
    """

    def __init__(self, *, proxy: str | None = None) -> None:
        limits = httpx.Limits()
        super().__init__(limits=limits)
        self._pool.close()
        options: dict[str, Any] = {
            "ssl_context": httpx.create_ssl_context(),
            "max_connections": limits.max_connections,
            "max_keepalive_connections": limits.max_keepalive_connections,
            "keepalive_expiry": limits.keepalive_expiry,
            "network_backend": _DeadlineBackend(),
        }
        if proxy is None:
            self._pool = httpcore.ConnectionPool(**options)
            return
        via = httpx.Proxy(proxy)
        self._pool = httpcore.HTTPProxy(
            proxy_url=httpcore.URL(
                scheme=via.url.raw_scheme, host=via.url.raw_host, port=via.url.port, target=via.url.raw_path
            ),
            proxy_auth=via.raw_auth,
            proxy_headers=via.headers.raw,
            proxy_ssl_context=via.ssl_context,
            **options,
        )


def new_client() -> httpx.Client:
    """An httpx client whose every call honours `deadline()`, using the environment's
    HTTP(S)_PROXY and NO_PROXY the way `httpx.Client()` would."""
    # httpx reads the environment only when no transport is given, so the same map is
    # built here (from httpx's own reader) with a deadline transport for every entry.
    mounts: dict[str, httpx.BaseTransport | None] = {}
    for pattern, proxy in get_environment_proxies().items():
        if proxy is not None and not proxy.startswith(("http://", "https://")):
            mounts[pattern] = httpx.HTTPTransport(proxy=proxy)  # SOCKS: per-read timeouts only
        else:
            mounts[pattern] = DeadlineTransport(proxy=proxy) if proxy else DeadlineTransport()
    return httpx.Client(transport=DeadlineTransport(), mounts=mounts)
