"""The guarantees of `sync_user_with_database` and `delete_user_from_database`.

Everything runs against the real PostgreSQL database through Prisma Client
Python and its query engine: no mocks. Snapshots are built the way production
builds them, by parsing Clerk-shaped user objects with `parse_clerk_user`.
"""

from __future__ import annotations

import dataclasses
import itertools
import multiprocessing
import multiprocessing.queues
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest
from prisma import Prisma
from prisma.models import User

from app.clerk.users import ClerkUser, parse_clerk_user
from app.sync import SyncOutcome, SyncResult, delete_user_from_database, sync_user_with_database
from prisma_engines import auth
from tests.concurrency import HANG_GUARD, run_at_once
from tests.fakeclerk import build_clerk_user

# A Clerk `updated_at` (milliseconds) with a non-zero millisecond part, so that
# a column that dropped milliseconds would be caught.
BASE_VERSION = 1_700_000_000_123


# --- helpers ---------------------------------------------------------------------------------------


def new_clerk_id() -> str:
    return f"user_{uuid4().hex}"


def snapshot(clerk_id: str, updated_at: int, **fields: Any) -> ClerkUser:
    """A snapshot parsed from a Clerk-shaped user object, as production gets them."""
    return parse_clerk_user(build_clerk_user(clerk_id, updated_at=updated_at, **fields))


def raw_version(clerk_id: str, n: int) -> dict[str, Any]:
    """The n-th version of a user as Clerk sends it: every stored field differs between versions.

    Consecutive versions are only 1 ms apart, so millisecond precision matters.
    """
    return build_clerk_user(
        clerk_id,
        email=f"v{n}@example.com",
        other_emails=[f"old{n}@example.com"],
        first_name=f"First{n}",
        last_name=f"Last{n}",
        username=f"name{n}",
        image_url=f"https://img.example.com/{n}.png",
        updated_at=BASE_VERSION + n,
    )


def version(clerk_id: str, n: int) -> ClerkUser:
    return parse_clerk_user(raw_version(clerk_id, n))


def read(db: Prisma, clerk_id: str) -> User | None:
    return db.user.find_unique(where={"clerkId": clerk_id})


def read_only_row(db: Prisma, clerk_id: str) -> User:
    """The single row of a user, failing if there is none or more than one."""
    rows = db.user.find_many(where={"clerkId": clerk_id})
    assert len(rows) == 1, rows
    return rows[0]


def assert_stores(row: User | None, user: ClerkUser) -> None:
    """The row holds exactly this live snapshot."""
    assert row is not None
    assert row.clerkId == user.id
    assert (row.email, row.firstName, row.lastName, row.username, row.imageUrl) == (
        user.email,
        user.first_name,
        user.last_name,
        user.username,
        user.image_url,
    )
    assert row.clerkUpdatedAt == user.updated_at_datetime
    assert row.deletedAt is None


def assert_tombstone(row: User | None, deleted_at: datetime | None = None) -> None:
    """The row is a tombstone: deleted, with every personal field cleared."""
    assert row is not None
    assert row.deletedAt is not None
    if deleted_at is not None:
        assert row.deletedAt == deleted_at
    assert (row.email, row.firstName, row.lastName, row.username, row.imageUrl) == (None,) * 5


def assert_result_is_stored(db: Prisma, result: SyncResult) -> None:
    """The row a result reports is the row a fresh read returns."""
    assert result.user == read(db, result.user.clerkId)


