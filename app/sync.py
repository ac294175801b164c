"""Writing Clerk users into the `User` table.

Every write, from after-login, a webhook or a backfill, comes through here and
ends in `prisma.user.upsert` keyed on `clerkId`. Correctness under duplicates,
reordering and races rests on three rules, enforced inside one transaction that
holds a per-user advisory lock:

- a snapshot is written only if its Clerk `updated_at` is newer than the stored one;
- a tombstone (`deletedAt`) is final: nothing refills or revives the row;
- the lock serialises every writer of one user, so "read, compare, upsert" is atomic
  even when the row does not exist yet.

Because versions only grow and tombstones are final, a snapshot that a committed
row already makes stale can be turned away without the lock: `sync_user_with_database`
reads first, so a returning user's after-login costs one query, not a transaction.

A write is one engine round trip: a batch of [lock, read, upsert], where the
upsert's `where` carries the rules (`snapshot_where`, `tombstone_where`). When
the stored row is as new or deleted, nothing matches, the create branch runs
into the unique `clerkId`, and the whole batch rolls back: the write was refused
(`GuardRefused`). The interactive transaction (`apply_snapshot`) remains for the
rare case a caller must decide in Python under the lock.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from prisma import Batch, Prisma
from prisma.errors import UniqueViolationError
from prisma.models import User

from .batch import ResultBatch
from .clerk.users import ClerkUser
from .db import get_db

# Long enough to queue behind other writers of the same user under load.
TRANSACTION_MAX_WAIT = timedelta(seconds=10)
TRANSACTION_TIMEOUT = timedelta(seconds=15)

_PERSONAL_FIELDS = ("email", "firstName", "lastName", "username", "imageUrl")


class SyncOutcome(enum.StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    """The stored snapshot is as new (identical) or newer (the incoming one is stale)."""
    DELETED = "deleted"
    """A tombstone was written."""
    IGNORED_DELETED = "ignored_deleted"
    """The user is tombstoned; the snapshot was dropped."""


@dataclass(frozen=True, slots=True)
class SyncResult:
    outcome: SyncOutcome
    user: User
    reason: str = ""


@contextmanager
def transaction(db: Prisma) -> Iterator[Prisma]:
    """An interactive transaction: commits on success, rolls back on any exception."""
    with db.tx(max_wait=TRANSACTION_MAX_WAIT, timeout=TRANSACTION_TIMEOUT) as tx:
        yield tx


# Raw because Prisma has no lock that also covers a row that does not exist yet.
LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"


def lock_user(tx: Prisma | Batch, clerk_id: str) -> None:
    """Hold a transaction-scoped lock on one Clerk user id, row or no row.

    In a batch it must be a statement of its own, before any that reads the row:
    under READ COMMITTED a statement sees the data as of its start, so a read in
    the same statement as the lock could miss the previous holder's commit.
    """
    tx.execute_raw(LOCK_SQL, clerk_id)


class GuardRefused(Exception):
    """The guarded upsert matched no row it may change: the stored row is as new, or deleted."""


def refused_by_guard(exc: UniqueViolationError) -> bool:
    """Whether a unique violation is the guard's (on `clerkId`), not another constraint's."""
    meta = exc.meta if isinstance(exc.meta, dict) else {}
    return meta.get("target") in (["clerkId"], "User_clerkId_key")


def snapshot_where(user: ClerkUser) -> dict[str, Any]:
    """The rows a snapshot may overwrite: alive, and older (or unversioned); `judge_snapshot` in SQL."""
    return {
        "clerkId": user.id,
        "deletedAt": None,
        "OR": [{"clerkUpdatedAt": None}, {"clerkUpdatedAt": {"lt": user.updated_at_datetime}}],
    }


def tombstone_where(clerk_id: str) -> dict[str, Any]:
    """The rows a deletion may overwrite: any that is not a tombstone yet."""
    return {"clerkId": clerk_id, "deletedAt": None}


def snapshot_fields(user: ClerkUser) -> dict[str, Any]:
    return {
        "email": user.email,
        "firstName": user.first_name,
        "lastName": user.last_name,
        "username": user.username,
        "imageUrl": user.image_url,
        "clerkUpdatedAt": user.updated_at_datetime,
    }


def tombstone_fields(at: datetime | None) -> dict[str, Any]:
    # The version goes too: a tombstone is the same row whether or not a snapshot came first.
    return {"deletedAt": at or datetime.now(UTC), "clerkUpdatedAt": None, **dict.fromkeys(_PERSONAL_FIELDS)}


def upsert_user(
    writer: Prisma | Batch, clerk_id: str, fields: dict[str, Any], *, where: dict[str, Any] | None = None
) -> User | None:
    """The one user write: `prisma.user.upsert` keyed on `clerkId`, guarded by an extended `where`
    when given. Through a client it returns the row; in a batch, None."""
    return writer.user.upsert(
        where=where or {"clerkId": clerk_id},  # type: ignore[arg-type]  # extended unique where; stubs know clerkId
        data={"create": {"clerkId": clerk_id, **fields}, "update": fields},
    )


# `judge_snapshot` and the deletion's rule in SQL, over the user row `u` as it stands under
# the lock (all NULL when there is none): the outcome of a write that goes ahead ('created',
# 'updated', 'deleted'), or NULL when the stored row is as new or a tombstone. $4 is the
# incoming version.
SNAPSHOT_OUTCOME_SQL = (
    """CASE WHEN u."clerkId" IS NULL THEN 'created' WHEN u."deletedAt" IS NOT NULL THEN NULL """
    """WHEN u."clerkUpdatedAt" >= $4::timestamptz THEN NULL ELSE 'updated' END"""
)
DELETION_OUTCOME_SQL = """CASE WHEN u."deletedAt" IS NOT NULL THEN NULL ELSE 'deleted' END"""


@dataclass(frozen=True, slots=True)
class UserWrite:
    """One event's write in a form a caller's batch can carry, plus the interactive way to plan it."""

    clerk_id: str
    fields: dict[str, Any]
    kind: str
    """"snapshot" or "deletion": which `*_OUTCOME_SQL` judges it."""
    version: datetime | None
    plan: Callable[[Prisma], Plan]


def snapshot_write(user: ClerkUser) -> UserWrite:
    return UserWrite(
        user.id,
        snapshot_fields(user),
        "snapshot",
        user.updated_at_datetime,
        lambda tx: plan_snapshot(tx, user),
    )


def deletion_write(clerk_id: str, *, at: datetime | None = None) -> UserWrite:
    at = at or datetime.now(UTC)
    return UserWrite(
        clerk_id,
        tombstone_fields(at),
        "deletion",
        None,
        lambda tx: plan_deletion(tx, clerk_id, at=at),
    )


def write_at_once(
    db: Prisma, clerk_id: str, where: dict[str, Any], fields: dict[str, Any]
) -> tuple[bool, User]:
    """Lock, read and guarded upsert in one round trip; returns (whether the row existed, the row).

    Raises `GuardRefused` when the guard matched nothing (nothing was written).
    """
    batch = ResultBatch(db)
    lock_user(batch, clerk_id)
    batch.find_unique(User, {"clerkId": clerk_id})
    upsert_user(batch, clerk_id, fields, where=where)
    try:
        _, before, after = batch.commit_with_results()
    except UniqueViolationError as exc:
        if refused_by_guard(exc):
            raise GuardRefused from None
        raise
    return before is not None, User.model_validate(after)


def sync_user_with_database(user: ClerkUser, db: Prisma | None = None) -> SyncResult:
    """Store a Clerk user snapshot in the `User` row keyed by its Clerk id.

    Writes `email` (the primary address), `firstName`, `lastName`, `username`,
    `imageUrl` and `clerkUpdatedAt` with `prisma.user.upsert`, but only when the
    snapshot's `updated_at` is newer than the stored one and the row is not a
    tombstone.

    Returns a `SyncResult` whose outcome is `created` or `updated` when it wrote,
    `unchanged` when the stored snapshot was identical or newer (reason
    "identical" or "stale"), or `ignored_deleted` when the user is tombstoned;
    `user` is the row as stored afterwards.

    Raises the Prisma client's errors (`prisma.errors.PrismaError`) or
    `httpx.TransportError` when the database or its engine fails; nothing is
    written then.

    `db` defaults to the current Flask app's client.
    """
    db = db or get_db()
    # Fast path, without lock or transaction: versions only grow and tombstones are
    # final, so a committed row that is already as new (or deleted) stays that way.
    stored = db.user.find_unique(where={"clerkId": user.id})
    if stored is not None:
        outcome, reason = judge_stored(stored, user)
        if outcome in (SyncOutcome.UNCHANGED, SyncOutcome.IGNORED_DELETED):
            return SyncResult(outcome, stored, reason)
    try:
        existed, row = write_at_once(db, user.id, snapshot_where(user), snapshot_fields(user))
    except GuardRefused:
        # Someone stored a version as new (or a tombstone) meanwhile; both are final for this snapshot.
        stored = db.user.find_unique(where={"clerkId": user.id})
        outcome, reason = judge_stored(stored, user)
        if stored is None or outcome not in (SyncOutcome.UNCHANGED, SyncOutcome.IGNORED_DELETED):
            # Only if the row vanished (a manual delete): decide under the lock instead.
            with transaction(db) as tx:
                return apply_snapshot(tx, user)
        return SyncResult(outcome, stored, reason)
    return SyncResult(SyncOutcome.UPDATED if existed else SyncOutcome.CREATED, row)


def delete_user_from_database(
    clerk_id: str, db: Prisma | None = None, *, at: datetime | None = None
) -> SyncResult:
    """Tombstone a user: set `deletedAt`, clear personal data, keep the row.

    A deletion for an id never seen still stores a tombstone, so a `user.created`
    delivered late cannot bring the user back. Raises as `sync_user_with_database`.
    """
    db = db or get_db()
    try:
        _, row = write_at_once(db, clerk_id, tombstone_where(clerk_id), tombstone_fields(at))
    except GuardRefused:
        stored = db.user.find_unique(where={"clerkId": clerk_id})
        if stored is None or stored.deletedAt is None:
            with transaction(db) as tx:  # the row vanished meanwhile: decide under the lock
                return apply_deletion(tx, clerk_id, at=at)
        return SyncResult(SyncOutcome.UNCHANGED, stored, "already deleted")
    return SyncResult(SyncOutcome.DELETED, row)


def judge_snapshot(
    *, exists: bool, deleted: bool, stored_version: datetime | None, incoming: datetime
) -> tuple[SyncOutcome, str]:
    """What storing a snapshot with version `incoming` does to a row; pure, so a dry run can ask too.

    Returns the outcome and, for `unchanged`, why: "identical" or "stale".
    """
    if not exists:
        return SyncOutcome.CREATED, ""
    if deleted:
        return SyncOutcome.IGNORED_DELETED, "deleted"
    if stored_version is not None and stored_version >= incoming:
        return SyncOutcome.UNCHANGED, "identical" if stored_version == incoming else "stale"
    return SyncOutcome.UPDATED, ""


def judge_stored(stored: User | None, user: ClerkUser) -> tuple[SyncOutcome, str]:
    """`judge_snapshot` for a stored row (or None) and an incoming snapshot."""
    return judge_snapshot(
        exists=stored is not None,
        deleted=stored is not None and stored.deletedAt is not None,
        stored_version=stored.clerkUpdatedAt if stored is not None else None,
        incoming=user.updated_at_datetime,
    )


@dataclass(frozen=True, slots=True)
class Plan:
    """What a sync decided under its user's lock, and the upsert that carries it out, if any.

    Splitting the decision from the write lets a caller put the write in a batch
    with its own (the webhook's delivery record): one engine round trip for both.
    """

    outcome: SyncOutcome
    stored: User | None
    clerk_id: str
    reason: str = ""
    fields: dict[str, Any] | None = None
    """The columns to upsert; None when the plan writes nothing."""

    def write(self, writer: Prisma | Batch) -> User | None:
        """Run the upsert through a transaction client (returns the row) or a batch (returns None)."""
        return None if self.fields is None else upsert_user(writer, self.clerk_id, self.fields)


def plan_snapshot(tx: Prisma, user: ClerkUser) -> Plan:
    """Lock the user and decide what storing `user` does; writes nothing yet."""
    lock_user(tx, user.id)
    stored = tx.user.find_unique(where={"clerkId": user.id})
    outcome, reason = judge_stored(stored, user)
    if outcome not in (SyncOutcome.CREATED, SyncOutcome.UPDATED):
        return Plan(outcome, stored, user.id, reason)
    return Plan(outcome, stored, user.id, fields=snapshot_fields(user))


def plan_deletion(tx: Prisma, clerk_id: str, *, at: datetime | None = None) -> Plan:
    """Lock the user and decide what deleting it does; writes nothing yet."""
    lock_user(tx, clerk_id)
    stored = tx.user.find_unique(where={"clerkId": clerk_id})
    if stored is not None and stored.deletedAt is not None:
        return Plan(SyncOutcome.UNCHANGED, stored, clerk_id, "already deleted")
    return Plan(SyncOutcome.DELETED, stored, clerk_id, fields=tombstone_fields(at))


def apply_snapshot(tx: Prisma, user: ClerkUser) -> SyncResult:
    """`sync_user_with_database` inside a transaction the caller owns."""
    return _apply(tx, plan_snapshot(tx, user))


def apply_deletion(tx: Prisma, clerk_id: str, *, at: datetime | None = None) -> SyncResult:
    """`delete_user_from_database` inside a transaction the caller owns."""
    return _apply(tx, plan_deletion(tx, clerk_id, at=at))


def _apply(tx: Prisma, plan: Plan) -> SyncResult:
    row = plan.write(tx)
    stored = row if row is not None else plan.stored
    assert stored is not None, "a plan that writes nothing has a stored row"
    return SyncResult(plan.outcome, stored, plan.reason)
