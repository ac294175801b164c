"""Prometheus metrics: the series, and one small named hook per thing measured.

The code being measured calls one of these functions (or wears one of these
decorators) on one line, so instrumentation stays out of its logic. Every label
value is chosen here from a fixed set: nothing from a request (user ids, paths,
event types) becomes a label, so the number of series is bounded.

Under gunicorn each worker is a process of its own; where their values live and
how a scrape adds them up is app.metrics_store.
"""

from __future__ import annotations

import atexit
import functools
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import httpx

MULTIPROC_DIR_VAR = "PROMETHEUS_MULTIPROC_DIR"
# Set before prometheus_client is imported, which reads it once. gunicorn.conf.py sets it for
# the server; a `flask clerk` job with METRICS_DIR writes into the server's directory too.
if os.environ.get("METRICS_DIR") and not os.environ.get(MULTIPROC_DIR_VAR):
    os.environ[MULTIPROC_DIR_VAR] = os.environ["METRICS_DIR"]
if os.environ.get(MULTIPROC_DIR_VAR):
    os.makedirs(os.environ[MULTIPROC_DIR_VAR], exist_ok=True)

from prometheus_client import Counter, Gauge, Histogram  # noqa: E402

from . import metrics_store  # noqa: E402

if TYPE_CHECKING:
    from flask import Flask, Response

    from .config import Settings

F = TypeVar("F", bound=Callable[..., Any])

# Seconds; from a fast engine round trip (~1 ms) up to the engine's 20 s request timeout.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0)

SOURCES = frozenset({"after_login", "webhook", "backfill", "reconcile"})
OUTCOMES = frozenset(
    {"created", "updated", "unchanged", "deleted", "ignored_deleted", "ignored", "duplicate"}
)
WEBHOOK_EVENT_TYPES = frozenset({"user.created", "user.updated", "user.deleted"})
METHODS = frozenset({"GET", "HEAD", "POST", "OPTIONS"})
OTHER = "other"

USER_SYNCS = Counter(
    "clerk_sync_user_syncs_total",
    "Users synced into the User table, by where the snapshot came from and what storing it did.",
    ["source", "outcome"],
)
WEBHOOK_EVENTS = Counter(
    "clerk_sync_webhook_events_total",
    "Verified webhook deliveries by event type (types clerk-sync does not handle count as 'other').",
    ["event_type"],
)
HTTP_REQUEST_DURATION = Histogram(
    "clerk_sync_http_request_duration_seconds",
    "Time to handle a request, by route rule, method and status class.",
    ["route", "method", "status_class"],
    buckets=LATENCY_BUCKETS,
)
HTTP_IN_FLIGHT = Gauge(
    "clerk_sync_http_requests_in_flight",
    "Requests being handled right now, over all workers.",
    multiprocess_mode="livesum",
)
CLERK_API_DURATION = Histogram(
    "clerk_sync_clerk_api_request_duration_seconds",
    "Calls to Clerk's Backend API by operation and result, with their latency.",
    ["operation", "result"],
    buckets=LATENCY_BUCKETS,
)
TOKEN_REJECTIONS = Counter(
    "clerk_sync_session_token_rejections_total",
    "Session tokens turned away at /after-login, by error code.",
    ["code"],
)
JWKS_FETCHES = Counter(
    "clerk_sync_jwks_fetches_total",
    "Fetches of Clerk's JWKS by result: ok, unavailable (retryable) or refused.",
    ["result"],
)
ENGINE_DURATION = Histogram(
    "clerk_sync_engine_request_duration_seconds",
    "Round trips to the Prisma query engine (and through it the database), by engine operation.",
    ["operation"],
    buckets=LATENCY_BUCKETS,
)
DATABASE_FAILURES = Counter(
    "clerk_sync_database_failures_total",
    "Database or engine failures seen by a request, by class: transient (retrying may work) or permanent.",
    ["class"],
)

_enabled = True


def init_app(app: Flask, settings: Settings) -> None:
    """Turn recording on or off (METRICS_ENABLED), time every request and serve /metrics."""
    global _enabled
    _enabled = settings.metrics_enabled
    from .views import metrics as view

    app.register_blueprint(view.bp)
    if not _enabled:
        return
    if metrics_store.multiprocess_dir() and "CLERK_SYNC_METRICS_MASTER" not in os.environ:
        # Not a gunicorn worker (whose master folds it): a `flask clerk` job folds itself.
        atexit.register(metrics_store.fold_dead_process, os.getpid())
    app.wsgi_app = _InFlight(app.wsgi_app)  # type: ignore[method-assign]
    app.before_request(_start_timer)
    app.after_request(_observe_request)


# --- Requests ----------------------------------------------------------------------------------


class _InFlight:
    """WSGI middleware: counts requests in flight, also those that end in an error."""

    def __init__(self, wsgi_app: Callable[..., Any]) -> None:
        self._wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        HTTP_IN_FLIGHT.inc()
        try:
            return self._wsgi_app(environ, start_response)
        finally:
            HTTP_IN_FLIGHT.dec()


def _start_timer() -> None:
    from flask import g

    g.metrics_started = time.perf_counter()