def ms(dt: datetime) -> datetime:
    """`dt` truncated to the column's millisecond precision."""
    return dt.replace(microsecond=dt.microsecond // 1000 * 1000)


# --- created, identical, ordered -------------------------------------------------------------------


def test_create_then_identical_snapshot_is_unchanged(db: Prisma) -> None:
    """An identical snapshot writes nothing: same single row, same `updatedAt`, reason "identical"."""
    user = version(new_clerk_id(), 1)

    created = sync_user_with_database(user, db)
    assert created.outcome is SyncOutcome.CREATED
    assert_stores(created.user, user)
    first = read_only_row(db, user.id)

    again = sync_user_with_database(user, db)
    assert again.outcome is SyncOutcome.UNCHANGED
    assert again.reason == "identical"
    row = read_only_row(db, user.id)
    assert row == first
    assert row.updatedAt == first.updatedAt


def test_newer_snapshot_updates_the_row(db: Prisma) -> None:
    """A snapshot 1 ms newer overwrites every stored field of the same row."""
    clerk_id = new_clerk_id()
    first = sync_user_with_database(version(clerk_id, 1), db)

    newer = version(clerk_id, 2)
    result = sync_user_with_database(newer, db)

    assert result.outcome is SyncOutcome.UPDATED
    row = read_only_row(db, clerk_id)
    assert_stores(row, newer)
    assert row.id == first.user.id
    assert row.createdAt == first.user.createdAt


def test_stale_snapshot_is_dropped(db: Prisma) -> None:
    """An older snapshot after a newer one is "stale": the row keeps the newer data, untouched."""
    clerk_id = new_clerk_id()
    sync_user_with_database(version(clerk_id, 1), db)
    sync_user_with_database(version(clerk_id, 3), db)
    before = read_only_row(db, clerk_id)

    result = sync_user_with_database(version(clerk_id, 2), db)

    assert result.outcome is SyncOutcome.UNCHANGED
    assert result.reason == "stale"
    after = read_only_row(db, clerk_id)
    assert_stores(after, version(clerk_id, 3))
    assert after.updatedAt == before.updatedAt


def test_snapshot_without_version_never_overwrites(db: Prisma) -> None:
    """A user object with no `updated_at` (version 0) cannot replace a versioned row."""
    clerk_id = new_clerk_id()
    newest = version(clerk_id, 1)
    sync_user_with_database(newest, db)

    unversioned = parse_clerk_user({**build_clerk_user(clerk_id, first_name="Nobody"), "updated_at": None})
    assert unversioned.updated_at == 0
    result = sync_user_with_database(unversioned, db)

    assert result.outcome is SyncOutcome.UNCHANGED
    assert_stores(read_only_row(db, clerk_id), newest)


@pytest.mark.parametrize("count", [3, 4])
def test_every_order_converges_to_the_newest(db: Prisma, count: int) -> None:
    """Applied one after another in any order, versions end with the newest stored.

    Each step must also report the right outcome: created first, updated when
    newer than everything before it, unchanged/"stale" otherwise.
    """
    for order in itertools.permutations(range(1, count + 1)):
        clerk_id = new_clerk_id()
        newest_so_far = 0
        for position, n in enumerate(order):
            result = sync_user_with_database(version(clerk_id, n), db)
            if position == 0:
                expected = SyncOutcome.CREATED
            elif n > newest_so_far:
                expected = SyncOutcome.UPDATED
            else:
                expected = SyncOutcome.UNCHANGED
                assert result.reason == "stale", order
            assert result.outcome is expected, (order, n)
            newest_so_far = max(newest_so_far, n)
            assert_stores(result.user, version(clerk_id, newest_so_far))
        assert_stores(read_only_row(db, clerk_id), version(clerk_id, count))


# --- concurrency -----------------------------------------------------------------------------------


def test_concurrent_threads_create_one_row_with_the_newest_version(db: Prisma) -> None:
    """16 threads sync 16 versions of a brand-new user at once: one row, one creation, newest wins."""
    clerk_id = new_clerk_id()
    numbers = [5, 12, 1, 16, 9, 3, 14, 7, 2, 11, 6, 15, 8, 4, 13, 10]
    results = run_at_once([lambda n=n: sync_user_with_database(version(clerk_id, n), db) for n in numbers])

    outcomes = Counter(result.outcome for result in results)
    assert outcomes[SyncOutcome.CREATED] == 1, outcomes
    assert set(outcomes) <= {SyncOutcome.CREATED, SyncOutcome.UPDATED, SyncOutcome.UNCHANGED}
    assert_stores(read_only_row(db, clerk_id), version(clerk_id, 16))


def test_concurrent_identical_snapshots_write_once(db: Prisma) -> None:
    """The same snapshot delivered 16 times at once is created once and "identical" 15 times."""
    user = version(new_clerk_id(), 1)
    results = run_at_once([lambda: sync_user_with_database(user, db)] * 16)

    assert Counter(result.outcome for result in results) == {
        SyncOutcome.CREATED: 1,
        SyncOutcome.UNCHANGED: 15,
    }
    assert {result.reason for result in results if result.outcome is SyncOutcome.UNCHANGED} == {"identical"}
    assert_stores(read_only_row(db, user.id), user)


def sync_in_child_process(
    url: str, raw_user: dict[str, Any], barrier: Any, results: multiprocessing.queues.Queue[tuple[str, str]]
) -> None:
    """Child process body: its own client and engine, released together with the other writers."""
    client = Prisma(datasource={"url": url}, http=auth.http_options())
    try:
        client.connect()
        try:
            barrier.wait(timeout=HANG_GUARD)
            result = sync_user_with_database(parse_clerk_user(raw_user), client)
            results.put(("ok", result.outcome.value))
        finally:
            client.disconnect()
    except Exception as exc:
        barrier.abort()  # the other writers stop waiting for this one
        results.put(("error", repr(exc)))
        raise


def test_concurrent_processes_and_threads_create_one_row(db: Prisma, app_database_url: str) -> None:
    """4 processes (each with its own engine) and 4 threads race on a brand-new user.

    Exactly one writer creates the row, nobody fails, and the newest version,
    written by a child process, is what stays.
    """
    clerk_id = new_clerk_id()
    in_children, in_threads = [2, 8, 5, 3], [7, 1, 6, 4]
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(in_children) + len(in_threads))
    results: multiprocessing.queues.Queue[tuple[str, str]] = context.Queue()
    children = [
        context.Process(
            target=sync_in_child_process,
            args=(app_database_url, raw_version(clerk_id, n), barrier, results),
        )
        for n in in_children
    ]
    for child in children:
        child.start()

    def in_thread(n: int) -> str:
        barrier.wait(timeout=HANG_GUARD)
        return sync_user_with_database(version(clerk_id, n), db).outcome.value

    try:
        with ThreadPoolExecutor(max_workers=len(in_threads)) as pool:
            thread_outcomes = list(pool.map(in_thread, in_threads, timeout=HANG_GUARD))
        child_reports = [results.get(timeout=HANG_GUARD) for _ in children]
    finally:
        for child in children:
            child.join(timeout=HANG_GUARD)
            if child.is_alive():
                child.kill()

    assert [status for status, _ in child_reports] == ["ok"] * len(children), child_reports
    assert [child.exitcode for child in children] == [0] * len(children)
    outcomes = Counter(thread_outcomes + [outcome for _, outcome in child_reports])
    assert outcomes["created"] == 1, outcomes
    assert set(outcomes) <= {"created", "updated", "unchanged"}
    assert_stores(read_only_row(db, clerk_id), version(clerk_id, 8))


