"""`flask clerk reconcile`, run for real against a fake Clerk over HTTP and the real database.

Each test gets its own FakeClerk (the `clerk` fixture of test_cli), because
reconcile reads every user Clerk lists. Changes *during* a run are made from the
fake's `before_answer` hook, which runs just before a request is answered: between
two pages is where offset paging shifts, and where a webhook can overtake the run.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from flask import Flask
from prisma import Prisma
from prometheus_client import REGISTRY

from app import create_app
from app.config import Settings
from app.sync import delete_user_from_database
from tests.conftest import WEBHOOK_SECRET, serve_app, sign_webhook
from tests.fakeclerk import FakeClerk, RecordedRequest, build_clerk_user
from tests.test_cli import (
    add_users,
    clerk,
    clerk_app,
    interrupt_flask_command,
    invoke,
    list_requests,
    make_app,
    stored_rows,
    subprocess_env,
    summary,
)

__all__ = ["clerk", "clerk_app"]  # fixtures, used by name


def counts(
    created: int = 0,
    updated: int = 0,
    unchanged: int = 0,
    tombstoned: int = 0,
    kept: int = 0,
    failed: int = 0,
) -> dict[str, int]:
    return {
        "created": created,
        "updated": updated,
        "unchanged": unchanged,
        "tombstoned": tombstoned,
        "kept": kept,
        "failed": failed,
    }


def synced(source: str, outcome: str) -> float:
    """This process's `clerk_sync_user_syncs_total` sample (the CLI runs in process)."""
    return (
        REGISTRY.get_sample_value("clerk_sync_user_syncs_total", {"source": source, "outcome": outcome})
        or 0.0
    )


def user_gets(clerk: FakeClerk) -> list[str]:
    """Ids asked for one by one (GET /v1/users/{id}), in order."""
    return [r.path.removeprefix("/v1/users/") for r in clerk.requests if r.path.startswith("/v1/users/user_")]


def on_listing(hook: Callable[[int], None]) -> Callable[[RecordedRequest], None]:
    """A `before_answer` hook that calls `hook(offset)` before each page of the listing."""

    def before(request: RecordedRequest) -> None:
        if request.path == "/v1/users":
            hook(int(request.query["offset"][0]))

    return before


def live(db: Prisma) -> set[str]:
    return {row.clerkId for row in db.user.find_many(where={"deletedAt": None})}


def tombstoned(db: Prisma) -> set[str]:
    return {row.clerkId for row in db.user.find_many(where={"deletedAt": {"not": None}})}


def imported(clerk_app: Flask, clerk: FakeClerk, n: int) -> list[str]:
    """`n` Clerk users, already in the database; newest first, as Clerk lists them."""
    ids = add_users(clerk, n)
    assert invoke(clerk_app, "backfill").exit_code == 0
    return ids[::-1]


# --- lost deletions, stale rows, dry run --------------------------------------------------------


def test_dry_run_then_real_run_tombstone_users_deleted_without_a_webhook(
    clerk_app: Flask, clerk: FakeClerk, db: Prisma
) -> None:
    ids = imported(clerk_app, clerk, 8)
    gone = sorted(ids[2:4])
    for user_id in gone:
        clerk.remove_user(user_id)  # deleted in Clerk; the webhook never came
    before = stored_rows(db)
    counted = {outcome: synced("reconcile", outcome) for outcome in ("deleted", "unchanged")}

    dry = invoke(clerk_app, "reconcile", "--dry-run", "--page-size", "3")

    assert dry.exit_code == 0, dry.output
    assert summary(dry) == counts(unchanged=6, tombstoned=2)
    assert "Dry run, nothing written." in dry.stdout
    for user_id in gone:
        assert f"would tombstone {user_id} (not found in Clerk)" in dry.stdout
    assert stored_rows(db) == before
    assert sorted(user_gets(clerk)) == gone  # only the candidates are asked for

    real = invoke(clerk_app, "reconcile", "--page-size", "3")

    assert real.exit_code == 0, real.output
    assert summary(real) == counts(unchanged=6, tombstoned=2)
    for user_id in gone:
        assert f"tombstoned {user_id} (not found in Clerk)" in real.stdout
    assert tombstoned(db) == set(gone)
    for user_id in gone:
        row = db.user.find_unique(where={"clerkId": user_id})
        assert row is not None and row.email is None and row.firstName is None and row.clerkUpdatedAt is None
    assert live(db) == set(ids) - set(gone)
    # Counted for the metrics by the real run only.
    assert synced("reconcile", "deleted") - counted["deleted"] == 2
    assert synced("reconcile", "unchanged") - counted["unchanged"] == 6
    # The progress bar went to stderr, over Clerk's count, then over the candidates.
    assert "[##############################] 6/6 listed" in real.stderr
    assert "2/2 candidates checked" in real.stderr

    again = invoke(clerk_app, "reconcile")
    assert again.exit_code == 0, again.output
    assert summary(again) == counts(unchanged=6)


