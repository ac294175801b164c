"""The ceilings every phase is quoted against, measured in the same run.

c1, the DB ceiling: the very statement the engine issues for `prisma.user.upsert`
(`INSERT INTO "User" ... ON CONFLICT ("clerkId") DO UPDATE ... RETURNING`, same
columns and values), one per new user, sent by psycopg on autocommit connections,
one per client thread.

c2, the HTTP + verification ceiling: a correctly signed POST /webhooks/clerk whose
body is `{"type": ""}`, sent by the same load generator as the phases. svix
verifies it, then the app refuses it as unusable (400): the full HTTP and
signature path of a webhook, without database work. (The requests are
`workload.noop_requests`.)
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import psycopg

from .cpu import CpuMeter, CpuSnapshot
from .load import PhaseResult, loadavg, start_line, wait_for
from .workload import fake_user_id


def cuid_like() -> str:
    return "c" + uuid.uuid4().hex[:24]


# The statement the engine issues for `prisma.user.upsert` (captured with LOG_QUERIES), in psycopg syntax.
USER_COLUMNS = '"id", "clerkId", "email", "firstName", "lastName", "username", "imageUrl", '
USER_COLUMNS += '"clerkUpdatedAt", "deletedAt", "createdAt", "updatedAt"'
USER_RETURNING = ", ".join(f'"public"."User".{c.strip()}' for c in USER_COLUMNS.split(","))
UPSERT_USER_SQL = (
    'INSERT INTO "public"."User" ("id","clerkId","email","firstName","lastName","username","imageUrl",'
    '"clerkUpdatedAt","createdAt","updatedAt") VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) '
    'ON CONFLICT ("clerkId") DO UPDATE SET "email" = %s, "firstName" = %s, "lastName" = %s, '
    '"username" = %s, "imageUrl" = %s, "clerkUpdatedAt" = %s, "updatedAt" = %s '
    'WHERE ("public"."User"."clerkId" = %s AND 1=1) RETURNING ' + USER_RETURNING
)
# The engine's statements for one new user's webhook (captured with LOG_QUERIES), in psycopg
# syntax, for the profile's replay: BEGIN, the lock, the delivery record, the upsert above, COMMIT.
LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"
RECORD_DELIVERY_SQL = (
    'INSERT INTO "WebhookDelivery" ("svixId", "eventType", "clerkUserId", "outcome") SELECT %s, %s, %s, '
    """CASE WHEN u."clerkId" IS NULL THEN 'created' WHEN u."deletedAt" IS NOT NULL THEN NULL """
    """WHEN u."clerkUpdatedAt" >= %s::timestamptz THEN NULL ELSE 'updated' END """
    'FROM (SELECT 1) AS one LEFT JOIN "User" AS u ON u."clerkId" = %s RETURNING "outcome"'
)


def run_db_ceiling(
    result: PhaseResult, url: str, n: int, *, clients: int, time_limit: float, meter: CpuMeter
) -> PhaseResult:
    """c1: the engine's upsert statement for the same table and values, as fast as psycopg sends it."""
    now = datetime.now(UTC)

    def params(clerk_id: str) -> tuple[Any, ...]:
        fields = (
            f"{clerk_id}@example.com",
            "Ada",
            "Lovelace",
            clerk_id[-12:],
            "https://img.clerk.com/x",
            now,
        )
        return (cuid_like(), clerk_id, *fields, now, now, *fields, now, clerk_id)

    rows = [params(fake_user_id()) for _ in range(n)]
    warmup = [params(fake_user_id()) for _ in range(clients * 4)]
    counter = itertools.count()
    records: list[tuple[float, float] | None] = [None] * n
    barrier, deadline, start = start_line(clients, time_limit, meter)
    # CPU is sampled again while the connections are still open: their backends exit with them.
    ends: list[CpuSnapshot] = []
    finish_line = threading.Barrier(clients, action=lambda: ends.append(meter.snapshot()))
    failures: list[BaseException] = []

    def client_thread(index: int) -> None:
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                for row in warmup[index::clients]:
                    conn.execute(UPSERT_USER_SQL, row).fetchall()
                barrier.wait()
                while True:
                    i = next(counter)
                    if i >= n or time.perf_counter() > deadline[0]:
                        break
                    t0 = time.perf_counter()
                    conn.execute(UPSERT_USER_SQL, rows[i]).fetchall()
                    records[i] = (t0, time.perf_counter())
                finish_line.wait()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)
            barrier.abort()
            finish_line.abort()

    threads = [threading.Thread(target=client_thread, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    result.load_before = loadavg()
    wait_for(threads, barrier, deadline)
    end = ends[0] if ends else meter.snapshot()
    result.load_after = loadavg()
    if failures:
        raise RuntimeError(f"{result.key}: a client thread failed: {failures[0]!r}") from failures[0]
    done = [r for r in records if r is not None]
    result.timed_out = len(done) < n
    result.set_latencies([t1 - t0 for t0, t1 in done])
    result.statuses = Counter({"ok": len(done)})
    result.wall = (max(t1 for _, t1 in done) - min(t0 for t0, _ in done)) if done else 0.0
    result.cpu = CpuMeter.delta(start[0], end)
    return result
