"""Bringing the `User` table back in line with Clerk, lost deletions included.

Forward, every listed user is stored page by page exactly as backfill does
(`app.backfill.PageRun`). Backward, a row that was live when the run started
but whose user the listing never showed is only a *candidate*: offset paging
over a list that changes while it is read can skip users. Each candidate is
asked for by id: a 404 tombstones it as `user.deleted` would, a 200 stores the
snapshot, anything else leaves it alone and counts as failed.

A tombstone is written under the user's lock, and only if the row's `updatedAt`
is still the one read when the run started: a row some other writer touched
during the run (a webhook, a sign-in) is kept, and the next run looks again.
No lock is held across a Clerk call.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Literal

import click
from prisma import Prisma

from . import metrics
from .backfill import DEFAULT_PAGE_SIZE, Listed, PageRun, RunStopped
from .clerk.api import ClerkAPI, ClerkAPIError, ClerkUnavailable, ClerkUserNotFound
from .clerk.users import ClerkUser, InvalidClerkUser, parse_clerk_user
from .db import DATABASE_ERRORS, get_db
from .page_sync import WRITES, predict_page, sync_page
from .progress import FAILED, Progress, Tally, warn
from .retries import RetryPolicy, call_with_retries, describe_error
from .sync import SyncOutcome, plan_deletion, transaction

CREATED, UPDATED, UNCHANGED, TOMBSTONED, KEPT = "created", "updated", "unchanged", "tombstoned", "kept"
RECONCILE_LABELS = (CREATED, UPDATED, UNCHANGED, TOMBSTONED, KEPT, FAILED)
DRY_RUN_NAMES = {CREATED: "would create", UPDATED: "would update", TOMBSTONED: "would tombstone"}
# Backfill's labels as reconcile counts them: a listed user tombstoned here stays so (tombstones are final).
FORWARD_LABELS = {"deleted-skipped": UNCHANGED}
DEFAULT_MAX_TOMBSTONES = 100
MAX_CONSECUTIVE_CLERK_FAILURES = 3
_READ_CHUNK = 1000
GONE: Literal["gone"] = "gone"


@dataclass(slots=True)
class Reconcile:
    api: ClerkAPI
    policy: RetryPolicy
    dry_run: bool
    tally: Tally
    page_size: int = DEFAULT_PAGE_SIZE
    max_tombstones: int = DEFAULT_MAX_TOMBSTONES
    total: int | None = None
    """Clerk's user count, for the progress bar."""
    versions: dict[str, datetime] = field(default_factory=dict)
    """`updatedAt` of every live row when the run started."""
    seen: set[str] = field(default_factory=set)
    planned: dict[str, datetime] = field(default_factory=dict)
    clerk_failures_in_a_row: int = 0

    def run(self) -> None:
        """Forward, then backward; raises `RunStopped` if either cannot finish."""
        db = get_db()
        self.versions = call_with_retries(partial(live_versions, db), self.policy, "reading live rows")
        forward = PageRun(
            api=self.api,
            policy=self.policy,
            page_size=self.page_size,
            offset=0,
            dry_run=self.dry_run,
            tally=self.tally,
            progress=Progress.start(self.total),
            on_page=self.listed,
            planned=self.planned,
            source="reconcile",
            relabel=FORWARD_LABELS,
        )
        forward.run()
        # Only a complete listing may make candidates: a run stopped half-way raised above.
        candidates = self.unchanged_since_start([cid for cid in self.versions if cid not in self.seen])
        self.check(candidates)

    def listed(self, page: list[Listed]) -> None:
        for clerk_id, label in page:
            if clerk_id is not None:
                self.seen.add(clerk_id)
                if label in (CREATED, UPDATED):
                    self.report(label, clerk_id)

    def report(self, label: str, clerk_id: str, why: str = "") -> None:
        name = DRY_RUN_NAMES.get(label, label) if self.dry_run else label
        Progress.current().interrupt_line()
        click.echo(f"{name} {clerk_id}{f' ({why})' if why else ''}")

    def unchanged_since_start(self, clerk_ids: list[str]) -> list[str]:
        """Candidates whose row nobody wrote during the run; the others are kept without asking Clerk."""
        db = get_db()
        still = []
        for chunk in _chunks(clerk_ids, _READ_CHUNK):
            rows = call_with_retries(
                partial(db.user.find_many, where={"clerkId": {"in": chunk}}),
                self.policy,
                "reading candidates",
            )
            current = {row.clerkId: row for row in rows}
            for clerk_id in chunk:
                row = current.get(clerk_id)
                if row is not None and row.deletedAt is None and row.updatedAt == self.versions[clerk_id]:
                    still.append(clerk_id)
                else:
                    self.tally.add(KEPT)  # written during the run: that writer saw newer news than ours
        return still

    def check(self, candidates: list[str]) -> None:
        """Ask Clerk for each candidate; tombstone the ones it no longer has."""
        progress = Progress.start(len(candidates))
        gone: list[str] = []
        for done, clerk_id in enumerate(candidates, start=1):
            user = self.fetch(clerk_id)
            if user == GONE:
                gone.append(clerk_id)
            elif isinstance(user, ClerkUser):
                self.store_found(user)
            if done % 25 == 0 and done < len(candidates):
                progress.step(done, "candidates checked", self.tally)
        if len(gone) > self.max_tombstones:
            for _ in gone:
                self.tally.add(FAILED)
            raise RunStopped(
                f"{len(gone)} users to tombstone is more than --max-tombstones {self.max_tombstones}; "
                "nothing tombstoned. Check that CLERK_SECRET_KEY is this database's instance, "
                "then raise the limit",
                0,
            )
        for clerk_id in gone:
            self.tombstone(clerk_id)
        if candidates:
            progress.step(len(candidates), "candidates checked", self.tally)

    def fetch(self, clerk_id: str) -> ClerkUser | Literal["gone"] | None:
        """The user as Clerk has it, GONE for a 404, or None after counting a failure."""
        try:
            raw = call_with_retries(
                partial(self.api.get_user, clerk_id), self.policy, f"GET /v1/users/{clerk_id}"
            )
        except ClerkUserNotFound:
            self.clerk_failures_in_a_row = 0
            return GONE
        except ClerkUnavailable as exc:
            self.fail(clerk_id, str(exc))
            self.clerk_failures_in_a_row += 1
            if self.clerk_failures_in_a_row >= MAX_CONSECUTIVE_CLERK_FAILURES:
                raise RunStopped(f"Clerk is unavailable: {exc}", 0) from None
            return None
        except ClerkAPIError as exc:
            raise RunStopped(
                f"Clerk refused the request ({exc}); check CLERK_SECRET_KEY and CLERK_API_URL", 0
            ) from None
        except ValueError as exc:  # an id the client refuses to put in a path
            self.fail(clerk_id, str(exc))
            return None
        self.clerk_failures_in_a_row = 0
        try:
            user = parse_clerk_user(raw)
        except InvalidClerkUser as exc:
            self.fail(clerk_id, f"Clerk answered with an invalid user: {exc}")
            return None
        if user.id != clerk_id:
            self.fail(clerk_id, f"Clerk answered with another user ({user.id!r})")
            return None
        return user

    def store_found(self, user: ClerkUser) -> None:
        """Clerk still has the user (the listing missed it): store its snapshot, keep the row."""
        db = get_db()
        if self.dry_run:
            action = partial(predict_page, db, [user], self.planned)
        else:
            action = partial(sync_page, db, [user])
        try:
            [outcome] = call_with_retries(action, self.policy, f"user {user.id}")
        except DATABASE_ERRORS as exc:
            self.fail(user.id, describe_error(exc))
            return
        self.tally.add(KEPT)
        if not self.dry_run:
            metrics.user_synced("reconcile", outcome.value)
        if outcome in WRITES:
            self.report(UPDATED, user.id, "still in Clerk, missed by the listing")

    def tombstone(self, clerk_id: str) -> None:
        db = get_db()
        version = self.versions[clerk_id]
        if self.dry_run:
            action = partial(row_unchanged, db, clerk_id, version)
        else:
            action = partial(tombstone_if_unchanged, db, clerk_id, version)
        try:
            done = call_with_retries(action, self.policy, f"user {clerk_id}")
        except DATABASE_ERRORS as exc:
            self.fail(clerk_id, describe_error(exc))
            return
        if done:
            if not self.dry_run:
                metrics.user_synced("reconcile", SyncOutcome.DELETED.value)
            self.tally.add(TOMBSTONED)
            self.report(TOMBSTONED, clerk_id, "not found in Clerk")
        else:
            self.tally.add(KEPT)

    def fail(self, clerk_id: str, reason: str) -> None:
        warn(f"failed: user {clerk_id}: {reason}")
        self.tally.add(FAILED)


