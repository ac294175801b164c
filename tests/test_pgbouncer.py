"""Behind PgBouncer in transaction mode, as behind Neon's pooled endpoint: a real PgBouncer
between the engine and PostgreSQL, with the service's default settings.

PgBouncer refuses the server-side timeouts as startup parameters; the engine then
connects without them (the role's settings apply) instead of failing every request.
Transaction pooling hands each transaction any server connection, which the per-user
lock (transaction-scoped) and the one-batch writes are built for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import psycopg
import pytest

from app import create_app
from app.config import Settings
from prisma_engines.migrations import MIGRATIONS_DIR, apply_migrations, run_prisma
from tests.conftest import WEBHOOK_SECRET, serve_app
from tests.pgbouncer import pgbouncer
from tests.tcpproxy import via_local_port
from tests.webhook_events import CREATED_AT, Event, Store, Version, assert_delivery, deliver, storm


@pytest.fixture
def pooled(postgres_server: str, database_factory: Callable[[str], str]) -> Iterator[tuple[str, Store]]:
    """A served app whose DATABASE_URL is a PgBouncer (pool of 3 server connections); its database."""
    url = database_factory("clerk_sync_pgbouncer")
    apply_migrations(url, MIGRATIONS_DIR)  # migrations go direct (DIRECT_URL), as Prisma requires
    with pgbouncer(postgres_server, pool_size=3) as port:
        settings = Settings(
            database_url=via_local_port(url, port), clerk_webhook_signing_secret=WEBHOOK_SECRET
        )
        app = create_app(settings)
        try:
            with serve_app(app) as base_url:
                yield base_url, Store(url)
        finally:
            app.extensions["database"].close()


def test_webhooks_work_behind_pgbouncer_with_the_default_settings(
    pooled: tuple[str, Store], capfd: pytest.CaptureFixture[str]
) -> None:
    base_url, store = pooled
    created = Event.snapshot("user.created", Version("user_pooled", CREATED_AT))
    updated = Event.snapshot("user.updated", Version("user_pooled", CREATED_AT + 5, first_name="New"))
    with httpx.Client(base_url=base_url, timeout=30) as client:
        assert client.get("/healthz").status_code == 200
        for event in (created, updated, created):  # the last one: a redelivery
            assert deliver(client, event).status_code == 200
    assert store.users() == {"user_pooled": Version("user_pooled", CREATED_AT + 5, first_name="New").row()}
    assert_delivery(store, created, "created", "user_pooled")
    assert_delivery(store, updated, "updated", "user_pooled")
    # The engine (a child process, writing to the inherited stderr) said so, once.
    warnings = [line for line in capfd.readouterr().err.splitlines() if "refuses statement_timeout" in line]
    assert len(warnings) == 1, warnings
    assert "ALTER ROLE" in warnings[0]


def test_transaction_pooling_keeps_one_effect_per_delivery(pooled: tuple[str, Store]) -> None:
    """32 copies of one delivery at once, over 3 pooled server connections: one row, one record."""
    base_url, store = pooled
    event = Event.snapshot("user.created", Version("user_pooled_storm", CREATED_AT))
    statuses = sorted(response.status_code for response in storm(base_url, event, copies=32))
    assert statuses == [200] * 32
    assert store.users() == {"user_pooled_storm": Version("user_pooled_storm", CREATED_AT).row()}
    assert set(store.deliveries()) == {event.msg_id}


def test_migrations_need_the_direct_url_behind_pgbouncer(
    postgres_server: str, database_factory: Callable[[str], str]
) -> None:
    """Prisma's schema commands hold a session (its advisory lock): through the pooler they stop at
    once and say to set DIRECT_URL; with it, the same command migrates."""
    url = database_factory("clerk_sync_pgbouncer_migrate")
    with pgbouncer(postgres_server) as port:
        refused = run_prisma(["migrate", "deploy"], database_url=via_local_port(url, port), check=False)
        assert refused.returncode != 0
        assert "set DIRECT_URL to the unpooled host" in refused.stdout + refused.stderr
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT to_regclass('_prisma_migrations')").fetchone() == (None,)

        done = run_prisma(["migrate", "deploy"], database_url=via_local_port(url, port), direct_url=url)
        assert "successfully applied" in done.stdout
        with psycopg.connect(url) as conn:
            assert conn.execute('SELECT count(*) FROM "User"').fetchone() == (0,)
