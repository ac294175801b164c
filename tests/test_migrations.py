"""schema.prisma, prisma/migrations and Prisma Migrate, run through scripts/prisma.

The key test is `test_schema_prisma_and_the_migrations_agree`: it fails whenever
schema.prisma changes without a matching migration (or a migration is edited into something
schema.prisma doesn't describe). Every Prisma call is the real CLI (Prisma 6.19, WebAssembly
schema engine) against the local PostgreSQL, about 1-2 s each.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest

from prisma_engines import localdb, migrations
from prisma_engines.migrations import MIGRATIONS_DIR, SCHEMA, PrismaCommandError, run_prisma

INIT = sorted(path.name for path in MIGRATIONS_DIR.iterdir() if path.is_dir())
SHADOW_PREFIX = "prisma_migrate_shadow_db_"


# --- Fixtures (new_db, uniquely named databases always dropped: conftest.py) -------------------


@pytest.fixture
def migrations_copy(tmp_path: Path) -> Path:
    """A scratch copy of prisma/migrations that a test may add to."""
    return Path(shutil.copytree(MIGRATIONS_DIR, tmp_path / "migrations"))


@pytest.fixture(scope="module")
def extended_schema(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """schema.prisma plus an indexed optional field: a change `migrate dev` makes without asking."""
    text = SCHEMA.read_text()
    field, index = "  username       String?\n", "  @@index([email])\n"
    assert field in text and index in text, "update extended_schema: the User model changed"
    schema = tmp_path_factory.mktemp("extended") / "schema.prisma"
    schema.write_text(
        text.replace(field, field + "  nickname       String?\n").replace(
            index, index + "  @@index([nickname])\n"
        )
    )
    return schema


def _add_migration(migrations_dir: Path, name: str, script: str) -> str:
    (migrations_dir / name).mkdir()
    (migrations_dir / name / "migration.sql").write_text(script)
    return name


def _history(url: str) -> list[tuple[Any, ...]]:
    """(name, finished, rolled back) per `_prisma_migrations` row, oldest first."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT migration_name, finished_at IS NOT NULL, rolled_back_at IS NOT NULL"
            " FROM _prisma_migrations ORDER BY started_at"
        ).fetchall()


@pytest.fixture(autouse=True)
def no_shadow_database_left(postgres_server: str) -> Iterator[None]:
    """Prisma's temporary shadow databases are dropped by the time its command exits.

    Others may run Prisma on the same server, so only databases that appear during the test
    and are still there after a grace period count.
    """
    before = _shadow_databases(postgres_server)
    yield
    left = _shadow_databases(postgres_server) - before
    deadline = time.monotonic() + 10
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left &= _shadow_databases(postgres_server)
    assert not left, f"shadow databases left behind: {sorted(left)}"


def _shadow_databases(server: str) -> set[str]:
    with psycopg.connect(localdb.database_url(server, "postgres")) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (SHADOW_PREFIX + "%",))
        return {row[0] for row in rows}


# --- schema.prisma and prisma/migrations agree --------------------------------------------------


def test_schema_prisma_and_the_migrations_agree(postgres_server: str) -> None:
    script = migrations.diff_script(schema=SCHEMA, migrations_dir=MIGRATIONS_DIR, server_url=postgres_server)
    assert script is None, (
        "schema.prisma and prisma/migrations disagree. Create the missing migration with\n"
        "  scripts/prisma migrate dev --name <what_changed>\nIt would be:\n" + (script or "")
    )


def test_the_drift_check_catches_a_schema_change(extended_schema: Path, postgres_server: str) -> None:
    script = migrations.diff_script(
        schema=extended_schema, migrations_dir=MIGRATIONS_DIR, server_url=postgres_server
    )
    assert script is not None
    assert 'ALTER TABLE "User" ADD COLUMN     "nickname" TEXT;' in script
    assert 'CREATE INDEX "User_nickname_idx" ON "User"("nickname");' in script