@pytest.mark.parametrize("deletion_at", [0, 3, 6, 9, 11])
def test_concurrent_snapshots_and_deletion_end_deleted(db: Prisma, deletion_at: int) -> None:
    """Snapshots racing a deletion: whatever the order, the user ends as a clean tombstone.

    Snapshots that lose the race to the deletion are dropped as `ignored_deleted`,
    never written over the tombstone; at most one writer creates the row.
    """
    clerk_id = new_clerk_id()
    deleted_at = datetime(2024, 5, 1, 12, 0, 0, 456000, tzinfo=UTC)
    calls: list[Callable[[], SyncResult]] = [
        lambda n=n: sync_user_with_database(version(clerk_id, n), db) for n in range(1, 12)
    ]
    calls.insert(deletion_at, lambda: delete_user_from_database(clerk_id, db, at=deleted_at))

    results = run_at_once(calls)

    assert results[deletion_at].outcome is SyncOutcome.DELETED
    outcomes = Counter(result.outcome for result in results)
    assert outcomes[SyncOutcome.DELETED] == 1, outcomes
    assert outcomes[SyncOutcome.CREATED] <= 1, outcomes
    assert_tombstone(read_only_row(db, clerk_id), deleted_at)
    for result in results:
        if result.outcome is SyncOutcome.IGNORED_DELETED:
            assert_tombstone(result.user, deleted_at)


