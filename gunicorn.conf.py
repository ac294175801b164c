"""gunicorn settings for clerk-sync, all overridable from the environment.

Each worker is a process with its own Prisma client and query engine, connected
after the fork (post_worker_init) and stopped when the worker exits, so SIGTERM
to the master drains requests and leaves no engine behind.

Workers are serving.worker.BufferingWorker: gevent greenlets that read a whole
request before the app runs, so slow clients cost a greenlet, not a thread (see
README, "Production server"). Logs are JSON lines (serving.logs).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

from dotenv import load_dotenv

wsgi_app = "app:create_app()"
bind = [os.environ.get("BIND") or f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"]
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "serving.worker.BufferingWorker"
# Open connections per worker; slow ones are cut at the deadlines in serving.worker.
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "1000"))
# Only for `-k gthread` (bench/servers.py compares it); the gevent worker uses APP_CONCURRENCY.
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
# Also the deadline for a request's head (request line and headers), in seconds.
keepalive = 5
# Request lines come from the app (app.request_log), without tokens or query strings.
accesslog = None
errorlog = "-"
logger_class = "serving.logs.GunicornLogger"
# Behind a load balancer that sets X-Forwarded-For, list its address here.
# gunicorn's control socket lives at one fixed path per user, so replicas on one
# host would fight over it; nothing here uses it.
control_socket_disable = True
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")

# Prometheus multiprocess mode: workers keep their counts in files in METRICS_DIR, else in a
# fresh directory per master (this file is re-read on HUP: keep it). Set before workers import the app.
if os.environ.get("CLERK_SYNC_METRICS_MASTER") != str(os.getpid()):
    metrics_dir = os.environ.get("METRICS_DIR") or tempfile.mkdtemp(prefix="clerk-sync-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    os.environ["CLERK_SYNC_METRICS_MASTER"] = str(os.getpid())


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    """Start this worker's query engine now, so the first request doesn't pay for it."""
    try:
        worker.wsgi.extensions["database"].client()
    except Exception:  # the first request retries the connection, answering 503 meanwhile
        worker.log.exception("could not connect to the database at start-up")


def worker_exit(server, worker):  # type: ignore[no-untyped-def]
    database = getattr(worker, "wsgi", None) and worker.wsgi.extensions.get("database")
    if database is not None:
        database.close()


def _metrics_store():  # type: ignore[no-untyped-def]
    """app/metrics_store.py, loaded by path in the master.

    `from app import ...` would import the whole app (Flask, Prisma, httpx) into the master,
    and every worker forked later would hold those modules from before its gevent patch.
    """
    module = sys.modules.get("clerk_sync_metrics_store")
    if module is None:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "app", "metrics_store.py")
        spec = importlib.util.spec_from_file_location("clerk_sync_metrics_store", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return module


def on_starting(server):  # type: ignore[no-untyped-def]
    # A configuration mistake stops the master here, in one line: failing in every worker
    # instead makes gunicorn print a HaltServer traceback when two workers fail at once.
    # app/config.py is loaded on its own: importing the `app` package here would create
    # this master's metric files (app.metrics) before any worker exists.
    spec = importlib.util.spec_from_file_location(
        "clerk_sync_config", Path(__file__).parent / "app" / "config.py"
    )
    assert spec is not None and spec.loader is not None
    config = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look it up
    spec.loader.exec_module(config)
    load_dotenv()
    try:
        config.Settings.from_env()
    except config.ConfigError as exc:
        server.log.error("configuration error: %s", exc)
        raise SystemExit(4) from None
    if os.environ.get("METRICS_DIR"):  # a server killed outright left its workers' files unfolded
        _metrics_store().fold_dead_processes()


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    """Fold the exited worker's counts into the archive files (app.metrics_store), so none are lost."""
    _metrics_store().fold_dead_process(worker.pid)


def on_exit(server):  # type: ignore[no-untyped-def]
    if not os.environ.get("METRICS_DIR"):
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
