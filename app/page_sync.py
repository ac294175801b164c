"""Storing a page of Clerk users at once, for backfill and reconcile.

The rules are `app.sync`'s, applied to a whole page in a few engine round trips
instead of a transaction per user:

1. one read of the page's stored rows turns away every snapshot that a committed
   row already makes stale or that hits a tombstone (versions only grow and
   tombstones are final, so that answer cannot change);
2. the rest are written in one transaction that first takes every remaining
   user's advisory lock (the same lock the webhooks and after-login take), reads
   their rows again under it, and upserts each still-newer snapshot with
   `prisma.user.upsert` keyed on `clerkId`, all in one batch.

A webhook for one of these users waits for the page's transaction, or the page
waits for it; either way "read, compare, upsert" stays atomic per user.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime

from prisma import Prisma
from prisma.models import User

from .clerk.users import ClerkUser
from .sync import (
    SyncOutcome,
    judge_snapshot,
    judge_stored,
    lock_user,
    snapshot_fields,
    transaction,
    upsert_user,
)

WRITES = (SyncOutcome.CREATED, SyncOutcome.UPDATED)

# A raw statement instead of one `lock_user` per user: it takes the page's locks in
# one round trip. Sorting the keys gives every page writer the same lock order, so two
# runs at once cannot deadlock; webhooks take one lock each and cannot either.
_LOCK_USERS = """
SELECT count(pg_advisory_xact_lock(key)) FROM (
  SELECT DISTINCT hashtextextended(id, 0) AS key FROM json_array_elements_text($1::json) AS id ORDER BY key
) AS keys
"""


def sync_page(db: Prisma, users: Sequence[ClerkUser]) -> list[SyncOutcome]:
    """Store every snapshot of a page by the sync rules; one outcome per user, in order.

    A user listed twice in one page is judged once, by its newest snapshot; the
    other copies count as unchanged. Raises what the Prisma client raises when the
    database fails; nothing of the page is written then.
    """
    newest = _newest_per_user(users)
    decided = _judge(_stored(db, newest), newest.values())
    pending = [user for user in newest.values() if decided[user.id] in WRITES]
    if pending:
        decided.update(_write_locked(db, pending))
    return [decided[user.id] if newest[user.id] is user else SyncOutcome.UNCHANGED for user in users]


def predict_page(db: Prisma, users: Sequence[ClerkUser], planned: dict[str, datetime]) -> list[SyncOutcome]:
    """What `sync_page` would decide, from a read-only look; writes nothing.

    `planned` holds the versions a real run would have written so far in this
    run, so a user listed twice (offset paging can do that) counts alike.
    """
    stored = _stored(db, {user.id: user for user in users})
    outcomes = []
    for user in users:
        row = stored.get(user.id)
        outcome, _ = judge_snapshot(
            exists=row is not None or user.id in planned,
            deleted=row is not None and row.deletedAt is not None,
            stored_version=planned.get(user.id, row.clerkUpdatedAt if row is not None else None),
            incoming=user.updated_at_datetime,
        )
        if outcome in WRITES:
            planned[user.id] = user.updated_at_datetime
        outcomes.append(outcome)
    return outcomes


def lock_users(tx: Prisma, clerk_ids: Iterable[str]) -> None:
    """`sync.lock_user` for many users in one statement, in a fixed order."""
    ids = list(clerk_ids)
    if len(ids) == 1:
        lock_user(tx, ids[0])
    elif ids:
        tx.query_raw(_LOCK_USERS, json.dumps(ids))


def _newest_per_user(users: Iterable[ClerkUser]) -> dict[str, ClerkUser]:
    newest: dict[str, ClerkUser] = {}
    for user in users:
        seen = newest.get(user.id)
        if seen is None or user.updated_at > seen.updated_at:
            newest[user.id] = user
    return newest


def _stored(db: Prisma, users: dict[str, ClerkUser]) -> dict[str, User]:
    if not users:
        return {}
    rows = db.user.find_many(where={"clerkId": {"in": list(users)}})
    return {row.clerkId: row for row in rows}


def _judge(stored: dict[str, User], users: Iterable[ClerkUser]) -> dict[str, SyncOutcome]:
    return {user.id: judge_stored(stored.get(user.id), user)[0] for user in users}


def _write_locked(db: Prisma, users: list[ClerkUser]) -> dict[str, SyncOutcome]:
    """Lock, judge again under the locks, and upsert what is still newer: one transaction."""
    with transaction(db) as tx:
        lock_users(tx, (user.id for user in users))
        decided = _judge(_stored(tx, {user.id: user for user in users}), users)
        writes = [user for user in users if decided[user.id] in WRITES]
        if writes:
            with tx.batch_() as batch:
                for user in writes:
                    upsert_user(batch, user.id, snapshot_fields(user))
    return decided