# --- deletion --------------------------------------------------------------------------------------


def test_deletion_clears_personal_data_and_keeps_the_row(db: Prisma) -> None:
    """A deletion tombstones the existing row: same row, `deletedAt` set, personal data gone."""
    clerk_id = new_clerk_id()
    created = sync_user_with_database(version(clerk_id, 1), db)
    deleted_at = datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)

    result = delete_user_from_database(clerk_id, db, at=deleted_at)

    assert result.outcome is SyncOutcome.DELETED
    row = read_only_row(db, clerk_id)
    assert_tombstone(row, deleted_at)
    assert row.id == created.user.id


def test_deletion_defaults_to_now(db: Prisma) -> None:
    """Without `at`, the tombstone is dated when the deletion is applied."""
    clerk_id = new_clerk_id()
    before = ms(datetime.now(UTC))
    delete_user_from_database(clerk_id, db)
    after = datetime.now(UTC)

    row = read_only_row(db, clerk_id)
    assert_tombstone(row)
    assert row.deletedAt is not None
    # Generous bounds: the column keeps milliseconds, and clocks are the same machine's.
    assert before - timedelta(seconds=1) <= row.deletedAt <= after + timedelta(seconds=1)


def test_tombstone_is_final(db: Prisma) -> None:
    """After a deletion, a newer snapshot is `ignored_deleted`: nothing refilled, `deletedAt` kept."""
    clerk_id = new_clerk_id()
    sync_user_with_database(version(clerk_id, 1), db)
    deleted_at = datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
    delete_user_from_database(clerk_id, db, at=deleted_at)
    tombstone = read_only_row(db, clerk_id)

    result = sync_user_with_database(version(clerk_id, 99), db)

    assert result.outcome is SyncOutcome.IGNORED_DELETED
    row = read_only_row(db, clerk_id)
    assert_tombstone(row, deleted_at)
    assert row.updatedAt == tombstone.updatedAt


def test_deletion_of_unknown_user_stores_a_tombstone(db: Prisma) -> None:
    """A deletion for an id never seen stores a tombstone, so a late `user.created` cannot revive it."""
    clerk_id = new_clerk_id()
    deleted_at = datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)

    result = delete_user_from_database(clerk_id, db, at=deleted_at)

    assert result.outcome is SyncOutcome.DELETED
    assert_tombstone(read_only_row(db, clerk_id), deleted_at)

    late = sync_user_with_database(version(clerk_id, 1), db)
    assert late.outcome is SyncOutcome.IGNORED_DELETED
    assert_tombstone(read_only_row(db, clerk_id), deleted_at)


def test_second_deletion_keeps_the_first_date(db: Prisma) -> None:
    """Deleting twice is "already deleted": unchanged, and the first `deletedAt` stays."""
    clerk_id = new_clerk_id()
    sync_user_with_database(version(clerk_id, 1), db)
    first_at = datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
    delete_user_from_database(clerk_id, db, at=first_at)
    tombstone = read_only_row(db, clerk_id)

    again = delete_user_from_database(clerk_id, db, at=first_at + timedelta(days=1))

    assert again.outcome is SyncOutcome.UNCHANGED
    assert again.reason == "already deleted"
    row = read_only_row(db, clerk_id)
    assert_tombstone(row, first_at)
    assert row.updatedAt == tombstone.updatedAt


# --- emails ----------------------------------------------------------------------------------------


def test_email_of_deleted_user_can_be_reused(db: Prisma) -> None:
    """User A deleted, then user B signs up with A's address: both rows exist, B has the address."""
    email = f"reused-{uuid4().hex}@example.com"
    a, b = new_clerk_id(), new_clerk_id()
    sync_user_with_database(snapshot(a, BASE_VERSION, email=email), db)
    delete_user_from_database(a, db)

    result = sync_user_with_database(snapshot(b, BASE_VERSION + 1, email=email), db)

    assert result.outcome is SyncOutcome.CREATED
    assert_tombstone(read_only_row(db, a))
    assert read_only_row(db, b).email == email
    assert [row.clerkId for row in db.user.find_many(where={"email": email})] == [b]