def test_stale_and_missing_rows_are_brought_up_to_date(
    clerk_app: Flask, clerk: FakeClerk, db: Prisma
) -> None:
    ids = imported(clerk_app, clerk, 4)
    stored = db.user.find_unique(where={"clerkId": ids[0]})
    assert stored is not None and stored.clerkUpdatedAt is not None
    version = int(stored.clerkUpdatedAt.timestamp() * 1000)
    clerk.add_user(ids[0], email="new@example.com", created_at=version, updated_at=version + 5)
    missing = clerk.add_user(email="missing@example.com")["id"]
    before = stored_rows(db)

    dry = invoke(clerk_app, "reconcile", "--dry-run")

    assert dry.exit_code == 0, dry.output
    assert summary(dry) == counts(created=1, updated=1, unchanged=3)
    assert f"would update {ids[0]}\n" in dry.stdout
    assert f"would create {missing}\n" in dry.stdout
    assert stored_rows(db) == before

    real = invoke(clerk_app, "reconcile")

    assert real.exit_code == 0, real.output
    assert summary(real) == counts(created=1, updated=1, unchanged=3)
    assert f"updated {ids[0]}\n" in real.stdout and f"created {missing}\n" in real.stdout
    row = db.user.find_unique(where={"clerkId": ids[0]})
    assert row is not None and row.email == "new@example.com"
    assert live(db) == {*ids, missing}


def test_a_user_tombstoned_here_but_listed_by_clerk_stays_tombstoned(
    clerk_app: Flask, clerk: FakeClerk, db: Prisma
) -> None:
    ids = imported(clerk_app, clerk, 3)
    with clerk_app.app_context():
        delete_user_from_database(ids[0])

    result = invoke(clerk_app, "reconcile")

    assert result.exit_code == 0, result.output
    assert summary(result) == counts(unchanged=3)
    assert tombstoned(db) == {ids[0]}


# --- changes during the run: paging shifts --------------------------------------------------------


def test_paging_shifts_during_the_run_delete_nothing_that_clerk_still_has(
    clerk_app: Flask, clerk: FakeClerk, db: Prisma
) -> None:
    ids = imported(clerk_app, clerk, 25)  # newest first
    deleted_mid_run = ids[5]  # on the first page, already listed when it goes
    skipped = ids[10]  # removing ids[5] moves it from the second page's start to the first's end
    new_user: dict[str, Any] = {}

    def change(offset: int) -> None:
        if offset == 10:
            clerk.remove_user(deleted_mid_run)
        if offset == 20:  # a user created now pushes every later one a place on
            new_user.update(clerk.add_user(email="new@example.com"))

    clerk.before_answer(on_listing(change))
    result = invoke(clerk_app, "reconcile", "--page-size", "10")
    clerk.before_answer(None)

    assert result.exit_code == 0, result.output
    # ids[10] was never listed: it is a candidate, Clerk still has it, so it is kept.
    # ids[20] was listed twice, at the end of page 2 and, shifted, at the start of page 3.
    assert summary(result) == counts(unchanged=25, kept=1)
    assert user_gets(clerk) == [skipped]
    assert tombstoned(db) == set()
    assert live(db) == set(ids)

    # The next run sees the deletion and the new user.
    after = invoke(clerk_app, "reconcile", "--page-size", "10")

    assert after.exit_code == 0, after.output
    assert summary(after) == counts(created=1, unchanged=24, tombstoned=1)
    assert tombstoned(db) == {deleted_mid_run}
    assert live(db) == (set(ids) - {deleted_mid_run}) | {new_user["id"]}


