"""Database failures are told apart by code: transient ones are 503, permanent ones are not.

Every failure here is provoked on the real PostgreSQL through the real client and
engine: a constraint the row can never meet, an index row too large, too many
connections for the role, a deadlock, a statement timeout, an unreachable server.
A database role limited to 3 connections must make webhooks wait for a free
connection (within a bound), not fail.
"""

from __future__ import annotations

import json
import secrets
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
from flask import Flask
from prisma import Prisma
from werkzeug.serving import make_server

from app import create_app
from app.config import Settings
from app.db import DATABASE_ERRORS, Database
from app.db_errors import Verdict, classify
from prisma_engines.migrations import MIGRATIONS_DIR, apply_migrations
from tests.conftest import FRONTEND_ORIGIN, WEBHOOK_SECRET, sign_webhook
from tests.fakeclerk import FakeClerk, build_clerk_user

REFUSED_NAME = "refused-by-a-check"


@pytest.fixture(scope="module")
def own_database(database_factory: Callable[[str], str]) -> str:
    """A database of this module's own, whose User table refuses one first name (a CHECK constraint)."""
    url = database_factory("dberrors")
    apply_migrations(url, MIGRATIONS_DIR)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"""ALTER TABLE "User" ADD CONSTRAINT refuse CHECK ("firstName" <> '{REFUSED_NAME}')""")
    return url


@contextmanager
def served(settings: Settings) -> Iterator[tuple[Flask, httpx.Client]]:
    app = create_app(settings)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.server_port}", timeout=60) as client:
            yield app, client
    finally:
        server.shutdown()
        thread.join()
        app.extensions["database"].close()


def webhook(client: httpx.Client, user: dict[str, object], msg_id: str | None = None) -> httpx.Response:
    body = json.dumps({"type": "user.created", "object": "event", "data": user})
    return client.post("/webhooks/clerk", content=body, headers=sign_webhook(body, msg_id=msg_id))