def live_versions(db: Prisma, batch: int = 5000) -> dict[str, datetime]:
    """`clerkId` -> `updatedAt` of every live (not tombstoned) row, read in keyset pages."""
    versions: dict[str, datetime] = {}
    last: str | None = None
    while True:
        after = {"cursor": {"clerkId": last}, "skip": 1} if last is not None else {}
        rows = db.user.find_many(take=batch, where={"deletedAt": None}, order={"clerkId": "asc"}, **after)
        versions.update((row.clerkId, row.updatedAt) for row in rows)
        if len(rows) < batch:
            return versions
        last = rows[-1].clerkId


def tombstone_if_unchanged(db: Prisma, clerk_id: str, version: datetime) -> bool:
    """Tombstone the user as `user.deleted` does, unless its row changed since `version`; True if written."""
    with transaction(db) as tx:
        plan = plan_deletion(tx, clerk_id)  # takes the user's lock and reads the row under it
        if plan.outcome is not SyncOutcome.DELETED or plan.stored is None or plan.stored.updatedAt != version:
            return False
        plan.write(tx)
        return True


def row_unchanged(db: Prisma, clerk_id: str, version: datetime) -> bool:
    """The dry run's `tombstone_if_unchanged`: would it write?"""
    row = db.user.find_unique(where={"clerkId": clerk_id})
    return row is not None and row.deletedAt is None and row.updatedAt == version


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