# --- Clerk failing --------------------------------------------------------------------------------


def test_clerk_failing_mid_listing_checks_no_candidates(
    clerk_app: Flask, clerk: FakeClerk, db: Prisma
) -> None:
    ids = imported(clerk_app, clerk, 25)
    clerk.remove_user(ids[-1])  # a lost deletion, which this run must not act on

    def fail_after_first_page(offset: int) -> None:
        if offset == 0:
            clerk.fail_with(503, on="users")

    clerk.before_answer(on_listing(fail_after_first_page))
    result = invoke(clerk_app, "reconcile", "--page-size", "10", "--max-retries", "2")
    clerk.before_answer(None)

    assert result.exit_code == 1, result.output
    assert "Stopped: Clerk is unavailable" in result.stderr
    assert "503; retry 2/2" in result.stderr
    # Most users were never listed: with no complete listing there are no candidates at all.
    assert user_gets(clerk) == []
    assert summary(result) == counts(unchanged=10)
    assert tombstoned(db) == set()

    clerk.heal()
    healed = invoke(clerk_app, "reconcile", "--page-size", "10")
    assert healed.exit_code == 0, healed.output
    assert summary(healed) == counts(unchanged=24, tombstoned=1)


def test_clerk_failing_on_a_candidate_leaves_it_alone(clerk_app: Flask, clerk: FakeClerk, db: Prisma) -> None:
    ids = imported(clerk_app, clerk, 5)
    gone = sorted(ids[:3])
    for user_id in gone:
        clerk.remove_user(user_id)

    def faults_after_listing(offset: int) -> None:
        # Lands after the (only) page is served: the first candidate gets a 500 twice, the
        # second a 429 whose Retry-After must be honoured, the third nothing.
        clerk.fail_with(500, times=2, on="users")

    clerk.before_answer(on_listing(faults_after_listing))
    result = invoke(clerk_app, "reconcile", "--max-retries", "1")
    clerk.before_answer(None)

    assert result.exit_code == 1, result.output
    assert summary(result) == counts(unchanged=2, tombstoned=2, failed=1)
    assert f"failed: user {gone[0]}: Clerk answered GET /v1/users/{gone[0]} with 500" in result.stderr
    assert tombstoned(db) == set(gone[1:])
    assert gone[0] in live(db)


def test_candidate_lookups_honour_retry_after(clerk_app: Flask, clerk: FakeClerk, db: Prisma) -> None:
    ids = imported(clerk_app, clerk, 3)
    clerk.remove_user(ids[0])
    clerk.before_answer(on_listing(lambda offset: clerk.fail_with(429, retry_after=1, times=1, on="users")))

    started = time.monotonic()
    result = invoke(clerk_app, "reconcile")
    clerk.before_answer(None)

    assert result.exit_code == 0, result.output
    assert f"GET /v1/users/{ids[0]}: Clerk answered GET /v1/users/{ids[0]} with 429" in result.stderr
    assert "retry 1/5 in 1.00s (Retry-After)" in result.stderr
    assert time.monotonic() - started >= 0.9
    assert summary(result) == counts(unchanged=2, tombstoned=1)


