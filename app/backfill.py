"""Walking Clerk's user list page by page and storing each page: backfill's run, and reconcile's forward pass.

Each page is written by `app.page_sync` in one transaction. If that fails, the
page's users are written one at a time with retries instead, so a bad user or a
blip costs only that user, and a database that stays down is noticed after a
few users and stops the run with the offset to resume from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from . import metrics
from .clerk.api import ClerkAPI, ClerkAPIError, ClerkUnavailable
from .clerk.users import ClerkUser, InvalidClerkUser, parse_clerk_user
from .db import DATABASE_ERRORS, get_db
from .page_sync import predict_page, sync_page
from .progress import FAILED, Progress, Tally, warn
from .retries import RetryPolicy, call_with_retries, describe_error, may_succeed_later
from .sync import SyncOutcome, sync_user_with_database

DEFAULT_PAGE_SIZE = 100
# After this many users in a row could not be written, the database is down, not
# the users: stop instead of spending the full retry budget on every remaining one.
MAX_CONSECUTIVE_DB_FAILURES = 3

BACKFILL_LABELS = ("created", "updated", "unchanged", "deleted-skipped", FAILED)
DRY_RUN_NAMES = {"created": "would create", "updated": "would update"}

OUTCOME_LABELS = {
    SyncOutcome.CREATED: "created",
    SyncOutcome.UPDATED: "updated",
    SyncOutcome.UNCHANGED: "unchanged",
    SyncOutcome.IGNORED_DELETED: "deleted-skipped",
}

# Tally labels as the metrics' `outcome` label spells them; failures are not syncs.
METRIC_OUTCOMES = {label: outcome.value for outcome, label in OUTCOME_LABELS.items()}

Listed = tuple[str | None, str]
"""A listed user's Clerk id (None if the listing did not even give one) and its tally label."""


class RunStopped(Exception):
    """The run cannot usefully continue; it can be resumed at `resume_offset`."""

    def __init__(self, message: str, resume_offset: int) -> None:
        super().__init__(message)
        self.resume_offset = resume_offset


@dataclass(slots=True)
class PageRun:
    """One pass over Clerk's user list from `offset`, storing (or, in a dry run, assessing) each page."""

    api: ClerkAPI
    policy: RetryPolicy
    page_size: int
    offset: int
    dry_run: bool
    tally: Tally
    progress: Progress
    on_page: Callable[[list[Listed]], None] | None = None
    """Told every page's users and their labels, after the page is stored."""
    planned: dict[str, datetime] = field(default_factory=dict)
    """Dry run only: versions a real run would have written so far, so a user listed twice counts alike."""
    source: str = "backfill"
    """The metrics' `source` label for what this run stores."""
    relabel: Mapping[str, str] = field(default_factory=dict)
    """Tally labels to count under another name (reconcile's own summary)."""
    consecutive_db_failures: int = 0

    def run(self) -> None:
        """Process pages until one comes back shorter than the page size.

        `offset` always points at the first page not yet finished, so it is the resume point.
        """
        while True:
            page = self.fetch_page()
            listed = self.store_page(page)
            for _, label in listed:
                self.tally.add(self.relabel.get(label, label))
                if not self.dry_run and label in METRIC_OUTCOMES:
                    metrics.user_synced(self.source, METRIC_OUTCOMES[label])
            if self.on_page is not None:
                self.on_page(listed)
            if page or not self.offset:  # an empty last page adds nothing to show
                self.progress.step(self.offset + len(page), "listed", self.tally)
            self.offset += len(page)
            if len(page) < self.page_size:
                return

    def fetch_page(self) -> list[dict[str, Any]]:
        fetch = partial(self.api.list_users, limit=self.page_size, offset=self.offset)
        try:
            return call_with_retries(fetch, self.policy, f"GET /v1/users offset={self.offset}")
        except ClerkUnavailable as exc:
            raise RunStopped(f"Clerk is unavailable: {exc}", self.offset) from None
        except ClerkAPIError as exc:
            raise RunStopped(
                f"Clerk refused the request ({exc}); check CLERK_SECRET_KEY and CLERK_API_URL", self.offset
            ) from None

    def store_page(self, page: list[dict[str, Any]]) -> list[Listed]:
        """Parse a page and store its valid users together; one (id, label) per listed user."""
        parsed: list[ClerkUser | None] = []
        for index, raw in enumerate(page):
            try:
                parsed.append(parse_clerk_user(raw))
            except InvalidClerkUser as exc:
                name = raw.get("id") if isinstance(raw.get("id"), str) else f"at offset {self.offset + index}"
                warn(f"failed: user {name}: {exc}")
                parsed.append(None)
        users = [user for user in parsed if user is not None]
        labels = iter(self.store_users(users))
        listed: list[Listed] = []
        for raw, user in zip(page, parsed, strict=True):
            if user is None:
                raw_id = raw.get("id")
                listed.append((raw_id if isinstance(raw_id, str) else None, FAILED))
            else:
                listed.append((user.id, next(labels)))
        return listed

    def store_users(self, users: list[ClerkUser]) -> list[str]:
        """Labels for `users`, in order: the page at once, else one by one."""
        db = get_db()
        if self.dry_run:
            predict = partial(predict_page, db, users, self.planned)
            try:
                outcomes = call_with_retries(predict, self.policy, f"page at offset {self.offset}")
            except DATABASE_ERRORS as exc:
                raise RunStopped(describe_error(exc), self.offset) from None
            return [OUTCOME_LABELS[outcome] for outcome in outcomes]
        try:
            outcomes = sync_page(db, users)
        except DATABASE_ERRORS as exc:
            warn(f"page at offset {self.offset}: {describe_error(exc)}; writing its users one by one")
            labels: list[str] = []
            try:
                for user in users:
                    labels.append(self.store_one(user))
            except RunStopped:
                for label in labels:  # the users before the stop were dealt with
                    self.tally.add(self.relabel.get(label, label))
                raise
            return labels
        self.consecutive_db_failures = 0
        return [OUTCOME_LABELS[outcome] for outcome in outcomes]

    def store_one(self, user: ClerkUser) -> str:
        """One user in its own transaction, with retries; stops the run if the database stays down."""
        try:
            outcome = call_with_retries(
                lambda: sync_user_with_database(user, get_db()).outcome, self.policy, f"user {user.id}"
            )
        except DATABASE_ERRORS as exc:
            warn(f"failed: user {user.id}: {describe_error(exc)}")
            if not may_succeed_later(exc):
                return FAILED  # this user's data, not the database being down
            self.consecutive_db_failures += 1
            if self.consecutive_db_failures >= MAX_CONSECUTIVE_DB_FAILURES:
                self.tally.add(FAILED)
                raise RunStopped(
                    f"the database is unavailable ({self.consecutive_db_failures} users in a row failed)",
                    self.offset,
                ) from None
            return FAILED
        self.consecutive_db_failures = 0
        return OUTCOME_LABELS[outcome]


def user_count(api: ClerkAPI) -> int | None:
    """Clerk's user count, for the progress bar; None (a plain count) if Clerk won't say."""
    try:
        return api.count_users()
    except ClerkAPIError:
        return None
