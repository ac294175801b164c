"""Batches, interactive transactions and raw SQL through the generated client."""

from __future__ import annotations

import datetime as dt
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest


def test_batch_commits_all_writes(db: Any) -> None:
    with db.batch_() as batch:
        batch.author.create(data={"email": "a@example.com"})
        batch.author.create(data={"email": "b@example.com"})
        batch.author.update_many(where={}, data={"name": "batched"})
        batch.execute_raw('UPDATE "Author" SET rating = 1')
    assert db.author.count(where={"name": "batched", "rating": 1}) == 2


def test_failing_batch_writes_nothing(db: Any, client_module: Any) -> None:
    db.author.create(data={"email": "taken@example.com"})
    with pytest.raises(client_module.errors.UniqueViolationError), db.batch_() as batch:
        batch.author.create(data={"email": "new@example.com"})
        batch.author.create(data={"email": "taken@example.com"})
    assert db.author.count() == 1


def test_interactive_transaction_commits(db: Any) -> None:
    with db.tx() as tx:
        author = tx.author.create(data={"email": "tx@example.com"})
        tx.post.create(data={"title": "inside", "authorId": author.id})
        # Reads inside the transaction see its own writes.
        assert tx.post.count() == 1
    assert db.post.count() == 1


def test_interactive_transaction_rolls_back_on_error(db: Any) -> None:
    db.author.create(data={"email": "keep@example.com", "name": "before"})
    with pytest.raises(RuntimeError, match="boom"), db.tx() as tx:
        tx.author.update(where={"email": "keep@example.com"}, data={"name": "during"})
        tx.author.create(data={"email": "gone@example.com"})
        raise RuntimeError("boom")
    assert db.author.find_unique(where={"email": "keep@example.com"}).name == "before"
    assert db.author.count() == 1


def test_transaction_isolated_until_commit(db: Any) -> None:
    tx_manager = db.tx()
    tx = tx_manager.start()
    try:
        tx.author.create(data={"email": "pending@example.com"})
        assert db.author.count() == 0
    finally:
        tx_manager.commit()
    assert db.author.count() == 1


def test_expired_transaction_is_a_clear_error(db: Any, client_module: Any) -> None:
    tx_manager = db.tx(timeout=dt.timedelta(milliseconds=200))
    tx = tx_manager.start()
    time.sleep(0.6)
    with pytest.raises(client_module.errors.TransactionError):
        tx.author.create(data={"email": "late@example.com"})
    with pytest.raises(client_module.errors.TransactionError):
        tx_manager.commit()
    assert db.author.count() == 0


@pytest.mark.parametrize("tx_id", ["not-a-transaction", "cmwva05tz00004uszl0hfbvjg"])
def test_unknown_transaction_id_is_an_error_not_a_crash(db: Any, client_module: Any, tx_id: str) -> None:
    # A malformed id and a well-formed one the engine never issued: both are TransactionErrors.
    with pytest.raises(client_module.errors.TransactionError):
        db._engine.commit_transaction(tx_id)
    with pytest.raises(client_module.errors.TransactionError):
        db._engine.query('{"query": "query { result: findManyAuthor { id } }", "variables": {}}', tx_id=tx_id)
    assert db.author.count() == 0  # the engine is still up


def test_execute_raw_and_query_raw_round_trip_types(db: Any) -> None:
    assert (
        db.execute_raw(
            'INSERT INTO "Author" (email, "updatedAt") VALUES ($1, now()), ($2, now())', "r1@x", "r2@x"
        )
        == 2
    )
    rows = db.query_raw(
        "SELECT $1::int AS i, $2::bigint AS b, $3::numeric AS n, $4::timestamptz AS t, $5::text AS s, "
        "$6::jsonb AS j, $7::boolean AS f, $8::float8 AS d",
        7,
        9_007_199_254_740_993,
        Decimal("1.25"),
        dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC),
        "quote ' and \" and \\",
        '{"a": [1, 2]}',
        True,
        0.5,
    )
    # Without a model, the client itself turns numeric into float and leaves timestamps as text.
    [row] = rows
    assert dt.datetime.fromisoformat(row.pop("t")) == dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
    assert row == {
        "i": 7,
        "b": 9_007_199_254_740_993,
        "n": 1.25,
        "s": "quote ' and \" and \\",
        "j": {"a": [1, 2]},
        "f": True,
        "d": 0.5,
    }
    first = db.query_first('SELECT email FROM "Author" WHERE email = $1', "r2@x")
    assert first == {"email": "r2@x"}
    assert db.query_first('SELECT email FROM "Author" WHERE email = $1', "nobody") is None


def test_query_raw_into_a_model(db: Any, client_module: Any) -> None:
    db.author.create(data={"email": "model@example.com", "tags": ["t"], "views": 5})
    authors = db.query_raw('SELECT * FROM "Author"', model=client_module.models.Author)
    assert len(authors) == 1
    assert authors[0].email == "model@example.com" and authors[0].tags == ["t"] and authors[0].views == 5


def test_raw_query_error_is_mapped(db: Any, client_module: Any) -> None:
    with pytest.raises(client_module.errors.RawQueryError):
        db.query_raw("SELECT * FROM no_such_table")


def test_concurrent_queries_share_one_engine(db: Any) -> None:
    def work(i: int) -> int:
        db.author.create(data={"email": f"c{i}@example.com"})
        return db.author.count(where={"email": {"startswith": "c"}})

    with ThreadPoolExecutor(max_workers=16) as pool:
        counts = list(pool.map(work, range(64)))
    assert max(counts) == 64 and db.author.count() == 64
