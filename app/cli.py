"""`flask clerk ...`: operator commands.

`backfill` imports every existing Clerk user and `sync-user` one of them. Both
write through `sync_user_with_database`, the same rules as after-login and the
webhooks (newest snapshot wins, tombstones are final), so running them at any
time, twice, or concurrently with live traffic is safe.

Output: results on stdout, progress and warnings on stderr. Nothing printed
ever includes the Clerk secret key or the database URL; database errors are
named by type only, because their messages can echo connection details.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, NoReturn, TypeVar

import click
from flask import Flask
from flask.cli import AppGroup
from prisma import Prisma

from .clerk import current_clerk
from .clerk.api import MAX_PAGE_SIZE, ClerkAPI, ClerkAPIError, ClerkUnavailable, ClerkUserNotFound
from .clerk.users import ClerkUser, InvalidClerkUser, parse_clerk_user
from .db import UNAVAILABLE_ERRORS, get_db
from .errors import ApiError
from .sync import SyncOutcome, judge_snapshot, sync_user_with_database

T = TypeVar("T")

clerk_cli = AppGroup("clerk", help="Mirror Clerk users into the database.")

DEFAULT_PAGE_SIZE = 100
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # the shell's convention for "killed by SIGINT"
# After this many users in a row could not be written, the database is down, not
# the users: stop instead of spending the full retry budget on every remaining one.
MAX_CONSECUTIVE_DB_FAILURES = 3

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (ClerkUnavailable, *UNAVAILABLE_ERRORS)
FAILED = "failed"
TALLY_LABELS = ("created", "updated", "unchanged", "deleted-skipped", FAILED)


def init_app(app: Flask) -> None:
    app.cli.add_command(clerk_cli)


# --- retries ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to retry a transient failure (Clerk or the database)."""

    max_retries: int = 5
    base_delay: float = 0.5
    max_wait: float = 60.0

    def wait_before(self, retry: int, exc: BaseException) -> float:
        """Seconds before retry number `retry` (from 1): Clerk's Retry-After if it sent one,
        else exponential backoff; either capped by `max_wait` so a bogus header can't stall us."""
        retry_after = exc.retry_after if isinstance(exc, ClerkUnavailable) else None
        if retry_after is not None:
            return min(retry_after, self.max_wait)
        return min(self.base_delay * 2 ** (retry - 1), self.max_wait)


def call_with_retries(action: Callable[[], T], policy: RetryPolicy, what: str) -> T:
    """Run `action`, retrying transient errors; the last one propagates once retries run out."""
    retry = 0
    while True:
        try:
            return action()
        except TRANSIENT_ERRORS as exc:
            if retry >= policy.max_retries:
                raise
            retry += 1
            wait = policy.wait_before(retry, exc)
            hint = " (Retry-After)" if isinstance(exc, ClerkUnavailable) and exc.retry_after else ""
            warn(f"{what}: {describe_error(exc)}; retry {retry}/{policy.max_retries} in {wait:.2f}s{hint}")
            time.sleep(wait)


def describe_error(exc: BaseException) -> str:
    """A printable reason. ClerkAPI's messages are built by us and safe; the database's are not."""
    if isinstance(exc, ClerkAPIError):
        return str(exc)
    return f"database unavailable ({type(exc).__name__})"