def test_migrate_dev_create_only_writes_what_the_drift_check_expects(
    extended_schema: Path, migrations_copy: Path, new_db: Callable[[], str], postgres_server: str
) -> None:
    expected = migrations.diff_script(
        schema=extended_schema, migrations_dir=migrations_copy, server_url=postgres_server
    )
    url = new_db()
    args = ["migrate", "dev", "--create-only", "--name", "addNickname", "--schema", str(extended_schema)]
    run_prisma(args, database_url=url, migrations_dir=migrations_copy)

    created = sorted(set(path.name for path in migrations_copy.iterdir() if path.is_dir()) - set(INIT))
    assert len(created) == 1 and created[0][:14].isdigit() and created[0].endswith("_add_nickname")
    assert (migrations_copy / created[0] / "migration.sql").read_text() == expected
    assert (migrations_copy / "migration_lock.toml").read_bytes() == (
        MIGRATIONS_DIR / "migration_lock.toml"
    ).read_bytes()
    # --create-only applied the pending init, not the new migration; the schema now agrees.
    assert _history(url) == [(name, True, False) for name in INIT]
    assert (
        migrations.diff_script(
            schema=extended_schema, migrations_dir=migrations_copy, server_url=postgres_server
        )
        is None
    )


# --- db push and migrate deploy ------------------------------------------------------------------


def _schema_dump(url: str) -> str:
    """pg_dump's DDL for the database, without Prisma's bookkeeping table."""
    dump = run_pg_dump(url)
    return "\n".join(
        line for line in dump.splitlines() if not line.startswith(("\\restrict", "\\unrestrict"))
    )