def test_more_deletions_than_the_limit_tombstone_nothing(
    clerk_app: Flask, clerk: FakeClerk, db: Prisma
) -> None:
    ids = imported(clerk_app, clerk, 6)
    for user_id in ids[:4]:
        clerk.remove_user(user_id)

    result = invoke(clerk_app, "reconcile", "--max-tombstones", "3")

    assert result.exit_code == 1, result.output
    assert "4 users to tombstone is more than --max-tombstones 3; nothing tombstoned" in result.stderr
    assert tombstoned(db) == set()
    assert summary(invoke(clerk_app, "reconcile", "--max-tombstones", "4")) == counts(
        unchanged=2, tombstoned=4
    )


# --- racing live webhooks -------------------------------------------------------------------------


@pytest.fixture
def patient_app(clerk: FakeClerk, db: Prisma, app_database_url: str) -> Iterator[Flask]:
    """`clerk_app` with a Clerk timeout long enough for a hook that delivers webhooks before
    the fake answers: a timeout would retry the request and run the hook again."""
    app = make_app(app_database_url, clerk, clerk_timeout=60.0)
    yield app
    app.extensions["database"].close()


@pytest.fixture
def webhook_url(clerk: FakeClerk, app_database_url: str) -> Iterator[str]:
    """The app, on the same database and fake Clerk, serving webhooks on a real socket."""
    app = create_app(
        Settings(
            database_url=app_database_url,
            clerk_api_url=clerk.url,
            clerk_secret_key=clerk.secret_key,
            clerk_webhook_signing_secret=WEBHOOK_SECRET,
        )
    )
    app.extensions["database"].client()  # now, not under the CLI runner's stdout (see test_cli.make_app)
    with serve_app(app) as url:
        yield f"{url}/webhooks/clerk"
    app.extensions["database"].close()


