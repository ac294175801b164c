"""Error mapping, and what the client sees when its engine fails."""

from __future__ import annotations

import datetime
import os
import signal
import time
from typing import Any

import httpx
import psycopg
import pytest

from prisma_engines import auth


def test_unique_violation(db: Any, client_module: Any) -> None:
    db.author.create(data={"email": "dup@example.com"})
    with pytest.raises(client_module.errors.UniqueViolationError) as caught:
        db.author.create(data={"email": "dup@example.com"})
    assert "email" in str(caught.value)


def test_record_not_found_for_a_required_relation(db: Any, client_module: Any) -> None:
    with pytest.raises(client_module.errors.RecordNotFoundError):
        db.post.create(data={"title": "orphan", "author": {"connect": {"id": 12345}}})


def test_foreign_key_violation(db: Any, client_module: Any) -> None:
    with pytest.raises(client_module.errors.ForeignKeyViolationError):
        db.post.create(data={"title": "orphan", "authorId": 12345})


def test_unknown_field_is_rejected_by_the_engine(db: Any, client_module: Any) -> None:
    with pytest.raises(client_module.errors.FieldNotFoundError):
        db.author.find_many(where={"no_such_field": 1})


def test_wrong_value_type_is_rejected_quickly(db: Any, client_module: Any) -> None:
    started = time.monotonic()
    with pytest.raises(client_module.errors.PrismaError):
        db.author.find_many(where={"views": {"gt": "not a number"}})
    assert time.monotonic() - started < 5


def test_a_request_the_offline_engine_cannot_translate_is_an_error(db: Any, client_module: Any) -> None:
    # An operation no client action produces: it must come back as an error, not a hang or a crash.
    with pytest.raises(client_module.errors.DataError, match="cannot run this query"):
        db._engine.query('{"query": "query { result: countAuthor { _all } }", "variables": {}}', tx_id=None)
    assert db.author.count() == 0


def _engine_pid(client: Any) -> int:
    return client._engine.process.pid


def test_killed_engine_is_a_clear_error_and_reconnect_recovers(fresh_client: Any, client_module: Any) -> None:
    fresh_client.connect()
    fresh_client.author.count()
    os.kill(_engine_pid(fresh_client), signal.SIGKILL)
    fresh_client._engine.process.wait(timeout=5)

    started = time.monotonic()
    with pytest.raises((httpx.TransportError, client_module.errors.PrismaError)):
        fresh_client.author.count()
    assert time.monotonic() - started < 5

    fresh_client.disconnect()
    fresh_client.connect()
    assert fresh_client.author.count() >= 0


def test_disconnect_leaves_no_engine_process(fresh_client: Any) -> None:
    fresh_client.connect()
    process = fresh_client._engine.process
    fresh_client.disconnect()
    assert process.wait(timeout=5) is not None


def test_metrics_are_served(db: Any) -> None:
    db.author.count()
    metrics = db.get_metrics()
    assert any(c.key == "prisma_client_queries_total" and c.value > 0 for c in metrics.counters)
    assert "prisma_client_queries_total" in db.get_metrics(format="prometheus")


def test_engine_panic_fails_the_request_and_the_engine_recovers(
    fresh_client: Any, client_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRISMA_OFFLINE_ENGINE_DEBUG", "1")
    fresh_client.connect()
    pid = _engine_pid(fresh_client)
    with pytest.raises(client_module.errors.DataError, match="panicked"):
        fresh_client._engine.request("POST", "/debug/panic")
    assert fresh_client.author.count() >= 0
    assert _engine_pid(fresh_client) == pid  # recovered in place, not restarted by the client


def test_unreachable_database_is_a_prisma_error_everywhere(client_module: Any) -> None:
    # Nothing listens on port 1: queries, batches and transaction starts must all raise the client's errors.
    client = client_module.Prisma(
        datasource={"url": "postgresql://postgres@127.0.0.1:1/none?connect_timeout=2"},
        http=auth.http_options(),
    )
    client.connect()
    try:
        with pytest.raises(client_module.errors.PrismaError):
            client.author.count()
        with pytest.raises(client_module.errors.PrismaError):
            client.tx().start()
        with pytest.raises(client_module.errors.PrismaError), client.batch_() as batch:
            batch.author.create(data={"email": "x@example.com"})
    finally:
        client.disconnect()


def test_engine_panic_releases_the_locks_of_open_transactions(
    fresh_client: Any, client_module: Any, conformance_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRISMA_OFFLINE_ENGINE_DEBUG", "1")
    fresh_client.connect()
    tx = fresh_client.tx(timeout=datetime.timedelta(seconds=60)).start()
    tx.execute_raw("SELECT pg_advisory_xact_lock(4242)")
    with pytest.raises(client_module.errors.DataError, match="panicked"):
        fresh_client._engine.request("POST", "/debug/panic")

    # The transaction died with the wasm instance; PostgreSQL must not keep its lock for it.
    with psycopg.connect(conformance_url, autocommit=True) as conn:
        deadline = time.monotonic() + 10
        while not conn.execute("SELECT pg_try_advisory_lock(4242)").fetchone()[0]:
            assert time.monotonic() < deadline, "the dead transaction still holds its lock"
            time.sleep(0.05)
    with pytest.raises(client_module.errors.TransactionError):
        tx.author.count()
