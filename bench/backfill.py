"""Backfill throughput, A/B: one transaction per user (before) against one per page (now).

    .venv/bin/python bench/backfill.py                 # 600 users, pages of 100, 3 rounds
    .venv/bin/python bench/backfill.py --users 2000 --page-size 500 --rounds 5

It is a benchmark, not a test. Every variant reads the same pages from the same
FakeClerk (tests/fakeclerk.py, in its own process so it doesn't share this one's
GIL; it never answers 429) into the same freshly migrated database, interleaved
round by round so that the machine's drift hits them alike:

    today      the backfill this replaced (main at 06c86f6): each listed user on its own,
               a lock-free read, then a transaction of its own (lock, read, upsert)
    per-user   each listed user through today's `sync.sync_user_with_database`, for
               comparison (optional: `--variants` adds it)
    page       `app.backfill.PageRun`, what `flask clerk backfill` runs now: one read
               per page, then one transaction (locks, read, batched upserts)
    createmany not shipped, for comparison (optional): `page`, but the users absent under the lock
               are inserted with one `prisma.user.create_many` instead of an upsert each
    psycopg    the ceiling: the same pages written by bare psycopg, one transaction
               per page taking the same advisory locks and one set-based
               `INSERT ... SELECT FROM unnest ... ON CONFLICT DO UPDATE ... WHERE newer`
    list-only  listing and parsing alone: Clerk's (the fake's) share of every variant

Each variant runs three scenarios: `new` (empty table: every user created),
`stale` (every row one second older than Clerk's: every user updated) and
`rerun` (every user unchanged). A warm-up round runs first, untimed (V8 needs a few
hundred queries before the engine runs at full speed). It prints users/s per round,
the medians, the ratios page/today and page/psycopg, and CPU milliseconds per
user by process (this one, the query engine, the database backends, the FakeClerk):
on a shared machine the CPU split is steadier than wall-clock rates.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import psycopg  # noqa: E402

from app import create_app  # noqa: E402
from app.backfill import BACKFILL_LABELS, PageRun  # noqa: E402
from app.clerk.api import ClerkAPI  # noqa: E402
from app.clerk.users import ClerkUser, parse_clerk_user  # noqa: E402
from app.config import Settings  # noqa: E402
from app.db import get_db  # noqa: E402
from app.page_sync import WRITES, lock_users  # noqa: E402
from app.progress import Progress, Tally  # noqa: E402
from app.retries import RetryPolicy  # noqa: E402
from app.sync import (  # noqa: E402
    Plan,
    SyncOutcome,
    apply_snapshot,
    judge_stored,
    snapshot_fields,
    sync_user_with_database,
    transaction,
)
from bench.services import child_process  # noqa: E402
from prisma_engines import engines, localdb, migrations  # noqa: E402
from tests.fakeclerk import FakeClerk  # noqa: E402

SCENARIOS = ("new", "stale", "rerun")
CPU_GROUPS = ("bench", "engine", "postgres", "fakeclerk")
CLK_TCK = os.sysconf("SC_CLK_TCK")
VARIANTS = ("today", "page", "psycopg", "list-only")
OPTIONAL = ("per-user", "createmany")

# The ceiling's page write: the advisory locks app/page_sync.py takes, then one set-based upsert
# with the sync rules in its WHERE (only a newer snapshot, never over a tombstone).
PSYCOPG_LOCKS = (
    "SELECT count(pg_advisory_xact_lock(key)) FROM ("
    "SELECT DISTINCT hashtextextended(id, 0) AS key FROM unnest(%s::text[]) AS id ORDER BY key) AS keys"
)
PSYCOPG_UPSERT = """
INSERT INTO "User" ("id", "clerkId", "email", "firstName", "lastName", "username", "imageUrl",
                    "clerkUpdatedAt", "createdAt", "updatedAt")
SELECT gen_random_uuid()::text, u.*, now(), now()
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::timestamptz[]) AS u
ON CONFLICT ("clerkId") DO UPDATE SET
  "email" = EXCLUDED."email", "firstName" = EXCLUDED."firstName", "lastName" = EXCLUDED."lastName",
  "username" = EXCLUDED."username", "imageUrl" = EXCLUDED."imageUrl",
  "clerkUpdatedAt" = EXCLUDED."clerkUpdatedAt", "updatedAt" = now()
WHERE "User"."deletedAt" IS NULL
  AND ("User"."clerkUpdatedAt" IS NULL OR "User"."clerkUpdatedAt" < EXCLUDED."clerkUpdatedAt")