def deliver(url: str, event_type: str, data: dict[str, Any]) -> str:
    body = json.dumps({"type": event_type, "data": data, "timestamp": int(time.time() * 1000)})
    response = httpx.post(url, content=body, headers=sign_webhook(body), timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["outcome"]


def test_reconcile_never_tombstones_a_row_written_during_the_run(
    patient_app: Flask, clerk: FakeClerk, db: Prisma, webhook_url: str
) -> None:
    ids = imported(patient_app, clerk, 6)
    later = int(time.time() * 1000) + 60_000
    # Deleted in Clerk with no webhook, but a late user.updated lands during the run.
    touched = ids[0]
    # Deleted in Clerk, and its user.deleted arrives during the run.
    deleted_by_webhook = ids[1]
    # Still in Clerk; a newer snapshot arrives by webhook before its page is read.
    overtaken = ids[5]
    for user_id in (touched, deleted_by_webhook):
        clerk.remove_user(user_id)
    outcomes: list[str] = []

    def webhooks_now(offset: int) -> None:
        if offset == 0:
            outcomes.append(deliver(webhook_url, "user.updated", build_clerk_user(touched, updated_at=later)))
            outcomes.append(deliver(webhook_url, "user.deleted", {"id": deleted_by_webhook, "deleted": True}))
            newer = build_clerk_user(overtaken, email="newer@example.com", updated_at=later)
            outcomes.append(deliver(webhook_url, "user.updated", newer))

    clerk.before_answer(on_listing(webhooks_now))
    result = invoke(patient_app, "reconcile", "--page-size", "2")
    clerk.before_answer(None)

    assert outcomes == ["updated", "deleted", "updated"]
    assert result.exit_code == 0, result.output
    # touched and deleted_by_webhook were written during the run: kept, not tombstoned by us.
    assert summary(result) == counts(unchanged=4, kept=2)
    assert user_gets(clerk) == []
    assert tombstoned(db) == {deleted_by_webhook}
    row = db.user.find_unique(where={"clerkId": overtaken})
    assert row is not None and row.email == "newer@example.com"
    assert touched in live(db)


def test_a_webhook_between_clerks_404_and_the_tombstone_wins(
    patient_app: Flask, clerk: FakeClerk, db: Prisma, webhook_url: str
) -> None:
    ids = imported(patient_app, clerk, 3)
    touched, gone = sorted(ids[:2])
    for user_id in (touched, gone):
        clerk.remove_user(user_id)
    later = int(time.time() * 1000) + 60_000
    outcomes: list[str] = []

    def webhook_while_asking(request: RecordedRequest) -> None:
        # After the run chose its candidates, before Clerk's 404 for this one comes back.
        if request.path == f"/v1/users/{touched}":
            user = build_clerk_user(touched, email="late@example.com", updated_at=later)
            outcomes.append(deliver(webhook_url, "user.updated", user))

    clerk.before_answer(webhook_while_asking)
    result = invoke(patient_app, "reconcile")
    clerk.before_answer(None)

    assert outcomes == ["updated"]
    assert result.exit_code == 0, result.output
    assert user_gets(clerk) == [touched, gone]
    assert summary(result) == counts(unchanged=1, tombstoned=1, kept=1)
    assert f"tombstoned {touched}" not in result.stdout
    assert tombstoned(db) == {gone}
    row = db.user.find_unique(where={"clerkId": touched})
    assert row is not None and row.deletedAt is None and row.email == "late@example.com"


def test_reconcile_racing_a_webhook_storm_for_the_same_users(
    patient_app: Flask, clerk: FakeClerk, db: Prisma, webhook_url: str
) -> None:
    ids = imported(patient_app, clerk, 40)
    gone = ids[-8:]  # deleted in Clerk without a webhook, never touched during the run
    for user_id in gone:
        clerk.remove_user(user_id)
    staying = ids[:-8]
    base = int(time.time() * 1000) + 60_000
    # Clerk has a newer snapshot than the table for every staying user, and the webhooks
    # carry newer ones still: whichever lands last, the newest must win.
    for user_id in staying:
        clerk.add_user(user_id, email=f"{user_id}@clerk.example", created_at=1, updated_at=base)
    started = threading.Event()
    clerk.before_answer(on_listing(lambda offset: started.set()))

    def storm() -> list[str]:
        assert started.wait(30)
        with ThreadPoolExecutor(max_workers=4) as pool:
            newer = [
                build_clerk_user(user_id, email=f"{user_id}@webhook.example", updated_at=base + 1)
                for user_id in staying
            ]
            return list(pool.map(lambda user: deliver(webhook_url, "user.updated", user), newer))

    with ThreadPoolExecutor(max_workers=1) as background:
        webhooks = background.submit(storm)
        result = invoke(patient_app, "reconcile", "--page-size", "5")
        outcomes = webhooks.result(timeout=120)
    clerk.before_answer(None)

    assert result.exit_code == 0, result.output
    assert set(outcomes) <= {"updated", "created"}
    assert tombstoned(db) == set(gone)
    rows = {row.clerkId: row for row in db.user.find_many()}
    for user_id in staying:
        row = rows[user_id]
        assert row.deletedAt is None
        assert row.email == f"{user_id}@webhook.example"
        assert row.clerkUpdatedAt == datetime.fromtimestamp((base + 1) / 1000, tz=UTC)
    found = summary(result)
    assert found["tombstoned"] == len(gone) and found["failed"] == 0
    assert found["updated"] + found["unchanged"] == len(staying)


def test_reconcile_as_a_subprocess_can_be_interrupted(
    clerk: FakeClerk, db: Prisma, app_database_url: str
) -> None:
    """Ctrl-C: the run stops between writes, prints its summary and exits 130."""
    add_users(clerk, 23)
    clerk.delay(1.0, on="users")
    process = interrupt_flask_command(
        ["reconcile", "--page-size", "10"],
        subprocess_env(app_database_url, clerk, CLERK_TIMEOUT="10"),
        when=lambda: ("10", "10") in list_requests(clerk),
    )
    stdout, stderr = process.stdout, process.stderr

    assert process.returncode == 130, stdout + stderr
    assert "Interrupted" in stderr
    assert "Summary: created 10," in stdout
    assert db.user.count() == 10
    assert clerk.secret_key not in stdout + stderr