def retry_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The retry knobs, shared by every command that talks to Clerk and the database."""
    options = [
        click.option(
            "--max-retries",
            type=click.IntRange(min=0),
            default=5,
            show_default=True,
            help="Retries of a transient failure (Clerk 429/5xx/unreachable, database unavailable).",
        ),
        click.option(
            "--retry-delay",
            type=click.FloatRange(min=0),
            default=0.5,
            show_default=True,
            envvar="CLERK_SYNC_RETRY_DELAY",
            show_envvar=True,
            help="First backoff delay in seconds; doubles on every retry.",
        ),
        click.option(
            "--max-wait",
            type=click.FloatRange(min=0),
            default=60.0,
            show_default=True,
            help="Cap in seconds on any single wait, including one asked for by Retry-After.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def build_policy(max_retries: int, retry_delay: float, max_wait: float) -> RetryPolicy:
    return RetryPolicy(max_retries=max_retries, base_delay=retry_delay, max_wait=max_wait)


# --- output -------------------------------------------------------------------------------------


def warn(message: str) -> None:
    Progress.current().interrupt_line()
    click.echo(message, err=True)


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    raise click.exceptions.Exit(code)


def require_api() -> ClerkAPI:
    try:
        return current_clerk().require_api()
    except ApiError as exc:
        fail(exc.message)


class Progress:
    """A progress bar on stderr, over Clerk's user count when it has one, else a running count.

    On a terminal one line is rewritten in place; elsewhere (logs, CI) each page gets a line.
    """

    BAR_WIDTH = 30
    _current: Progress | None = None

    def __init__(self, total: int | None = None) -> None:
        self._total = total
        self._live = sys.stderr.isatty()
        self._dirty = False

    @classmethod
    def current(cls) -> Progress:
        if cls._current is None:
            cls._current = Progress()
        return cls._current

    @classmethod
    def start(cls, total: int | None) -> Progress:
        cls._current = Progress(total)
        return cls._current

    def page_done(self, next_offset: int, tally: Tally) -> None:
        position = f"{next_offset}/{self._total}" if self._total else f"{next_offset}"
        line = f"{self.bar(next_offset)}{position} listed, {tally.total} processed: {tally.describe()}"
        if self._live:
            click.echo("\r\x1b[2K" + line, err=True, nl=False)
            self._dirty = True
        else:
            click.echo(line, err=True)

    def bar(self, done: int) -> str:
        if not self._total:
            return ""
        filled = min(self.BAR_WIDTH, done * self.BAR_WIDTH // self._total)
        return f"[{'#' * filled}{'-' * (self.BAR_WIDTH - filled)}] "

    def interrupt_line(self) -> None:
        """End the in-place line so a message printed next starts on its own line."""
        if self._dirty:
            click.echo(err=True)
            self._dirty = False


# --- backfill -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Tally:
    """Outcome counts of a run; `dry_run` only changes how they are labelled."""

    dry_run: bool = False
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TALLY_LABELS, 0))

    def add(self, label: str) -> None:
        self.counts[label] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def failed(self) -> int:
        return self.counts[FAILED]

    def describe(self) -> str:
        names = {"created": "would create", "updated": "would update"} if self.dry_run else {}
        return ", ".join(f"{names.get(label, label)} {count}" for label, count in self.counts.items())


OUTCOME_LABELS = {
    SyncOutcome.CREATED: "created",
    SyncOutcome.UPDATED: "updated",
    SyncOutcome.UNCHANGED: "unchanged",
    SyncOutcome.IGNORED_DELETED: "deleted-skipped",
}


class BackfillStopped(Exception):
    """The run cannot usefully continue; it can be resumed at `resume_offset`."""

    def __init__(self, message: str, resume_offset: int) -> None:
        super().__init__(message)
        self.resume_offset = resume_offset


@dataclass(slots=True)
class Backfill:
    """One run over Clerk's user list, page by page from `offset`."""

    api: ClerkAPI
    policy: RetryPolicy
    page_size: int
    offset: int
    dry_run: bool
    tally: Tally
    progress: Progress
    planned: dict[str, datetime] = field(default_factory=dict)
    """Dry run only: versions a real run would have written so far, so a user listed twice counts alike."""
    consecutive_db_failures: int = 0

    def run(self) -> None:
        """Process pages until one comes back shorter than the page size.

        `offset` always points at the first page not yet finished, so it is the resume point.
        """
        while True:
            page = self.fetch_page()
            for index, raw in enumerate(page):
                self.tally.add(self.import_user(raw, self.offset + index))
            self.progress.page_done(self.offset + len(page), self.tally)
            self.offset += len(page)
            if len(page) < self.page_size:
                return

    def fetch_page(self) -> list[dict[str, Any]]:
        fetch = partial(self.api.list_users, limit=self.page_size, offset=self.offset)
        try:
            return call_with_retries(fetch, self.policy, f"GET /v1/users offset={self.offset}")
        except ClerkUnavailable as exc:
            raise BackfillStopped(f"Clerk is unavailable: {exc}", self.offset) from None
        except ClerkAPIError as exc:
            raise BackfillStopped(
                f"Clerk refused the request ({exc}); check CLERK_SECRET_KEY and CLERK_API_URL", self.offset
            ) from None

    def import_user(self, raw: dict[str, Any], position: int) -> str:
        """Parse and store (or, in a dry run, assess) one user; returns its tally label."""
        name = raw.get("id") if isinstance(raw.get("id"), str) else f"at offset {position}"
        try:
            user = parse_clerk_user(raw)
        except InvalidClerkUser as exc:
            warn(f"failed: user {name}: {exc}")
            return FAILED
        try:
            outcome = call_with_retries(partial(self.store, user), self.policy, f"user {user.id}")
        except UNAVAILABLE_ERRORS as exc:
            warn(f"failed: user {user.id}: {describe_error(exc)}")
            self.consecutive_db_failures += 1
            if self.consecutive_db_failures >= MAX_CONSECUTIVE_DB_FAILURES:
                self.tally.add(FAILED)
                raise BackfillStopped(
                    f"the database is unavailable ({self.consecutive_db_failures} users in a row failed)",
                    self.offset,
                ) from None
            return FAILED
        self.consecutive_db_failures = 0
        return OUTCOME_LABELS[outcome]

    def store(self, user: ClerkUser) -> SyncOutcome:
        if self.dry_run:
            return predict_outcome(get_db(), user, self.planned)
        return sync_user_with_database(user, get_db()).outcome