"""


class QuietProgress(Progress):
    def step(self, done: int, noun: str, tally: Tally) -> None:
        pass


def _fake_clerk_main(conn: Any, n_users: int) -> None:
    with FakeClerk() as fake:
        for index in range(n_users):
            user_id = f"user_bench_{index:06d}_{uuid.uuid4().hex[:8]}"
            fake.add_user(user_id, email=f"{user_id}@example.com")
        conn.send({"url": fake.url, "secret_key": fake.secret_key})
        with contextlib.suppress(EOFError, KeyboardInterrupt):
            conn.recv()


def fake_clerk_process(n_users: int) -> contextlib.AbstractContextManager[tuple[dict[str, Any], int]]:
    return child_process(_fake_clerk_main, n_users, start_timeout=120)


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class CpuMeter:
    """CPU seconds by process group, for the split per user."""

    def __init__(self, conn: psycopg.Connection, db_name: str, engine_pid: int, fake_pid: int) -> None:
        self._conn = conn
        self._db_name = db_name
        self._pids = {"engine": engine_pid, "fakeclerk": fake_pid}

    def snapshot(self) -> dict[str, float]:
        rows = self._conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (self._db_name,))
        backends = 0.0
        for (pid,) in rows.fetchall():
            with contextlib.suppress(OSError, IndexError, ValueError):
                backends += process_cpu(pid)
        cpu = {name: process_cpu(pid) for name, pid in self._pids.items()}
        return {"bench": time.process_time(), **cpu, "postgres": backends}


def list_pages(api: ClerkAPI, page_size: int) -> Iterator[list[ClerkUser]]:
    offset = 0
    while True:
        page = api.list_users(limit=page_size, offset=offset)
        yield [parse_clerk_user(raw) for raw in page]
        offset += len(page)
        if len(page) < page_size:
            return


def run_today(api: ClerkAPI, page_size: int, conn: psycopg.Connection) -> int:
    n = 0
    db = get_db()
    for page in list_pages(api, page_size):
        for user in page:
            stored = db.user.find_unique(where={"clerkId": user.id})
            if stored is None or judge_stored(stored, user)[0] in WRITES:
                with transaction(db) as tx:
                    apply_snapshot(tx, user)
            n += 1
    return n


def run_per_user(api: ClerkAPI, page_size: int, conn: psycopg.Connection) -> int:
    n = 0
    db = get_db()
    for page in list_pages(api, page_size):
        for user in page:
            sync_user_with_database(user, db)
            n += 1
    return n


def run_page(api: ClerkAPI, page_size: int, conn: psycopg.Connection) -> int:
    tally = Tally(BACKFILL_LABELS)
    PageRun(
        api=api,
        policy=RetryPolicy(),
        page_size=page_size,
        offset=0,
        dry_run=False,
        tally=tally,
        progress=QuietProgress(),
    ).run()
    assert tally.failed == 0, tally.describe()
    return tally.total


def run_create_many(api: ClerkAPI, page_size: int, conn: psycopg.Connection) -> int:
    n = 0
    db = get_db()
    for page in list_pages(api, page_size):
        with transaction(db) as tx:
            lock_users(tx, [user.id for user in page])
            stored = {
                row.clerkId: row for row in tx.user.find_many(where={"clerkId": {"in": [u.id for u in page]}})
            }
            absent = [user for user in page if user.id not in stored]
            newer = [
                user
                for user in page
                if user.id in stored and judge_stored(stored[user.id], user)[0] in WRITES
            ]
            if absent:
                tx.user.create_many(data=[{"clerkId": user.id, **snapshot_fields(user)} for user in absent])
            if newer:
                with tx.batch_() as batch:
                    for user in newer:
                        Plan(SyncOutcome.UPDATED, None, user.id, fields=snapshot_fields(user)).write(batch)
        n += len(page)
    return n


def run_psycopg(api: ClerkAPI, page_size: int, conn: psycopg.Connection) -> int:
    n = 0
    for page in list_pages(api, page_size):
        columns = [
            [u.id for u in page],
            [u.email for u in page],
            [u.first_name for u in page],
            [u.last_name for u in page],
            [u.username for u in page],
            [u.image_url for u in page],
            [u.updated_at_datetime for u in page],
        ]
        with conn.transaction():
            conn.execute(PSYCOPG_LOCKS, (columns[0],))
            conn.execute(PSYCOPG_UPSERT, columns)
        n += len(page)
    return n


def run_list_only(api: ClerkAPI, page_size: int, conn: psycopg.Connection) -> int:
    return sum(len(page) for page in list_pages(api, page_size))


RUNNERS: dict[str, Callable[[ClerkAPI, int, psycopg.Connection], int]] = {
    "today": run_today,
    "per-user": run_per_user,
    "page": run_page,
    "createmany": run_create_many,
    "psycopg": run_psycopg,
    "list-only": run_list_only,
}


def prepare(conn: psycopg.Connection, scenario: str, api: ClerkAPI, page_size: int) -> None:
    """Put the table in the scenario's starting state (with psycopg, untimed)."""
    conn.execute('TRUNCATE "User", "WebhookDelivery"')
    if scenario == "new":
        return
    run_psycopg(api, page_size, conn)
    if scenario == "stale":
        conn.execute('UPDATE "User" SET "clerkUpdatedAt" = "clerkUpdatedAt" - interval \'1 second\'')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=600)
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated, from {', '.join(VARIANTS + OPTIONAL)} (default: {','.join(VARIANTS)})",
    )
    parser.add_argument("--postgres-url", help="PostgreSQL server URL (default: prisma_engines.localdb)")
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(RUNNERS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    if not os.environ.get("PRISMA_QUERY_ENGINE_BINARY"):
        os.environ.update(engines.offline_env())

    server_url = args.postgres_url or localdb.server_url()
    db_name = f"clerk_sync_bench_backfill_{uuid.uuid4().hex[:8]}"
    localdb.create_database(server_url, db_name)
    db_url = localdb.database_url(server_url, db_name)
    results: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], dict[str, float]] = {}
    try:
        migrations.apply_migrations(db_url, migrations.MIGRATIONS_DIR)
        with (
            fake_clerk_process(args.users) as (fake, fake_pid),
            psycopg.connect(db_url, autocommit=True) as conn,
            ClerkAPI(fake["url"], fake["secret_key"], timeout=30) as api,
        ):
            app = create_app(Settings(database_url=db_url, clerk_api_url=fake["url"], clerk_secret_key="x"))
            with app.app_context():
                meter = CpuMeter(conn, db_name, get_db()._engine.process.pid, fake_pid)  # type: ignore[attr-defined]
                print(
                    f"backfill A/B: {args.users} users, pages of {args.page_size}, {args.rounds} rounds "
                    f"after a warm-up, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
                )
                for round_no in range(args.rounds + 1):
                    order = variants[round_no % len(variants) :] + variants[: round_no % len(variants)]
                    for scenario in SCENARIOS:
                        for variant in order:
                            prepare(conn, scenario, api, args.page_size)
                            before = meter.snapshot()
                            started = time.perf_counter()
                            n = RUNNERS[variant](api, args.page_size, conn)
                            elapsed = time.perf_counter() - started
                            after = meter.snapshot()
                            assert n == args.users, (variant, n)
                            if round_no == 0:
                                continue  # the warm-up
                            results.setdefault((scenario, variant), []).append(n / elapsed)
                            spent = cpu.setdefault((scenario, variant), dict.fromkeys(CPU_GROUPS, 0.0))
                            for group in CPU_GROUPS:
                                spent[group] += (after[group] - before[group]) / n
                            rate = n / elapsed
                            print(f"  round {round_no} {scenario:5} {variant:9} {rate:9.0f} users/s")
            app.extensions["database"].close()
    finally:
        localdb.drop_database(server_url, db_name)

    print(f"\nmedian users/s over {args.rounds} rounds (load average now {os.getloadavg()[0]:.2f})")
    print(f"{'scenario':8} " + " ".join(f"{v:>10}" for v in variants) + "   page/today  page/psycopg")
    for scenario in SCENARIOS:
        medians = {v: statistics.median(results[(scenario, v)]) for v in variants}
        line = f"{scenario:8} " + " ".join(f"{medians[v]:10.0f}" for v in variants)
        if {"page", "today"} <= medians.keys():
            line += f"   {medians['page'] / medians['today']:10.1f}x"
        if {"page", "psycopg"} <= medians.keys():
            line += f"  {medians['page'] / medians['psycopg']:12.2f}"
        print(line)
    print("\nCPU ms per user, mean over the rounds: " + ", ".join(CPU_GROUPS))
    for scenario in SCENARIOS:
        for variant in variants:
            spent = cpu[(scenario, variant)]
            split = " ".join(f"{1000 * spent[g] / args.rounds:7.2f}" for g in CPU_GROUPS)
            total = 1000 * sum(spent.values()) / args.rounds
            print(f"  {scenario:5} {variant:9} {split}   total {total:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
