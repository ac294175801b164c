"""gunicorn settings for clerk-sync, all overridable from the environment.

Each worker is a process with its own Prisma client and query engine, connected
after the fork (post_worker_init) and stopped when the worker exits, so SIGTERM
to the master drains requests and leaves no engine behind.

Workers are serving.worker.BufferingWorker: gevent greenlets that read a whole
request before the app runs, so slow clients cost a greenlet, not a thread (see
README, "Production server"). Logs are JSON lines (serving.logs).
"""

from __future__ import annotations

import os

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