def predict_outcome(db: Prisma, user: ClerkUser, planned: dict[str, datetime]) -> SyncOutcome:
    """What `sync.apply_snapshot` would decide, from a read-only look at the stored row.

    Mirrors its rules: a tombstone is final; a snapshot is written only if newer than
    the stored `clerkUpdatedAt`. Records in `planned` what a real run would have written.
    """
    stored = db.user.find_unique(where={"clerkId": user.id})
    outcome, _ = judge_snapshot(
        exists=stored is not None or user.id in planned,
        deleted=stored is not None and stored.deletedAt is not None,
        stored_version=planned.get(user.id, stored.clerkUpdatedAt if stored is not None else None),
        incoming=user.updated_at_datetime,
    )
    if outcome in (SyncOutcome.CREATED, SyncOutcome.UPDATED):
        planned[user.id] = user.updated_at_datetime
    return outcome


def user_count(api: ClerkAPI) -> int | None:
    """Clerk's user count, for the progress bar; None (a plain count) if Clerk won't say."""
    try:
        return api.count_users()
    except ClerkAPIError:
        return None


def resume_command(offset: int, page_size: int, dry_run: bool) -> str:
    parts = ["flask clerk backfill", f"--offset {offset}"]
    if page_size != DEFAULT_PAGE_SIZE:
        parts.append(f"--page-size {page_size}")
    if dry_run:
        parts.append("--dry-run")
    return " ".join(parts)


