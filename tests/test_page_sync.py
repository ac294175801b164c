"""`page_sync.sync_page`: a page of users stored at once, by the same rules as one user.

Real PostgreSQL through Prisma Client Python, no mocks. The race tests run a
page write against per-user writers (what the webhooks and after-login call)
for the same users at the same moment; whatever the interleaving, the newest
snapshot must win and a tombstone must stay.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

from flask import Flask
from prisma import Prisma

from app.clerk.users import ClerkUser, parse_clerk_user
from app.page_sync import predict_page, sync_page
from app.sync import SyncOutcome, delete_user_from_database, sync_user_with_database
from tests.concurrency import run_at_once
from tests.fakeclerk import build_clerk_user

BASE = 1_700_000_000_123
CREATED, UPDATED, UNCHANGED, IGNORED = (
    SyncOutcome.CREATED,
    SyncOutcome.UPDATED,
    SyncOutcome.UNCHANGED,
    SyncOutcome.IGNORED_DELETED,
)


def version(clerk_id: str, n: int) -> ClerkUser:
    return parse_clerk_user(build_clerk_user(clerk_id, email=f"v{n}@example.com", updated_at=BASE + n))


def ids(n: int) -> list[str]:
    prefix = uuid4().hex[:8]
    return [f"user_{prefix}_{i}" for i in range(n)]


def at(n: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=BASE + n)


def test_a_page_follows_the_sync_rules_user_by_user(app: Flask, db: Prisma) -> None:
    new, newer, same, stale, deleted = ids(5)
    for clerk_id in (newer, same, stale, deleted):
        sync_user_with_database(version(clerk_id, 5), db)
    delete_user_from_database(deleted, db)
    page = [version(new, 1), version(newer, 6), version(same, 5), version(stale, 4), version(deleted, 9)]
    before = {row.clerkId: row for row in db.user.find_many()}

    planned: dict[str, datetime] = {}
    predicted = predict_page(db, page, planned)
    assert {row.clerkId: row for row in db.user.find_many()} == before  # a prediction writes nothing

    outcomes = sync_page(db, page)

    assert outcomes == predicted == [CREATED, UPDATED, UNCHANGED, UNCHANGED, IGNORED]
    rows = {row.clerkId: row for row in db.user.find_many()}
    assert rows[new].email == "v1@example.com" and rows[new].clerkUpdatedAt == at(1)
    assert rows[newer].email == "v6@example.com" and rows[newer].clerkUpdatedAt == at(6)
    assert rows[same] == before[same] and rows[stale] == before[stale]
    assert rows[deleted].deletedAt is not None and rows[deleted].email is None
    assert sync_page(db, page) == [UNCHANGED, UNCHANGED, UNCHANGED, UNCHANGED, IGNORED]


def test_a_user_twice_in_one_page_is_stored_at_its_newest(app: Flask, db: Prisma) -> None:
    [clerk_id] = ids(1)

    outcomes = sync_page(db, [version(clerk_id, 2), version(clerk_id, 7), version(clerk_id, 3)])

    assert outcomes == [UNCHANGED, CREATED, UNCHANGED]
    row = db.user.find_unique(where={"clerkId": clerk_id})
    assert row is not None and row.clerkUpdatedAt == at(7)
    assert predict_page(db, [version(clerk_id, 8), version(clerk_id, 9)], {}) == [UPDATED, UPDATED]


def test_an_empty_page_writes_nothing(app: Flask, db: Prisma) -> None:
    assert sync_page(db, []) == []
    assert db.user.count() == 0


def test_a_page_racing_per_user_writers_keeps_newest_and_tombstones(app: Flask, db: Prisma) -> None:
    for _ in range(3):
        users = ids(30)
        updated, deleted = users[:15], users[15:]
        # The page carries version 5 of everyone; the racers bring version 9 or a deletion.
        page = [version(clerk_id, 5) for clerk_id in users]
        calls = [lambda page=page: sync_page(db, page)]
        calls += [lambda c=c: sync_user_with_database(version(c, 9), db) for c in updated]
        calls += [lambda c=c: delete_user_from_database(c, db) for c in deleted]

        run_at_once(calls)

        rows = {row.clerkId: row for row in db.user.find_many(where={"clerkId": {"in": users}})}
        assert set(rows) == set(users)
        for clerk_id in updated:
            assert rows[clerk_id].clerkUpdatedAt == at(9) and rows[clerk_id].deletedAt is None
        for clerk_id in deleted:
            assert rows[clerk_id].deletedAt is not None and rows[clerk_id].email is None