def run_pg_dump(url: str) -> str:
    result = subprocess.run(
        ["pg_dump", "--schema-only", "--no-owner", "--exclude-table=_prisma_migrations", url],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


@pytest.mark.skipif(shutil.which("pg_dump") is None, reason="needs pg_dump (postgresql-client)")
def test_db_push_on_an_empty_database_equals_migrate_deploy(new_db: Callable[[], str]) -> None:
    pushed, deployed = new_db(), new_db()
    push = run_prisma(["db", "push"], database_url=pushed)
    assert "Your database is now in sync with your Prisma schema" in push.stdout
    deploy = run_prisma(["migrate", "deploy"], database_url=deployed)
    assert "All migrations have been successfully applied." in deploy.stdout
    assert 'CREATE TABLE public."User"' in _schema_dump(pushed)
    assert _schema_dump(pushed) == _schema_dump(deployed)
    assert _history(deployed) == [(name, True, False) for name in INIT]


def test_migrate_status_and_resolve_through_a_failed_migration(
    new_db: Callable[[], str], migrations_copy: Path
) -> None:
    url = new_db()
    pending = run_prisma(["migrate", "status"], database_url=url, check=False)
    assert pending.returncode == 1 and "have not yet been applied" in pending.stdout
    migrations.apply_migrations(url)
    done = run_prisma(["migrate", "status"], database_url=url)
    assert "Database schema is up to date!" in done.stdout

    # A `;` in a comment must not split the script, and the failure must undo all of it.
    broken = _add_migration(
        migrations_copy,
        "99990101000000_broken",
        'CREATE TABLE "Half" (a INT); -- a ; in a comment\nSELECT no_such_function();\n',
    )
    with pytest.raises(PrismaCommandError, match="no_such_function"):
        migrations.apply_migrations(url, migrations_copy)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT to_regclass('\"Half\"')").fetchone() == (None,)
    assert _history(url)[-1] == (broken, False, False)
    failed = run_prisma(["migrate", "status"], database_url=url, migrations_dir=migrations_copy, check=False)
    assert failed.returncode == 1
    report = failed.stderr.split("Following migration have failed:", 1)[-1]
    assert report.split() and report.split()[0] == broken

    rolled_back = run_prisma(
        ["migrate", "resolve", "--rolled-back", broken], database_url=url, migrations_dir=migrations_copy
    )
    assert f"Migration {broken} marked as rolled back." in rolled_back.stdout
    assert _history(url)[-1] == (broken, False, True)

    # Fixed by hand (a hotfix): record it as applied without running it.
    applied = run_prisma(
        ["migrate", "resolve", "--applied", broken], database_url=url, migrations_dir=migrations_copy
    )
    assert f"Migration {broken} marked as applied." in applied.stdout
    assert _history(url)[-1] == (broken, True, False)
    status = run_prisma(["migrate", "status"], database_url=url, migrations_dir=migrations_copy)
    assert "Database schema is up to date!" in status.stdout


def test_concurrent_deploys_apply_each_migration_once(
    new_db: Callable[[], str], migrations_copy: Path
) -> None:
    """Replicas starting together (scripts/serve) serialise on Prisma's advisory lock."""
    url = new_db()
    slow = _add_migration(migrations_copy, "99990101000000_slow", "SELECT pg_sleep(0.5);\n")
    with ThreadPoolExecutor(max_workers=3) as pool:
        for future in [pool.submit(migrations.apply_migrations, url, migrations_copy) for _ in range(3)]:
            future.result()
    assert _history(url) == [(name, True, False) for name in [*INIT, slow]]


def test_migrate_reset_force(new_db: Callable[[], str]) -> None:
    url = new_db()
    migrations.apply_migrations(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute('INSERT INTO "User" (id, "clerkId", "updatedAt") VALUES (\'1\', \'user_1\', now())')
        conn.execute("CREATE TABLE stray (a INT)")
    reset = run_prisma(["migrate", "reset", "--force"], database_url=url)
    assert "Database reset successful" in reset.stdout
    with psycopg.connect(url) as conn:
        assert conn.execute('SELECT count(*) FROM "User"').fetchone() == (0,)
        assert conn.execute("SELECT to_regclass('stray')").fetchone() == (None,)
    assert _history(url) == [(name, True, False) for name in INIT]


def test_schema_url_parameter(new_db: Callable[[], str]) -> None:
    url = new_db() + "?schema=tenant&connection_limit=3&pool_timeout=5&connect_timeout=5"
    migrations.apply_migrations(url)
    status = run_prisma(["migrate", "status"], database_url=url)
    assert 'schema "tenant"' in status.stdout and "Database schema is up to date!" in status.stdout
    with psycopg.connect(url.split("?")[0]) as conn:
        tables = {
            row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'tenant'")
        }
        public = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    assert tables >= {"User", "WebhookDelivery", "_prisma_migrations"}
    assert public == (0,)


def test_schema_commands_use_direct_url(new_db: Callable[[], str]) -> None:
    """Neon's two URLs: with DATABASE_URL on a port nobody listens on, DIRECT_URL does the work."""
    url = new_db()
    dead = "postgresql://postgres@127.0.0.1:1/nowhere"
    deploy = run_prisma(["migrate", "deploy"], database_url=dead, direct_url=url)
    assert "All migrations have been successfully applied." in deploy.stdout
    assert _history(url) == [(name, True, False) for name in INIT]
    without = run_prisma(["migrate", "status"], database_url=dead, check=False)
    assert without.returncode != 0 and "Can't reach database nowhere at 127.0.0.1:1" in without.stderr


def test_an_explicit_shadow_database_is_emptied_on_every_use(new_db: Callable[[], str]) -> None:
    """SHADOW_DATABASE_URL: whatever a previous use (or anyone) left there is dropped first."""
    shadow, url = new_db(), new_db()
    with psycopg.connect(shadow, autocommit=True) as conn:
        conn.execute('CREATE TABLE "User" (leftover INT); CREATE SCHEMA other; CREATE TABLE other.x (a INT)')
    args = ["migrate", "diff", "--from-migrations", str(MIGRATIONS_DIR), "--to-schema-datamodel", str(SCHEMA)]
    env = {**os.environ, "SHADOW_DATABASE_URL": shadow}
    result = run_prisma([*args, "--exit-code"], database_url=url, env=env, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    with psycopg.connect(shadow) as conn:
        schemas = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'other'").fetchall()
        columns = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'User'"
        ).fetchall()
    assert schemas == [] and ("clerkId",) in columns and ("leftover",) not in columns