def rows(url: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def error_of(call: Callable[[], object]) -> BaseException:
    try:
        call()
    except DATABASE_ERRORS as exc:
        return exc
    raise AssertionError("the call did not fail")


# --- over HTTP -------------------------------------------------------------------------------------


def test_a_payload_the_database_refuses_is_400_for_webhooks_and_500_for_after_login(
    own_database: str, fake_clerk: FakeClerk, capfd: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(
        database_url=own_database,
        clerk_api_url=fake_clerk.url,
        clerk_secret_key=fake_clerk.secret_key,
        clerk_authorized_parties=(FRONTEND_ORIGIN,),
        clerk_webhook_signing_secret=WEBHOOK_SECRET,
    )
    with served(settings) as (_, client):
        refused = build_clerk_user(f"user_{uuid.uuid4().hex}", first_name=REFUSED_NAME)
        msg_id = f"msg_{uuid.uuid4().hex}"
        for _ in range(2):  # a redelivery is refused the same way: retrying can't help
            response = webhook(client, refused, msg_id)
            assert response.status_code == 400, response.text
            assert response.json()["error"]["code"] == "invalid_payload"
            assert "23514" in response.json()["error"]["message"]
        assert "refused by the database: 23514" in capfd.readouterr().err  # logged with its code
        # Nothing half-written: neither the user nor the delivery record.
        assert rows(own_database, 'SELECT 1 FROM "User" WHERE "clerkId" = %s', refused["id"]) == []
        assert rows(own_database, 'SELECT 1 FROM "WebhookDelivery" WHERE "svixId" = %s', msg_id) == []

        fake_clerk.add_user(str(refused["id"]), first_name=REFUSED_NAME)
        token = fake_clerk.mint_token(str(refused["id"]))
        response = client.post("/after-login", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 500, response.text
        assert response.json()["error"]["code"] == "database_error"

        # The same app still writes what the database accepts.
        assert webhook(client, build_clerk_user(f"user_{uuid.uuid4().hex}")).status_code == 200
        assert client.get("/healthz").status_code == 200


def test_too_many_connections_is_503(own_database: str, limited_role: Callable[[int], str]) -> None:
    url = limited_role(0) + "?pool_timeout=2"  # no connection allowed at all: every attempt gets 53300
    with served(Settings(database_url=url, clerk_webhook_signing_secret=WEBHOOK_SECRET)) as (_, client):
        response = webhook(client, build_clerk_user(f"user_{uuid.uuid4().hex}"))
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "database_unavailable"
        assert client.get("/healthz").status_code == 503


def test_webhooks_queue_for_a_free_connection_when_the_role_allows_three(
    own_database: str, limited_role: Callable[[int], str]
) -> None:
    # The engine's pool would open up to 2 x CPUs + 1 connections; the role allows 3.
    url = limited_role(3)
    with served(Settings(database_url=url, clerk_webhook_signing_secret=WEBHOOK_SECRET)) as (_, client):
        users = [build_clerk_user(f"user_{uuid.uuid4().hex}") for _ in range(48)]
        with ThreadPoolExecutor(max_workers=16) as pool:
            statuses = list(pool.map(lambda user: webhook(client, user).status_code, users))
    assert statuses.count(200) == len(users), statuses
    stored = rows(own_database, 'SELECT 1 FROM "User" WHERE "clerkId" = ANY(%s)', [u["id"] for u in users])
    assert len(stored) == len(users)


@pytest.fixture
def limited_role(own_database: str) -> Iterator[Callable[[int], str]]:
    """Makes a login role with a connection limit and full rights on the tables; returns its URL."""
    made: list[str] = []

    def make(limit: int) -> str:
        role = f"limited_{secrets.token_hex(4)}"
        with psycopg.connect(own_database, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT {limit}")
            conn.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        made.append(role)
        parts = urlsplit(own_database)
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit((parts.scheme, f"{role}@{host}", parts.path, parts.query, ""))

    yield make
    with psycopg.connect(own_database, autocommit=True) as conn:
        for role in made:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


# --- the classifier, on errors provoked through the real client ------------------------------------


@pytest.fixture(scope="module")
def client(own_database: str) -> Iterator[Prisma]:
    database = Database(own_database)
    yield database.client()
    database.close()


def test_permanent_failures_are_rejected(client: Prisma) -> None:
    too_big = secrets.token_hex(1600)  # 3,200 incompressible characters: over btree's row size
    cases = {
        "54000": lambda: client.user.create(data={"clerkId": too_big}),
        "23514": lambda: client.user.create(data={"clerkId": "u-check", "firstName": REFUSED_NAME}),
        "22P02": lambda: client.query_raw("SELECT 'not a number'::int"),
    }
    for code, call in cases.items():
        failure = classify(error_of(call))
        assert (failure.verdict, failure.code) == (Verdict.REJECTED, code)


def test_statement_and_lock_timeouts_are_transient(
    own_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_STATEMENT_TIMEOUT", "1")  # read by the engine this Database starts
    monkeypatch.setenv("DATABASE_LOCK_TIMEOUT", "0.5")
    database = Database(own_database)
    try:
        client = database.client()
        timed_out = classify(error_of(lambda: client.execute_raw("SELECT pg_sleep(30)")))
        assert (timed_out.verdict, timed_out.code) == (Verdict.TRANSIENT, "57014")
        with psycopg.connect(own_database) as holder:
            holder.execute("SELECT pg_advisory_xact_lock(33)")
            waited = classify(error_of(lambda: client.execute_raw("SELECT pg_advisory_xact_lock(33)")))
        assert (waited.verdict, waited.code) == (Verdict.TRANSIENT, "55P03")
    finally:
        database.close()


def test_deadlocks_are_transient(client: Prisma) -> None:
    managers = (client.tx(), client.tx())
    first, second = (manager.start() for manager in managers)
    try:
        first.execute_raw("SELECT pg_advisory_xact_lock(11)")
        second.execute_raw("SELECT pg_advisory_xact_lock(22)")
        outcomes: list[BaseException | None] = []

        def cross() -> None:
            try:
                first.execute_raw("SELECT pg_advisory_xact_lock(22)")
                outcomes.append(None)
            except DATABASE_ERRORS as exc:
                outcomes.append(exc)

        thread = threading.Thread(target=cross)
        thread.start()
        try:
            second.execute_raw("SELECT pg_advisory_xact_lock(11)")
            outcomes.append(None)
        except DATABASE_ERRORS as exc:
            outcomes.append(exc)
        thread.join()
    finally:
        for manager in managers:
            with suppress(DATABASE_ERRORS):
                manager.rollback()
    deadlocks = [classify(exc) for exc in outcomes if exc is not None]
    assert [(f.verdict, f.code) for f in deadlocks] == [(Verdict.TRANSIENT, "40P01")]


def test_an_unreachable_database_is_transient() -> None:
    database = Database("postgresql://postgres@127.0.0.1:1/none?connect_timeout=2")
    try:
        client = database.client()
        calls = (client.user.find_first, lambda: client.tx().start(), lambda: client.execute_raw("SELECT 1"))
        for call in calls:
            assert classify(error_of(call)).verdict is Verdict.TRANSIENT
    finally:
        database.close()