def test_email_may_be_held_by_two_rows(db: Prisma) -> None:
    """B may arrive with A's address before A's deletion does: two live rows share one email."""
    email = f"shared-{uuid4().hex}@example.com"
    a, b = new_clerk_id(), new_clerk_id()
    sync_user_with_database(snapshot(a, BASE_VERSION, email=email), db)

    result = sync_user_with_database(snapshot(b, BASE_VERSION + 1, email=email), db)

    assert result.outcome is SyncOutcome.CREATED
    assert {row.clerkId for row in db.user.find_many(where={"email": email})} == {a, b}
    delete_user_from_database(a, db)
    assert [row.clerkId for row in db.user.find_many(where={"email": email})] == [b]


def test_primary_email_is_chosen_by_id(db: Prisma) -> None:
    """The stored email is the address named by `primary_email_address_id`, not the first one listed."""
    clerk_id = new_clerk_id()
    raw = build_clerk_user(
        clerk_id,
        email="primary@example.com",
        other_emails=["first@example.com", "second@example.com"],
        updated_at=BASE_VERSION,
    )
    assert raw["email_addresses"][0]["email_address"] == "first@example.com"

    sync_user_with_database(parse_clerk_user(raw), db)

    assert read_only_row(db, clerk_id).email == "primary@example.com"


def test_user_without_primary_email_stores_none(db: Prisma) -> None:
    """Addresses but no primary one: no address is guessed."""
    clerk_id = new_clerk_id()
    sync_user_with_database(
        snapshot(clerk_id, BASE_VERSION, email=None, other_emails=["unverified@example.com"]), db
    )
    assert read_only_row(db, clerk_id).email is None


# --- the returned row ------------------------------------------------------------------------------


def test_result_user_is_the_stored_row(db: Prisma) -> None:
    """For every outcome, `SyncResult.user` equals a fresh `find_unique` of the row."""
    clerk_id = new_clerk_id()
    steps: list[tuple[SyncOutcome, Callable[[], SyncResult]]] = [
        (SyncOutcome.CREATED, lambda: sync_user_with_database(version(clerk_id, 2), db)),
        (SyncOutcome.UNCHANGED, lambda: sync_user_with_database(version(clerk_id, 2), db)),
        (SyncOutcome.UNCHANGED, lambda: sync_user_with_database(version(clerk_id, 1), db)),
        (SyncOutcome.UPDATED, lambda: sync_user_with_database(version(clerk_id, 3), db)),
        (SyncOutcome.DELETED, lambda: delete_user_from_database(clerk_id, db)),
        (SyncOutcome.IGNORED_DELETED, lambda: sync_user_with_database(version(clerk_id, 4), db)),
        (SyncOutcome.UNCHANGED, lambda: delete_user_from_database(clerk_id, db)),
    ]
    for expected, step in steps:
        result = step()
        assert result.outcome is expected
        assert_result_is_stored(db, result)


def test_failed_transaction_writes_nothing(db: Prisma) -> None:
    """A snapshot the database rejects raises a Prisma error and leaves no row behind."""
    from prisma.errors import PrismaError

    clerk_id = new_clerk_id()
    # PostgreSQL text cannot hold NUL bytes, so the upsert fails inside the transaction.
    # (parse_clerk_user refuses such text; built directly, the write itself must fail cleanly.)
    bad = dataclasses.replace(snapshot(clerk_id, BASE_VERSION), first_name="nul\x00byte")
    with pytest.raises(PrismaError):
        sync_user_with_database(bad, db)
    assert read(db, clerk_id) is None
    # The per-user lock was released with the failed transaction.
    assert sync_user_with_database(version(clerk_id, 1), db).outcome is SyncOutcome.CREATED