def _observe_request(response: Response) -> Response:
    from flask import g, request

    started = g.get("metrics_started")
    if started is not None:
        # The rule (e.g. "/webhooks/clerk"), never the raw path: unmatched paths share one label.
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        method = request.method if request.method in METHODS else OTHER
        status_class = f"{response.status_code // 100}xx"
        HTTP_REQUEST_DURATION.labels(route, method, status_class).observe(time.perf_counter() - started)
    return response


# --- Sync outcomes -----------------------------------------------------------------------------


def user_synced(source: str, outcome: str) -> None:
    """One user snapshot or deletion stored (or judged unchanged) by `source`."""
    if _enabled:
        USER_SYNCS.labels(source if source in SOURCES else OTHER, _outcome(outcome)).inc()


def webhook_applied(event_type: str, status: str, outcome: str) -> None:
    """A verified delivery went through: `status` "duplicate" counts as the outcome `duplicate`."""
    if _enabled:
        WEBHOOK_EVENTS.labels(event_type if event_type in WEBHOOK_EVENT_TYPES else OTHER).inc()
        USER_SYNCS.labels("webhook", "duplicate" if status == "duplicate" else _outcome(outcome)).inc()


def _outcome(outcome: str) -> str:
    return outcome if outcome in OUTCOMES else OTHER


# --- Clerk -------------------------------------------------------------------------------------


def clerk_call(get: F) -> F:
    """Decorates `ClerkAPI._get(self, path, ...)`: times each call and labels its result."""

    @functools.wraps(get)
    def timed(self: Any, path: str, *args: Any, **kwargs: Any) -> Any:
        if not _enabled:
            return get(self, path, *args, **kwargs)
        started, result = time.perf_counter(), "ok"
        try:
            return get(self, path, *args, **kwargs)
        except Exception as exc:
            result = _clerk_result(exc)
            raise
        finally:
            CLERK_API_DURATION.labels(_clerk_operation(path), result).observe(time.perf_counter() - started)

    return timed  # type: ignore[return-value]


def _clerk_operation(path: str) -> str:
    if path == "/v1/jwks":
        return "get_jwks"
    if path == "/v1/users":
        return "list_users"
    if path == "/v1/users/count":
        return "count_users"
    if path.startswith("/v1/users/"):
        return "get_user"
    return OTHER


def _clerk_result(exc: BaseException) -> str:
    status = getattr(exc, "status_code", None)
    if status in (401, 404, 429):
        return str(status)
    if isinstance(status, int):
        return "5xx" if status >= 500 else "4xx"
    if isinstance(exc.__cause__, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc.__cause__, httpx.TransportError):
        return "unreachable"
    return "error"


def token_rejected(code: str) -> None:
    if _enabled:
        TOKEN_REJECTIONS.labels(code).inc()


def jwks_fetch(refresh: F) -> F:
    """Decorates the JWKS cache's refresh: counts each fetch by result."""

    @functools.wraps(refresh)
    def counted(*args: Any, **kwargs: Any) -> Any:
        try:
            value = refresh(*args, **kwargs)
        except Exception as exc:
            if _enabled:
                from .clerk.api import ClerkUnavailable

                JWKS_FETCHES.labels("unavailable" if isinstance(exc, ClerkUnavailable) else "refused").inc()
            raise
        if _enabled:
            JWKS_FETCHES.labels("ok").inc()
        return value

    return counted  # type: ignore[return-value]


# --- Database ----------------------------------------------------------------------------------


def time_engine(client: Any) -> None:
    """Time each round trip of a connected Prisma client to its engine (transactions share it).

    Wraps the engine's HTTP session, whichever it is (prisma's httpx one or another with
    the same `request(method, url, ...)`), so the timing doesn't depend on the transport.
    """
    engine = client._engine
    if _enabled and engine is not None and not isinstance(engine.session, _TimedEngineSession):
        engine.session = _TimedEngineSession(engine.session)


class _TimedEngineSession:
    def __init__(self, session: Any) -> None:
        self._session = session

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        started = time.perf_counter()
        response = self._session.request(method, url, **kwargs)
        operation = _engine_operation(urlsplit(url).path)
        ENGINE_DURATION.labels(operation).observe(time.perf_counter() - started)
        return response

    def __getattr__(self, name: str) -> Any:  # close(), closed, should_close(), ...
        return getattr(self._session, name)


def _engine_operation(path: str) -> str:
    if path in ("", "/"):
        return "query"
    if path == "/transaction/start":
        return "start_transaction"
    if path.startswith("/transaction/"):
        return path.rsplit("/", 1)[-1] if path.endswith(("/commit", "/rollback")) else OTHER
    return "status" if path == "/status" else OTHER


def database_failure(exc: BaseException) -> None:
    """A request gave up on the database: count it as transient or permanent."""
    if _enabled:
        DATABASE_FAILURES.labels(database_failure_class(exc)).inc()


def database_failure_class(exc: BaseException) -> str:
    """`transient` when a retry may succeed (answered 503), else `permanent`: `db_errors` decides."""
    from .db_errors import classify

    return "transient" if classify(exc).retryable else "permanent"
