"""`flask clerk backfill` and `flask clerk sync-user`, run for real.

The commands run in-process through Flask's CLI runner, or as `python -m flask`
subprocesses, against a real fake-Clerk HTTP server and the real database.
Backfill tests get their own FakeClerk (and an app pointing at it), because the
session's fake keeps every user other tests added and backfill reads them all.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import Result
from flask import Flask
from prisma import Prisma
from prometheus_client import REGISTRY

from app import create_app
from app.config import Settings
from app.sync import delete_user_from_database
from tests.fakeclerk import FakeClerk

REPO_ROOT = Path(__file__).resolve().parents[1]
FAST_RETRIES = {"CLERK_SYNC_RETRY_DELAY": "0.01"}
SUMMARY = re.compile(
    r"^(?:Dry run, nothing written\. )?Summary: (?P<counts>.*) \((?P<total>\d+) users\)$", re.M
)
# Dry-run labels as real-run ones (`would tombstone`: `flask clerk reconcile`, test_reconcile.py).
LABELS = {"would create": "created", "would update": "updated", "would tombstone": "tombstoned"}
# A database nobody listens on, with a password that must never be printed.
DEAD_DATABASE_URL = "postgresql://postgres:hunter2-db-password@127.0.0.1:1/nowhere"


# --- helpers ------------------------------------------------------------------------------------


@pytest.fixture
def clerk() -> Iterator[FakeClerk]:
    """A fake Clerk holding only this test's users."""
    with FakeClerk() as fake:
        yield fake


def make_app(database_url: str, clerk: FakeClerk, clerk_timeout: float = 2.0) -> Flask:
    """An app on `clerk`, its database client already connected.

    Connecting spawns Prisma's engine with this process's stdout, which the CLI
    runner replaces with a stream that has no file descriptor.
    """
    app = create_app(
        Settings(
            database_url=database_url,
            clerk_api_url=clerk.url,
            clerk_secret_key=clerk.secret_key,
            clerk_timeout=clerk_timeout,
        )
    )
    app.extensions["database"].client()
    return app


@pytest.fixture
def clerk_app(clerk: FakeClerk, db: Prisma, app_database_url: str) -> Iterator[Flask]:
    """An app on the shared (freshly truncated) database and this test's fake Clerk."""
    app = make_app(app_database_url, clerk)
    yield app
    app.extensions["database"].close()


def invoke(app: Flask, *args: str) -> Result:
    result = app.test_cli_runner().invoke(args=["clerk", *args], env=FAST_RETRIES)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"command crashed:\n{result.output}") from result.exception
    return result


def summary(result: Result) -> dict[str, int]:
    """The counts from the command's last line, with dry-run labels mapped to real-run ones."""
    match = SUMMARY.search(result.stdout)
    assert match is not None, result.output
    counts = {}
    for part in match["counts"].split(", "):
        label, count = part.rsplit(" ", 1)
        counts[LABELS.get(label, label)] = int(count)
    assert sum(counts.values()) == int(match["total"])
    return counts


def counts(created: int = 0, updated: int = 0, unchanged: int = 0, deleted: int = 0, failed: int = 0) -> dict:
    return {
        "created": created,
        "updated": updated,
        "unchanged": unchanged,
        "deleted-skipped": deleted,
        "failed": failed,
    }


def add_users(clerk: FakeClerk, n: int) -> list[str]:
    """`n` users, oldest first (Clerk lists them newest first)."""
    prefix = f"user_{uuid.uuid4().hex[:8]}"
    ids = [f"{prefix}_{i:02d}" for i in range(n)]
    for user_id in ids:
        clerk.add_user(user_id, email=f"{user_id}@example.com")
    return ids


def list_requests(clerk: FakeClerk) -> list[tuple[str, str]]:
    """(limit, offset) of every request to the list endpoint, in order."""
    return [(r.query["limit"][0], r.query["offset"][0]) for r in clerk.requests if r.path == "/v1/users"]


def stored_rows(db: Prisma) -> dict[str, dict[str, Any]]:
    return {row.clerkId: row.model_dump() for row in db.user.find_many()}


def subprocess_env(database_url: str, clerk: FakeClerk, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLERK_", "DATABASE_URL"))}
    return {
        **env,
        "DATABASE_URL": database_url,
        "CLERK_API_URL": clerk.url,
        "CLERK_SECRET_KEY": clerk.secret_key,
        **FAST_RETRIES,
        **extra,
    }


def flask_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "flask", "clerk", *args]


