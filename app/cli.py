"""`flask clerk ...`: operator commands.

`backfill` imports every existing Clerk user, `reconcile` also finds users
deleted in Clerk whose `user.deleted` never arrived, and `sync-user` fetches one
user. All write through the same rules as after-login and the webhooks (newest
snapshot wins, tombstones are final), so running them at any time, twice, or
concurrently with live traffic is safe. The runs themselves live in
`app.backfill` and `app.reconcile`; this module only parses options and reports.

Output: results on stdout, progress and warnings on stderr. Nothing printed
ever includes the Clerk secret key or the database URL; database errors are
named by type only, because their messages can echo connection details.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NoReturn

import click
from flask import Flask
from flask.cli import AppGroup

from . import metrics
from .backfill import BACKFILL_LABELS, DEFAULT_PAGE_SIZE, DRY_RUN_NAMES, PageRun, RunStopped, user_count
from .clerk import current_clerk
from .clerk.api import MAX_PAGE_SIZE, ClerkAPI, ClerkAPIError, ClerkUnavailable, ClerkUserNotFound
from .clerk.users import InvalidClerkUser, parse_clerk_user
from .db import DATABASE_ERRORS, get_db
from .errors import ApiError
from .progress import Progress, Tally, warn
from .reconcile import DEFAULT_MAX_TOMBSTONES, RECONCILE_LABELS, Reconcile
from .reconcile import DRY_RUN_NAMES as RECONCILE_DRY_RUN_NAMES
from .retries import RetryPolicy, call_with_retries, describe_error
from .sync import sync_user_with_database

clerk_cli = AppGroup("clerk", help="Mirror Clerk users into the database.")

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # the shell's convention for "killed by SIGINT"


def init_app(app: Flask) -> None:
    app.cli.add_command(clerk_cli)


# --- options and errors ---------------------------------------------------------------------


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


page_size_option = click.option(
    "--page-size",
    type=click.IntRange(1, MAX_PAGE_SIZE),
    default=DEFAULT_PAGE_SIZE,
    show_default=True,
    help="Users per request to Clerk's list endpoint; each page is written in one transaction.",
)


def build_policy(max_retries: int, retry_delay: float, max_wait: float) -> RetryPolicy:
    return RetryPolicy(max_retries=max_retries, base_delay=retry_delay, max_wait=max_wait)


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    raise click.exceptions.Exit(code)


def require_api() -> ClerkAPI:
    try:
        return current_clerk().require_api()
    except ApiError as exc:
        fail(exc.message)


# --- backfill -----------------------------------------------------------------------------------


def resume_command(offset: int, page_size: int, dry_run: bool) -> str:
    parts = ["flask clerk backfill", f"--offset {offset}"]
    if page_size != DEFAULT_PAGE_SIZE:
        parts.append(f"--page-size {page_size}")
    if dry_run:
        parts.append("--dry-run")
    return " ".join(parts)


@clerk_cli.command("backfill")
@page_size_option
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
    page in one transaction, through the same rules as after-login and the webhooks: a snapshot is
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
    tally = Tally(BACKFILL_LABELS, DRY_RUN_NAMES if dry_run else {})
    run = PageRun(
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
    except RunStopped as exc:
        warn(f"Stopped: {exc}. Resume with: {resume_command(exc.resume_offset, page_size, dry_run)}")
        code = EXIT_FAILED
    except KeyboardInterrupt:
        warn(f"Interrupted. Resume with: {resume_command(run.offset, page_size, dry_run)}")
        code = EXIT_INTERRUPTED
    finish(tally, dry_run, code)


def finish(tally: Tally, dry_run: bool, code: int) -> None:
    """Print the summary line and exit: `code`, else 1 if anything failed, else 0."""
    Progress.current().interrupt_line()
    prefix = "Dry run, nothing written. Summary" if dry_run else "Summary"
    click.echo(f"{prefix}: {tally.describe()} ({tally.total} users)")
    if code == 0 and tally.failed:
        code = EXIT_FAILED
    if code:
        raise click.exceptions.Exit(code)


# --- reconcile ----------------------------------------------------------------------------------


@clerk_cli.command("reconcile")
@page_size_option
@click.option("--dry-run", is_flag=True, help="Write nothing; print every change a real run would make.")
@click.option(
    "--max-tombstones",
    type=click.IntRange(min=0),
    default=DEFAULT_MAX_TOMBSTONES,
    show_default=True,
    help="Tombstone nothing if Clerk confirms more deletions than this (a wrong CLERK_SECRET_KEY looks so).",
)
@retry_options
def reconcile(
    page_size: int,
    dry_run: bool,
    max_tombstones: int,
    max_retries: int,
    retry_delay: float,
    max_wait: float,
) -> None:
    """Bring the database back in line with Clerk, including deletions that never arrived.

    Forward: every user in Clerk's list is stored exactly as backfill stores it
    (newest snapshot wins, tombstones are final). Backward: a row that was live
    when the run started, whose user the listing did not show and whose row
    nobody wrote during the run, is a candidate. Each candidate is fetched by id
    (GET /v1/users/{id}): 404 tombstones it as a user.deleted webhook would,
    200 stores the snapshot and keeps it, any other failure leaves it alone and
    counts as failed. A listing that cannot be finished checks no candidates.

    Prints each change on stdout (created, updated, tombstoned, with the Clerk
    id; "would ..." in a dry run), progress on stderr, and a summary: created,
    updated, unchanged, tombstoned, kept, failed.

    Safe while live traffic flows: locks are taken per write, never across a
    Clerk call, and a row written during the run is never tombstoned.

    Exit status: 0 when clean, 1 if anything failed or the run stopped early,
    130 if interrupted (nothing half-written either way).
    """
    api = require_api()
    tally = Tally(RECONCILE_LABELS, RECONCILE_DRY_RUN_NAMES if dry_run else {})
    run = Reconcile(
        api=api,
        policy=build_policy(max_retries, retry_delay, max_wait),
        dry_run=dry_run,
        tally=tally,
        page_size=page_size,
        max_tombstones=max_tombstones,
        total=user_count(api),
    )
    code = 0
    try:
        run.run()
    except RunStopped as exc:
        warn(f"Stopped: {exc}.")
        code = EXIT_FAILED
    except DATABASE_ERRORS as exc:
        warn(f"Stopped: {describe_error(exc)}.")
        code = EXIT_FAILED
    except KeyboardInterrupt:
        warn("Interrupted; every write so far is complete. Run it again to finish.")
        code = EXIT_INTERRUPTED
    finish(tally, dry_run, code)


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
    except DATABASE_ERRORS as exc:
        fail(f"{describe_error(exc)}; nothing written. Try again later.")
    metrics.user_synced("backfill", result.outcome)
    reason = f" ({result.reason})" if result.reason else ""
    click.echo(f"{user.id}: {result.outcome.value}{reason}")