@clerk_cli.command("backfill")
@click.option(
    "--page-size",
    type=click.IntRange(1, MAX_PAGE_SIZE),
    default=DEFAULT_PAGE_SIZE,
    show_default=True,
    help="Users per request to Clerk's list endpoint.",
)
@click.option(
    "--offset",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Start at this position of the list, e.g. to resume an interrupted run.",
)
@click.option("--dry-run", is_flag=True, help="Write nothing; report what a real run would do.")
@retry_options
def backfill(
    page_size: int, offset: int, dry_run: bool, max_retries: int, retry_delay: float, max_wait: float
) -> None:
    """Import every existing Clerk user into the database.

    Pages through Clerk's user list (GET /v1/users, newest first) and stores each
    user through the same rules as after-login and the webhooks: a snapshot is
    written only if it is newer than the stored one, and a deleted (tombstoned)
    user is never revived. Ends with a summary: created, updated, unchanged,
    deleted-skipped (tombstoned in the database) and failed.

    Safe to interrupt and re-run: every write is an idempotent upsert, so a
    re-run reports users already imported as unchanged. Ctrl-C prints the
    --offset to resume from.

    Rate limits (429 with Retry-After) and transient failures of Clerk or the
    database are retried with exponential backoff. A user that cannot be parsed,
    or still cannot be written after the retries, counts as failed and the run
    goes on.

    Caveat: offset pagination over a list that changes while it is read is not
    a snapshot. A user deleted during the run shifts later users back, so one
    may be skipped; a user created during the run shifts them forward, so one
    may be processed twice (harmless). Keep the Clerk webhooks enabled: they
    deliver every change made during the backfill. Re-run to catch anyone
    skipped.

    Exit status: 0 if every user was processed, 1 if any failed or the run
    stopped early, 130 if interrupted.
    """
    api = require_api()
    tally = Tally(dry_run=dry_run)
    run = Backfill(
        api=api,
        policy=build_policy(max_retries, retry_delay, max_wait),
        page_size=page_size,
        offset=offset,
        dry_run=dry_run,
        tally=tally,
        progress=Progress.start(user_count(api)),
    )
    code = 0
    try:
        run.run()
    except BackfillStopped as exc:
        warn(f"Stopped: {exc}. Resume with: {resume_command(exc.resume_offset, page_size, dry_run)}")
        code = EXIT_FAILED
    except KeyboardInterrupt:
        warn(f"Interrupted. Resume with: {resume_command(run.offset, page_size, dry_run)}")
        code = EXIT_INTERRUPTED
    run.progress.interrupt_line()
    prefix = "Dry run, nothing written. Summary" if dry_run else "Summary"
    click.echo(f"{prefix}: {tally.describe()} ({tally.total} users)")
    if code == 0 and tally.failed:
        code = EXIT_FAILED
    if code:
        raise click.exceptions.Exit(code)


# --- sync-user ----------------------------------------------------------------------------------


@clerk_cli.command("sync-user")
@click.argument("user_id")
@retry_options
def sync_user(user_id: str, max_retries: int, retry_delay: float, max_wait: float) -> None:
    """Fetch one user from Clerk by USER_ID (user_...) and store it.

    Prints the outcome: created, updated, unchanged (the stored snapshot is as
    new or newer) or ignored_deleted (the user is tombstoned here). Exits 1 if
    Clerk has no such user, or Clerk or the database stays unavailable.
    """
    api = require_api()
    policy = build_policy(max_retries, retry_delay, max_wait)
    try:
        raw = call_with_retries(partial(api.get_user, user_id), policy, f"GET /v1/users/{user_id}")
    except ClerkUserNotFound:
        fail(f"Clerk has no user {user_id!r}; nothing written.")
    except ClerkUnavailable as exc:
        fail(f"Clerk is unavailable ({exc}); nothing written. Try again later.")
    except ClerkAPIError as exc:
        fail(f"Clerk refused the request ({exc}); check CLERK_SECRET_KEY and CLERK_API_URL.")
    except ValueError as exc:
        fail(str(exc))

    try:
        user = parse_clerk_user(raw)
    except InvalidClerkUser as exc:
        fail(f"Clerk answered with something that is not a valid user: {exc}")
    if user.id != user_id:
        fail(f"Clerk answered with another user ({user.id!r}); nothing written.")

    try:
        result = call_with_retries(lambda: sync_user_with_database(user, get_db()), policy, f"user {user_id}")
    except UNAVAILABLE_ERRORS as exc:
        fail(f"{describe_error(exc)}; nothing written. Try again later.")
    reason = f" ({result.reason})" if result.reason else ""
    click.echo(f"{user.id}: {result.outcome.value}{reason}")