def interrupt_flask_command(
    args: Sequence[str], env: dict[str, str], *, when: Callable[[], bool]
) -> subprocess.CompletedProcess[str]:
    """`flask clerk *args` as a subprocess, sent SIGINT (what Ctrl-C sends) once `when()` is true.

    Fails if the command exits first or `when()` stays false for 30 s.
    """
    process = subprocess.Popen(
        flask_command(*args),
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell that starts tests in the background ignores SIGINT, and children inherit
        # that; a terminal's Ctrl-C reaches a process with the default handler.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 30
        while not when():
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def assert_no_secrets(output: str, clerk: FakeClerk) -> None:
    assert clerk.secret_key not in output
    assert "hunter2" not in output


# --- backfill -----------------------------------------------------------------------------------


def test_backfill_imports_every_user_page_by_page(clerk_app: Flask, clerk: FakeClerk, db: Prisma) -> None:
    ids = add_users(clerk, 23)

    result = invoke(clerk_app, "backfill", "--page-size", "10")

    assert result.exit_code == 0, result.output
    assert summary(result) == counts(created=23)
    assert {clerk_id: row["email"] for clerk_id, row in stored_rows(db).items()} == {
        user_id: f"{user_id}@example.com" for user_id in ids
    }
    assert list_requests(clerk) == [("10", "0"), ("10", "10"), ("10", "20")]
    created = REGISTRY.get_sample_value(
        "clerk_sync_user_syncs_total", {"source": "backfill", "outcome": "created"}
    )
    assert created is not None and created >= 23  # counted for the metrics
    assert all(r.authorized for r in clerk.requests)
    # Clerk's user count gives the progress bar its length.
    assert "[##############################] 23/23 listed, 23 processed" in result.stderr
    assert_no_secrets(result.output, clerk)


def test_backfill_stops_at_an_exactly_full_last_page(clerk_app: Flask, clerk: FakeClerk) -> None:
    add_users(clerk, 20)

    result = invoke(clerk_app, "backfill", "--page-size", "10")

    assert result.exit_code == 0, result.output
    assert summary(result) == counts(created=20)
    assert list_requests(clerk) == [("10", "0"), ("10", "10"), ("10", "20")]


def test_rerun_reports_unchanged(clerk_app: Flask, clerk: FakeClerk, db: Prisma) -> None:
    add_users(clerk, 7)
    assert summary(invoke(clerk_app, "backfill", "--page-size", "3")) == counts(created=7)
    before = stored_rows(db)

    result = invoke(clerk_app, "backfill", "--page-size", "3")

    assert result.exit_code == 0, result.output
    assert summary(result) == counts(unchanged=7)
    assert stored_rows(db) == before


def test_rerun_updates_newer_users_and_skips_tombstones(
    clerk_app: Flask, clerk: FakeClerk, db: Prisma
) -> None:
    ids = add_users(clerk, 5)
    assert summary(invoke(clerk_app, "backfill")) == counts(created=5)
    later = int(time.time() * 1000) + 60_000
    clerk.add_user(ids[0], email="grace@example.com", first_name="Grace", updated_at=later)
    with clerk_app.app_context():
        delete_user_from_database(ids[1])

    result = invoke(clerk_app, "backfill")

    assert result.exit_code == 0, result.output
    assert summary(result) == counts(updated=1, unchanged=3, deleted=1)
    updated = db.user.find_unique(where={"clerkId": ids[0]})
    assert updated is not None and (updated.email, updated.firstName) == ("grace@example.com", "Grace")
    tombstone = db.user.find_unique(where={"clerkId": ids[1]})
    assert tombstone is not None and tombstone.deletedAt is not None and tombstone.email is None


def test_dry_run_writes_nothing_and_predicts_the_real_run(
    clerk_app: Flask, clerk: FakeClerk, db: Prisma
) -> None:
    ids = add_users(clerk, 6)  # listed as ids[5], ids[4], ..., ids[0]
    # Import only the three oldest, then make one newer in Clerk, one stale, one tombstoned.
    assert summary(invoke(clerk_app, "backfill", "--offset", "3")) == counts(created=3)
    stored = db.user.find_unique(where={"clerkId": ids[0]})
    assert stored is not None and stored.clerkUpdatedAt is not None
    version = int(stored.clerkUpdatedAt.timestamp() * 1000)
    clerk.add_user(ids[0], email="new@example.com", created_at=1, updated_at=version + 1)
    clerk.add_user(ids[2], email="old@example.com", created_at=2, updated_at=version - 1)
    with clerk_app.app_context():
        delete_user_from_database(ids[1])
    clerk.add_user(f"{ids[0]}_bad", first_name=123)
    expected = counts(created=3, updated=1, unchanged=1, deleted=1, failed=1)
    before = stored_rows(db)
    pages_before = len(list_requests(clerk))

    dry = invoke(clerk_app, "backfill", "--dry-run", "--page-size", "2")

    assert dry.exit_code == 1, dry.output
    assert "Dry run, nothing written." in dry.stdout
    assert "would create 3, would update 1" in dry.stdout
    assert summary(dry) == expected
    assert stored_rows(db) == before
    assert len(list_requests(clerk)) - pages_before == 4  # 7 users in pages of 2

    real = invoke(clerk_app, "backfill", "--page-size", "2")

    assert real.exit_code == 1, real.output
    assert summary(real) == expected
    assert stored_rows(db) != before
    assert summary(invoke(clerk_app, "backfill", "--dry-run")) == counts(unchanged=5, deleted=1, failed=1)


def test_backfill_honours_retry_after(clerk_app: Flask, clerk: FakeClerk, db: Prisma) -> None:
    add_users(clerk, 3)
    clerk.fail_with(429, retry_after=1, times=1, on="users")

    started = time.monotonic()
    result = invoke(clerk_app, "backfill")
    elapsed = time.monotonic() - started

    assert result.exit_code == 0, result.output
    assert summary(result) == counts(created=3)
    assert list_requests(clerk) == [("100", "0"), ("100", "0")]  # the same page again
    assert "429; retry 1/5 in 1.00s (Retry-After)" in result.stderr
    # The backoff alone (0.01 s) would have retried at once; the fake asked for a second.
    assert elapsed >= 0.9


def test_retry_after_is_capped(clerk_app: Flask, clerk: FakeClerk) -> None:
    add_users(clerk, 2)
    clerk.fail_with(429, retry_after=3600, times=1, on="users")

    started = time.monotonic()
    result = invoke(clerk_app, "backfill", "--max-wait", "0.2")

    assert result.exit_code == 0, result.output
    assert summary(result) == counts(created=2)
    assert "retry 1/5 in 0.20s (Retry-After)" in result.stderr
    assert time.monotonic() - started < 60


def test_backfill_retries_server_errors_with_backoff(clerk_app: Flask, clerk: FakeClerk) -> None:
    add_users(clerk, 12)
    clerk.fail_with(503, times=2, on="users")

    result = invoke(clerk_app, "backfill", "--page-size", "5")

    assert result.exit_code == 0, result.output
    assert summary(result) == counts(created=12)
    assert list_requests(clerk) == [("5", "0")] * 3 + [("5", "5"), ("5", "10")]
    assert "503; retry 1/5 in 0.01s" in result.stderr
    assert "503; retry 2/5 in 0.02s" in result.stderr


def test_backfill_stops_with_a_resume_hint_when_clerk_stays_down(
    clerk_app: Flask, clerk: FakeClerk, db: Prisma
) -> None:
    add_users(clerk, 5)
    clerk.fail_with(503, on="users")

    result = invoke(clerk_app, "backfill", "--offset", "2", "--page-size", "2", "--max-retries", "2")

    assert result.exit_code == 1, result.output
    assert list_requests(clerk) == [("2", "2")] * 3
    assert "Resume with: flask clerk backfill --offset 2 --page-size 2" in result.stderr
    assert summary(result) == counts()
    assert db.user.count() == 0


def test_invalid_user_counts_as_failed_and_the_run_goes_on(
    clerk_app: Flask, clerk: FakeClerk, db: Prisma
) -> None:
    ids = add_users(clerk, 2)
    bad = clerk.add_user(f"{ids[0]}_bad", first_name=123)["id"]
    ids += add_users(clerk, 2)

    result = invoke(clerk_app, "backfill", "--page-size", "2")

    assert result.exit_code == 1, result.output
    assert summary(result) == counts(created=4, failed=1)
    assert f"failed: user {bad}: 'first_name' must be a string" in result.stderr
    assert set(stored_rows(db)) == set(ids)


def test_data_the_database_refuses_fails_that_user_without_retries(
    clerk_app: Flask, clerk: FakeClerk, db: Prisma, app_database_url: str
) -> None:
    """A constraint violation fails the same way every time: no retry, no "database down" stop."""
    ids = add_users(clerk, 2)
    refused = [clerk.add_user(f"{ids[0]}_no{i}", email=f"refused{i}@example.com")["id"] for i in range(4)]
    ids += add_users(clerk, 2)
    with psycopg.connect(app_database_url, autocommit=True) as conn:
        conn.execute("""ALTER TABLE "User" ADD CONSTRAINT test_refused CHECK (email NOT LIKE 'refused%')""")
    try:
        result = invoke(clerk_app, "backfill", "--page-size", "3", "--max-retries", "5")
    finally:
        with psycopg.connect(app_database_url, autocommit=True) as conn:
            conn.execute('ALTER TABLE "User" DROP CONSTRAINT test_refused')

    assert result.exit_code == 1, result.output
    # Four refusals in a row would stop a run whose database is down; these don't.
    assert summary(result) == counts(created=4, failed=4)
    assert set(stored_rows(db)) == set(ids)
    for user_id in refused:
        assert f"failed: user {user_id}: database refused the data (23514)" in result.stderr
    assert "retry" not in result.stderr
    assert_no_secrets(result.output, clerk)


def test_backfill_stops_when_the_database_keeps_failing(
    clerk: FakeClerk, database_factory: Callable[[str], str]
) -> None:
    add_users(clerk, 5)
    unmigrated_url = database_factory("clerk_sync_cli")  # every write fails: no "User" table
    app = make_app(unmigrated_url, clerk)
    try:
        result = invoke(app, "backfill", "--max-retries", "1")
    finally:
        app.extensions["database"].close()

    assert result.exit_code == 1, result.output
    # Three users in a row could not be written: the database is down, so stop rather than grind on.
    assert summary(result) == counts(failed=3)
    assert "retry 1/1" in result.stderr
    assert "database unavailable (TableNotFoundError)" in result.stderr
    assert "Resume with: flask clerk backfill --offset 0" in result.stderr
    assert unmigrated_url not in result.output
    assert_no_secrets(result.output, clerk)


def test_sync_user_with_the_database_server_down(fake_clerk: FakeClerk, db: Prisma) -> None:
    user_id = f"user_cli_{uuid.uuid4().hex[:8]}"
    fake_clerk.add_user(user_id)
    app = make_app(DEAD_DATABASE_URL, fake_clerk)
    try:
        result = app.test_cli_runner().invoke(
            args=["clerk", "sync-user", user_id, "--max-retries", "1"], env=FAST_RETRIES
        )
    finally:
        app.extensions["database"].close()
    assert result.exit_code == 1, result.output
    assert "Error: database unavailable" in result.stderr
    assert_no_secrets(result.output, fake_clerk)


def test_page_size_is_bounded_by_clerk(clerk_app: Flask, clerk: FakeClerk) -> None:
    result = invoke(clerk_app, "backfill", "--page-size", "501")

    assert result.exit_code == 2
    assert "--page-size" in result.output
    assert clerk.requests == []


def test_interrupted_backfill_prints_where_to_resume(
    clerk_app: Flask, clerk: FakeClerk, db: Prisma, app_database_url: str
) -> None:
    add_users(clerk, 23)
    clerk.delay(1.0, on="users")  # a window to interrupt each page request in
    process = interrupt_flask_command(
        ["backfill", "--page-size", "10"],
        subprocess_env(app_database_url, clerk, CLERK_TIMEOUT="10"),
        when=lambda: ("10", "10") in list_requests(clerk),  # the first page is done
    )
    stdout, stderr = process.stdout, process.stderr

    assert process.returncode == 130, stdout + stderr
    assert "Interrupted. Resume with: flask clerk backfill --offset 10 --page-size 10" in stderr
    assert "created 10" in stdout
    assert db.user.count() == 10
    assert_no_secrets(stdout + stderr, clerk)

    clerk.heal()
    resumed = invoke(clerk_app, "backfill", "--offset", "10", "--page-size", "10")

    assert resumed.exit_code == 0, resumed.output
    assert summary(resumed) == counts(created=13)
    assert db.user.count() == 23


# --- sync-user ----------------------------------------------------------------------------------


def test_sync_user_stores_the_user(app: Flask, fake_clerk: FakeClerk, db: Prisma) -> None:
    user_id = f"user_cli_{uuid.uuid4().hex[:8]}"
    fake_clerk.add_user(user_id, email="one@example.com")

    first = invoke(app, "sync-user", user_id)
    second = invoke(app, "sync-user", user_id)

    assert first.exit_code == 0, first.output
    assert first.stdout == f"{user_id}: created\n"
    assert second.exit_code == 0, second.output
    assert second.stdout == f"{user_id}: unchanged (identical)\n"
    row = db.user.find_unique(where={"clerkId": user_id})
    assert row is not None and row.email == "one@example.com"
    assert_no_secrets(first.output + second.output, fake_clerk)


def test_sync_user_not_found(app: Flask, fake_clerk: FakeClerk, db: Prisma) -> None:
    user_id = f"user_missing_{uuid.uuid4().hex[:8]}"

    result = invoke(app, "sync-user", user_id)

    assert result.exit_code == 1
    assert f"Clerk has no user '{user_id}'; nothing written." in result.stderr
    assert db.user.count() == 0


def test_sync_user_clerk_unavailable(app: Flask, fake_clerk: FakeClerk, db: Prisma) -> None:
    user_id = f"user_cli_{uuid.uuid4().hex[:8]}"
    fake_clerk.add_user(user_id)
    fake_clerk.fail_with(503, on="users")
    try:
        result = invoke(app, "sync-user", user_id, "--max-retries", "1")
    finally:
        fake_clerk.heal()

    assert result.exit_code == 1
    assert "Clerk is unavailable (Clerk answered GET" in result.stderr
    assert "retry 1/1" in result.stderr
    assert db.user.count() == 0


def test_sync_user_as_a_subprocess(fake_clerk: FakeClerk, db: Prisma, app_database_url: str) -> None:
    user_id = f"user_cli_{uuid.uuid4().hex[:8]}"
    fake_clerk.add_user(user_id, email="proc@example.com")

    done = subprocess.run(
        flask_command("sync-user", user_id),
        cwd=REPO_ROOT,
        env=subprocess_env(app_database_url, fake_clerk),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == f"{user_id}: created\n"
    row = db.user.find_unique(where={"clerkId": user_id})
    assert row is not None and row.email == "proc@example.com"
    assert_no_secrets(done.stdout + done.stderr, fake_clerk)


def test_sync_user_database_unavailable(
    fake_clerk: FakeClerk, db: Prisma, database_factory: Callable[[str], str]
) -> None:
    user_id = f"user_cli_{uuid.uuid4().hex[:8]}"
    fake_clerk.add_user(user_id)
    unmigrated_url = database_factory("clerk_sync_cli")

    done = subprocess.run(
        flask_command("sync-user", user_id, "--max-retries", "1"),
        cwd=REPO_ROOT,
        env=subprocess_env(unmigrated_url, fake_clerk),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 1, done.stdout + done.stderr
    assert "Error: database unavailable (TableNotFoundError); nothing written." in done.stderr
    assert unmigrated_url not in done.stdout + done.stderr
    assert_no_secrets(done.stdout + done.stderr, fake_clerk)


def test_commands_need_the_clerk_secret_key(db: Prisma, app_database_url: str) -> None:
    app = create_app(Settings(database_url=app_database_url, clerk_api_url="http://127.0.0.1:1"))
    app.extensions["database"].client()
    try:
        backfill = invoke(app, "backfill")
        sync_user = invoke(app, "sync-user", "user_x")
    finally:
        app.extensions["database"].close()

    for result in (backfill, sync_user):
        assert result.exit_code == 1
        assert "Error: CLERK_SECRET_KEY is not set" in result.stderr


def test_backfill_without_a_user_count_shows_a_plain_count(
    clerk_app: Flask, clerk: FakeClerk, db: Prisma
) -> None:
    add_users(clerk, 3)
    clerk.fail_with(500, on="count")

    result = invoke(clerk_app, "backfill", "--page-size", "2")

    assert result.exit_code == 0, result.output
    assert summary(result) == counts(created=3)
    assert "3 listed, 3 processed" in result.stderr and "[#" not in result.stderr
