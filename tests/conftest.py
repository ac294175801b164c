"""Fixtures shared by every test: a real PostgreSQL server and throwaway databases on it."""

from __future__ import annotations

import base64
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import httpx
import psycopg
import pytest
from flask import Flask
from prisma import Prisma
from svix.webhooks import Webhook
from werkzeug.serving import make_server

from app import create_app
from app.config import Settings
from prisma_engines import localdb, migrations
from prisma_engines.migrations import MIGRATIONS_DIR
from tests.fakeclerk import DEFAULT_AZP, FakeClerk

if TYPE_CHECKING:
    from tests.webhook_events import Store


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """Base URL of the PostgreSQL server the tests may create databases on.

    ``TEST_POSTGRES_URL`` picks one; otherwise the local one the README commands use.
    """
    return os.environ.get("TEST_POSTGRES_URL") or localdb.server_url()


@pytest.fixture(scope="session")
def database_factory(postgres_server: str) -> Iterator[Callable[[str], str]]:
    """Creates uniquely named databases and drops them all at the end of the session."""
    created: list[str] = []

    def create(prefix: str) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        localdb.create_database(postgres_server, name)
        created.append(name)
        return localdb.database_url(postgres_server, name)

    yield create
    for name in created:
        localdb.drop_database(postgres_server, name)


@pytest.fixture
def new_db(postgres_server: str, request: pytest.FixtureRequest) -> Iterator[Callable[[], str]]:
    """Databases for one test, named after its module, dropped after it whether it passed or not."""
    module = request.module.__name__.rsplit(".", 1)[-1]
    created: list[str] = []

    def create() -> str:
        name = f"{module}_{uuid.uuid4().hex[:12]}"
        created.append(name)
        localdb.create_database(postgres_server, name)
        return localdb.database_url(postgres_server, name)

    yield create
    for name in created:
        localdb.drop_database(postgres_server, name)


# --- The application, served over real HTTP ----------------------------------------------------

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"clerk-sync test webhook secret!!").decode()
FRONTEND_ORIGIN = DEFAULT_AZP


@pytest.fixture(scope="session")
def app_database_url(database_factory: Callable[[str], str]) -> str:
    """A database migrated the way production is, shared by the app tests."""
    url = database_factory("clerk_sync")
    migrations.apply_migrations(url, MIGRATIONS_DIR)
    return url


@pytest.fixture(scope="session")
def fake_clerk() -> Iterator[FakeClerk]:
    with FakeClerk() as fake:
        yield fake


@pytest.fixture(scope="session")
def settings(app_database_url: str, fake_clerk: FakeClerk) -> Settings:
    return Settings(
        database_url=app_database_url,
        clerk_api_url=fake_clerk.url,
        clerk_secret_key=fake_clerk.secret_key,
        clerk_authorized_parties=(FRONTEND_ORIGIN,),
        clerk_webhook_signing_secret=WEBHOOK_SECRET,
        clerk_timeout=1.0,
    )


@pytest.fixture(scope="session")
def app(settings: Settings) -> Iterator[Flask]:
    app = create_app(settings)
    yield app
    app.extensions["database"].close()


@pytest.fixture(scope="session")
def live_server(app: Flask) -> Iterator[str]:
    """The app on a real socket, with a thread per request like a threaded production server."""
    with serve_app(app) as url:
        yield url


@contextmanager
def serve_app(app: Flask) -> Iterator[str]:
    """`app` on a real socket with a thread per request, like the `live_server` fixture; its URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


@pytest.fixture
def http(live_server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server, timeout=30) as client:
        yield client


@pytest.fixture
def db(app: Flask, app_database_url: str, fake_clerk: FakeClerk) -> Prisma:
    """The app's Prisma client, on empty tables, with a healthy fake Clerk."""
    fake_clerk.heal()
    with psycopg.connect(app_database_url, autocommit=True) as conn:
        conn.execute('TRUNCATE "User", "WebhookDelivery"')
    return app.extensions["database"].client()


def sign_webhook(
    body: bytes | str, *, msg_id: str | None = None, secret: str = WEBHOOK_SECRET, at: datetime | None = None
) -> dict[str, str]:
    """Svix headers for `body`, signed with svix's own `Webhook.sign`."""
    text = body.decode() if isinstance(body, bytes) else body
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    at = at or datetime.now(UTC)
    return {
        "svix-id": msg_id,
        "svix-timestamp": str(int(at.timestamp())),
        "svix-signature": Webhook(secret).sign(msg_id, at, text),
        "content-type": "application/json",
    }


# --- Webhook tests (tests/webhook_events.py) ----------------------------------------------------


@pytest.fixture
def store(db: Prisma, app_database_url: str) -> Store:
    """The shared app's database, on empty tables (the `db` fixture empties them)."""
    from tests.webhook_events import Store  # not at the top: that module imports this one

    return Store(app_database_url)


@pytest.fixture
def base_url(http: httpx.Client) -> str:
    return str(http.base_url).rstrip("/")
