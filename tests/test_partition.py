"""A silent network partition between the engine and PostgreSQL heals without a restart.

A real TCP proxy sits between the app's query engine and PostgreSQL. Mid-stream
of signed webhooks it blackholes every connection for 20 s: sockets stay open,
no byte passes, nobody learns of a close (a dead NAT, a failed-over compute).
Deliveries that fail are redelivered with the same svix-id, as Svix does. After
the restore, every delivery must succeed within 60 s and /healthz answer 200 from
the same engine process; and at no time may a session sit idle in a transaction
on the server past its timeout, holding its user's lock.

The engine's timeouts are shortened through their environment variables and URL
parameters (README, "Configuration") so the test runs in about a minute.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from flask import Flask

from app import create_app
from app.config import Settings
from prisma_engines.migrations import MIGRATIONS_DIR, apply_migrations
from tests.conftest import WEBHOOK_SECRET, serve_app, sign_webhook
from tests.fakeclerk import build_clerk_user
from tests.tcpproxy import TcpProxy, via_local_port

IDLE_IN_TRANSACTION_TIMEOUT = 3.0
TIMEOUT_ENV = {
    "DATABASE_STATEMENT_TIMEOUT": "3",
    "DATABASE_LOCK_TIMEOUT": "2",
    "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT": str(IDLE_IN_TRANSACTION_TIMEOUT),
}
URL_TIMEOUTS = "connect_timeout=2&pool_timeout=2&socket_timeout=4"
BLACKHOLE_SECONDS = 20.0
HEAL_WITHIN = 60.0
USERS = 12  # fewer users than deliveries: several writers queue on each user's lock


@dataclass
class Delivery:
    msg_id: str
    body: str
    user_id: str
    updated_at: int
    attempts: list[tuple[float, int]] = field(default_factory=list)
    """(monotonic time, status) of each attempt; status 0 is a transport failure."""

    @property
    def succeeded(self) -> bool:
        return any(status == 200 for _, status in self.attempts)


def make_delivery(user_id: str, updated_at: int) -> Delivery:
    user = build_clerk_user(user_id, first_name=f"v{updated_at}", updated_at=updated_at)
    body = json.dumps({"type": "user.updated", "object": "event", "data": user})
    return Delivery(f"msg_{uuid.uuid4().hex}", body, user_id, updated_at)


def send(client: httpx.Client, delivery: Delivery) -> int:
    # A redelivery is signed afresh, with the same svix-id, as Svix does.
    headers = sign_webhook(delivery.body, msg_id=delivery.msg_id, secret=WEBHOOK_SECRET)
    try:
        status = client.post("/webhooks/clerk", content=delivery.body, headers=headers).status_code
    except httpx.TransportError:
        status = 0
    delivery.attempts.append((time.monotonic(), status))
    return status


class IdleInTransactionWatch:
    """Samples pg_stat_activity for the test database: the longest any session sat idle in a transaction."""

    def __init__(self, url: str, dbname: str) -> None:
        self._url, self._dbname = url, dbname
        self.longest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> IdleInTransactionWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with psycopg.connect(self._url, autocommit=True) as conn:
            while not self._stop.wait(0.25):
                row = conn.execute(
                    "SELECT coalesce(max(extract(epoch FROM now() - state_change)), 0) FROM pg_stat_activity"
                    " WHERE datname = %s AND state LIKE 'idle in transaction%%'",
                    (self._dbname,),
                ).fetchone()
                self.longest = max(self.longest, float(row[0]) if row else 0.0)


def engine_pid(app: Flask) -> int:
    return int(app.extensions["database"].client()._engine.process.pid)


def until(deadline: float, condition: Callable[[], bool], pause: float = 0.25) -> bool:
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(pause)
    return condition()


def test_a_blackholed_database_heals_without_a_restart(
    database_factory: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in TIMEOUT_ENV.items():
        monkeypatch.setenv(name, value)  # the engine reads them from the environment it inherits
    url = database_factory("partition")
    apply_migrations(url, MIGRATIONS_DIR)
    dbname = urlsplit(url).path.lstrip("/")
    users = [f"user_part{i}" for i in range(USERS)]
    deliveries: list[Delivery] = []
    lock = threading.Lock()
    version = iter(range(1_700_000_000_000, 1_800_000_000_000))

    with TcpProxy(("127.0.0.1", 5432)) as proxy:
        app = create_app(
            Settings(
                database_url=via_local_port(url, proxy.port, URL_TIMEOUTS),
                clerk_webhook_signing_secret=WEBHOOK_SECRET,
            )
        )
        try:
            with (
                serve_app(app) as base,
                IdleInTransactionWatch(url, dbname) as watch,
                ThreadPoolExecutor(max_workers=8) as pool,
            ):
                client = httpx.Client(base_url=base, timeout=60, limits=httpx.Limits(max_connections=16))
                assert client.get("/healthz").status_code == 200
                pid = engine_pid(app)
                stop_new = threading.Event()

                def stream(worker: int) -> None:
                    # New events round-robin over the users, until told to stop.
                    i = 0
                    while not stop_new.is_set():
                        with lock:
                            delivery = make_delivery(users[(worker + i) % USERS], next(version))
                            deliveries.append(delivery)
                        send(client, delivery)
                        i += 1

                streams = [pool.submit(stream, w) for w in range(6)]
                time.sleep(3)
                proxy.blackhole()
                blackholed_at = time.monotonic()
                time.sleep(BLACKHOLE_SECONDS)
                proxy.restore()
                restored_at = time.monotonic()
                time.sleep(5)  # new events keep arriving after the restore too
                stop_new.set()
                for future in streams:
                    future.result()

                # Svix redelivers whatever got no 2xx, until it does.
                deadline = restored_at + HEAL_WITHIN
                while time.monotonic() < deadline:
                    pending = [d for d in deliveries if not d.succeeded]
                    if not pending:
                        break
                    list(pool.map(lambda d: send(client, d), pending))
                    time.sleep(0.5)
                healed = [d for d in deliveries if not d.succeeded] == []
                healthy = until(deadline, lambda: client.get("/healthz").status_code == 200)
                client.close()

            tried = sum(len(d.attempts) for d in deliveries)
            server_errors = sum(1 for d in deliveries for _, status in d.attempts if status >= 500)
            failed_during = sum(
                1 for d in deliveries for t, s in d.attempts if s != 200 and blackholed_at <= t <= restored_at
            )
            successes = sorted(t for d in deliveries for t, status in d.attempts if status == 200)
            first_ok = next((t - restored_at for t in successes if t >= restored_at), float("nan"))
            failures = [t for d in deliveries for t, status in d.attempts if status != 200]
            last_failure = max(failures, default=restored_at) - restored_at
            print(
                f"\nblackhole {BLACKHOLE_SECONDS:.0f} s: {len(deliveries)} deliveries, {tried} requests,"
                f" {server_errors} answered 5xx ({failed_during} during the blackhole),"
                f" {sum(1 for d in deliveries if not d.succeeded)} never applied;"
                f" after the restore: first success {first_ok:.1f} s, last failure {last_failure:.1f} s;"
                f" longest idle in transaction {watch.longest:.1f} s"
            )
            assert healed, "some deliveries were still failing 60 s after the restore"
            assert healthy, "/healthz did not answer 200 within 60 s of the restore"
            assert engine_pid(app) == pid, "the engine was restarted"
            assert failed_during > 0, "the blackhole did not reach the database traffic"
            assert watch.longest <= IDLE_IN_TRANSACTION_TIMEOUT + 2.0
            assert_rows_match(url, deliveries)
        finally:
            app.extensions["database"].close()


def assert_rows_match(url: str, deliveries: list[Delivery]) -> None:
    """Every delivery recorded once, and each user holds its newest snapshot."""
    with psycopg.connect(url) as conn:
        recorded = {row[0] for row in conn.execute('SELECT "svixId" FROM "WebhookDelivery"')}
        stored = dict(conn.execute('SELECT "clerkId", "firstName" FROM "User"').fetchall())
    assert recorded == {d.msg_id for d in deliveries}
    newest: dict[str, int] = {}
    for d in deliveries:
        newest[d.user_id] = max(newest.get(d.user_id, 0), d.updated_at)
    assert stored == {user: f"v{at}" for user, at in newest.items()}
