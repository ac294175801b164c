"""The migrations in ./migrations, the applier that stands in for `prisma migrate deploy`,
and the local PostgreSQL helper.

The key test is `test_migrations_produce_the_schema_prisma_database`: it fails whenever
schema.prisma changes without a matching migration (or a migration is edited by hand into
something schema.prisma doesn't describe). Prisma CLI calls cost about half a second
each, so their results are shared through module-scoped fixtures.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from prisma_engines import localdb, migrations
from prisma_engines.__main__ import main
from prisma_engines.migrations import MIGRATIONS_DIR, SCHEMA, MigrationError

INIT = sorted(path.name for path in MIGRATIONS_DIR.iterdir() if path.is_dir())
Catalog = dict[str, list[tuple[Any, ...]]]


# --- Fixtures: uniquely named databases, always dropped ----------------------------------------


@pytest.fixture(scope="module")
def server() -> str:
    return os.environ.get("TEST_POSTGRES_URL") or localdb.server_url()


@pytest.fixture(scope="module")
def module_db(server: str) -> Iterator[Callable[[], str]]:
    """Databases for module-scoped fixtures, dropped when the module is done."""
    yield from _database_factory(server)


@pytest.fixture
def new_db(server: str) -> Iterator[Callable[[], str]]:
    """Databases for one test, dropped after it whether it passed or not."""
    yield from _database_factory(server)


def _database_factory(server: str) -> Iterator[Callable[[], str]]:
    created: list[str] = []

    def create() -> str:
        name = f"test_migrations_{uuid.uuid4().hex[:12]}"
        created.append(name)
        localdb.create_database(server, name)
        return localdb.database_url(server, name)

    try:
        yield create
    finally:
        for name in created:
            localdb.drop_database(server, name)


@pytest.fixture
def migrations_copy(tmp_path: Path) -> Path:
    """A scratch copy of ./migrations that a test may add to or edit."""
    return Path(shutil.copytree(MIGRATIONS_DIR, tmp_path / "migrations"))


def _add_migration(migrations_dir: Path, name: str, script: str) -> str:
    directory = migrations_dir / name
    directory.mkdir()
    (directory / "migration.sql").write_text(script)
    return name


@pytest.fixture(scope="module")
def extended_schema(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """schema.prisma plus a unique optional field, i.e. a schema the migrations don't match."""
    text = SCHEMA.read_text()
    anchor = "  username       String?\n"
    assert anchor in text, "update extended_schema: the User model changed"
    schema = tmp_path_factory.mktemp("extended") / "schema.prisma"
    schema.write_text(text.replace(anchor, anchor + "  nickname       String?   @unique\n"))
    return schema


@pytest.fixture(scope="module")
def extended_catalog(module_db: Callable[[], str], extended_schema: Path) -> Catalog:
    url = module_db()
    _run_script(url, _from_empty_script(extended_schema))
    return catalog(url)


# --- Catalog comparison ------------------------------------------------------------------------

_CATALOG_QUERIES = {
    "tables": """
        SELECT table_name, table_type FROM information_schema.tables
        WHERE table_schema = 'public' AND table_name <> '_prisma_migrations'""",
    "columns": """
        SELECT table_name, column_name, data_type, udt_name, character_maximum_length,
               numeric_precision, numeric_scale, datetime_precision, is_nullable,
               column_default, is_identity, is_generated
        FROM information_schema.columns
        WHERE table_schema = 'public' AND table_name <> '_prisma_migrations'""",
    "indexes": """
        SELECT t.relname, i.relname, x.indisunique, x.indisprimary, pg_get_indexdef(x.indexrelid)
        FROM pg_index x
        JOIN pg_class i ON i.oid = x.indexrelid
        JOIN pg_class t ON t.oid = x.indrelid
        JOIN pg_namespace n ON n.oid = t.relnamespace
        WHERE n.nspname = 'public' AND t.relname <> '_prisma_migrations'""",
    "constraints": """
        SELECT t.relname, c.conname, c.contype, pg_get_constraintdef(c.oid),
               c.condeferrable, c.condeferred
        FROM pg_constraint c
        JOIN pg_class t ON t.oid = c.conrelid
        JOIN pg_namespace n ON n.oid = c.connamespace
        WHERE n.nspname = 'public' AND t.relname <> '_prisma_migrations'""",
    "enums": """
        SELECT t.typname, array_agg(e.enumlabel::text ORDER BY e.enumsortorder)
        FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid
        JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE n.nspname = 'public' GROUP BY t.typname""",
    "sequences": """
        SELECT sequence_name, data_type, start_value, increment
        FROM information_schema.sequences WHERE sequence_schema = 'public'""",
}


def catalog(url: str) -> Catalog:
    """Everything about the public schema that a migration can change, in comparable form."""
    with psycopg.connect(url) as conn:
        return {
            kind: sorted(conn.execute(query).fetchall(), key=repr) for kind, query in _CATALOG_QUERIES.items()
        }


def catalog_differences(expected: Catalog, actual: Catalog) -> list[str]:
    differences = []
    for kind in _CATALOG_QUERIES:
        missing = [row for row in expected[kind] if row not in actual[kind]]
        extra = [row for row in actual[kind] if row not in expected[kind]]
        differences += [f"{kind}: missing {row}" for row in missing]
        differences += [f"{kind}: unexpected {row}" for row in extra]
    return differences


def _run_script(url: str, script: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(script.encode())


@pytest.fixture(scope="module")
def migrated_catalog(module_db: Callable[[], str]) -> Catalog:
    """The database that ./migrations produce."""
    url = module_db()
    migrations.apply_migrations(url, MIGRATIONS_DIR)
    return catalog(url)


@pytest.fixture(scope="module")
def schema_catalog(module_db: Callable[[], str]) -> Catalog:
    """The database schema.prisma describes, per `prisma migrate diff --from-empty`."""
    url = module_db()
    _run_script(url, _from_empty_script(SCHEMA))
    return catalog(url)


def _from_empty_script(schema: Path) -> str:
    """`prisma migrate diff --from-empty --to-schema-datamodel <schema> --script`."""
    script = migrations.diff_script(schema=schema, migrations_dir=Path("/nonexistent"))
    assert script is not None
    return script


# --- schema.prisma and ./migrations agree ------------------------------------------------------


def test_migrations_produce_the_schema_prisma_database(
    migrated_catalog: Catalog, schema_catalog: Catalog
) -> None:
    differences = catalog_differences(schema_catalog, migrated_catalog)
    assert not differences, (
        "schema.prisma and ./migrations disagree. Create the missing migration with\n"
        "  python -m prisma_engines migrate-dev --name <what_changed>\n" + "\n".join(differences)
    )
    assert {row[0] for row in migrated_catalog["tables"]} >= {"User", "WebhookDelivery"}


def test_catalog_comparison_catches_a_schema_change(
    extended_catalog: Catalog, migrated_catalog: Catalog
) -> None:
    differences = catalog_differences(extended_catalog, migrated_catalog)
    assert any("columns: missing ('User', 'nickname'" in line for line in differences), differences
    assert any("User_nickname_key" in line for line in differences), differences


def test_diff_check_passes_for_the_repository(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-q", "migrate-diff-check"]) == 0
    assert "agree" in capsys.readouterr().out


def test_diff_check_fails_and_prints_the_missing_migration(
    extended_schema: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["-q", "migrate-diff-check", "--schema", str(extended_schema)]) == 1
    out = capsys.readouterr().out
    assert 'ALTER TABLE "User" ADD COLUMN     "nickname" TEXT;' in out
    assert 'CREATE UNIQUE INDEX "User_nickname_key" ON "User"("nickname");' in out


def test_make_migration_writes_prismas_diff_then_nothing(
    extended_schema: Path, extended_catalog: Catalog, migrations_copy: Path, new_db: Callable[[], str]
) -> None:
    created = migrations.make_migration("addNickname", schema=extended_schema, migrations_dir=migrations_copy)
    assert created is not None
    assert created.parent == migrations_copy
    assert created.name[:14].isdigit() and created.name.endswith("_add_nickname")
    assert (migrations_copy / "migration_lock.toml").read_bytes() == (  # as Prisma 6.19 writes it
        b"# Please do not edit this file manually\n"
        b"# It should be added in your version-control system (e.g., Git)\n"
        b'provider = "postgresql"\n'
    )
    assert (MIGRATIONS_DIR / "migration_lock.toml").read_bytes() == migrations.MIGRATION_LOCK.encode()
    assert migrations.make_migration("again", schema=extended_schema, migrations_dir=migrations_copy) is None

    url = new_db()
    assert migrations.apply_migrations(url, migrations_copy) == [*INIT, created.name]
    assert catalog_differences(extended_catalog, catalog(url)) == []


# --- apply_migrations records what `prisma migrate deploy` records ----------------------------


def _history(url: str) -> list[dict[str, Any]]:
    with psycopg.connect(url) as conn, conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM _prisma_migrations ORDER BY started_at").fetchall()


def _table_definition(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        columns = conn.execute(
            "SELECT column_name, data_type, character_maximum_length, is_nullable, column_default"
            " FROM information_schema.columns WHERE table_name = '_prisma_migrations'"
            " ORDER BY ordinal_position"
        ).fetchall()
        constraints = conn.execute(
            "SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = '_prisma_migrations'::regclass"
        ).fetchall()
    return columns + constraints


@pytest.fixture(scope="module")
def prisma_deployed(module_db: Callable[[], str]) -> str:
    """A database migrated by Prisma itself: 6.19's `migrate deploy` (WebAssembly engine)."""
    url = module_db()
    result = migrations.run_prisma6(["migrate", "deploy", "--schema", str(SCHEMA)], database_url=url)
    assert "All migrations have been successfully applied." in result.stdout
    return url


def test_apply_creates_the_tables_and_prisma_style_history(new_db: Callable[[], str]) -> None:
    url = new_db()
    assert migrations.apply_migrations(url, MIGRATIONS_DIR) == INIT
    with psycopg.connect(url) as conn:
        tables = {
            row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
    assert tables >= {"User", "WebhookDelivery", "_prisma_migrations"}
    history = _history(url)
    assert [row["migration_name"] for row in history] == INIT
    for row in history:
        sql_bytes = (MIGRATIONS_DIR / row["migration_name"] / "migration.sql").read_bytes()
        assert row["checksum"] == hashlib.sha256(sql_bytes).hexdigest()
        assert uuid.UUID(row["id"]).version == 4
        assert row["applied_steps_count"] == 1
        assert row["finished_at"] is not None and row["finished_at"] >= row["started_at"]
        assert row["rolled_back_at"] is None and row["logs"] is None


def test_history_matches_prisma_migrate_deploy(new_db: Callable[[], str], prisma_deployed: str) -> None:
    url = new_db()
    migrations.apply_migrations(url, MIGRATIONS_DIR)
    assert _table_definition(url) == _table_definition(prisma_deployed)

    def comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {**row, "id": len(row["id"]), "started_at": None, "finished_at": row["finished_at"] is not None}
            for row in rows
        ]

    assert comparable(_history(url)) == comparable(_history(prisma_deployed))
    assert catalog(url) == catalog(prisma_deployed)


def test_prisma_sees_applied_migrations_as_applied(new_db: Callable[[], str]) -> None:
    url = new_db()
    migrations.apply_migrations(url, MIGRATIONS_DIR)
    status = migrations.run_prisma6(["migrate", "status", "--schema", str(SCHEMA)], database_url=url)
    assert "Database schema is up to date!" in status.stdout
    deploy = migrations.run_prisma6(["migrate", "deploy", "--schema", str(SCHEMA)], database_url=url)
    assert "No pending migrations to apply." in deploy.stdout
    assert len(_history(url)) == len(INIT)


def test_reapplying_is_a_no_op(new_db: Callable[[], str]) -> None:
    url = new_db()
    migrations.apply_migrations(url, MIGRATIONS_DIR)
    before = _history(url)
    assert migrations.apply_migrations(url, MIGRATIONS_DIR) == []
    assert _history(url) == before


def test_pending_migrations_apply_in_name_order(new_db: Callable[[], str], migrations_copy: Path) -> None:
    url = new_db()
    migrations.apply_migrations(url, migrations_copy)
    later = _add_migration(migrations_copy, "99990102000000_b", 'ALTER TABLE "Later" ADD COLUMN b INT;\n')
    earlier = _add_migration(migrations_copy, "99990101000000_a", 'CREATE TABLE "Later" (a INT);\n')
    empty = _add_migration(migrations_copy, "99990103000000_c", "-- This is an empty migration.\n")
    assert migrations.apply_migrations(url, migrations_copy) == [earlier, later, empty]


def test_edited_migration_is_refused(new_db: Callable[[], str], migrations_copy: Path) -> None:
    url = new_db()
    migrations.apply_migrations(url, migrations_copy)
    script = migrations_copy / INIT[0] / "migration.sql"
    script.write_bytes(script.read_bytes().replace(b"\n", b"\r\n"))  # git autocrlf: still the same
    assert migrations.apply_migrations(url, migrations_copy) == []
    script.write_bytes(script.read_bytes() + b"-- edited\r\n")
    with pytest.raises(MigrationError, match="modified after it was applied"):
        migrations.apply_migrations(url, migrations_copy)


def test_failing_migration_rolls_back_entirely(new_db: Callable[[], str], migrations_copy: Path) -> None:
    url = new_db()
    broken = _add_migration(
        migrations_copy, "99990101000000_broken", 'CREATE TABLE "Half" (a INT);\nSELECT no_such_function();\n'
    )
    with pytest.raises(MigrationError, match=f"`{broken}` failed and was rolled back"):
        migrations.apply_migrations(url, migrations_copy)
    assert [row["migration_name"] for row in _history(url)] == INIT
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT to_regclass('\"Half\"')").fetchone() == (None,)


def test_recorded_failure_blocks_deploy(new_db: Callable[[], str], migrations_copy: Path) -> None:
    url = new_db()
    migrations.apply_migrations(url, MIGRATIONS_DIR)
    with psycopg.connect(url) as conn:  # what `migrate deploy` leaves behind when a script fails
        conn.execute(
            "INSERT INTO _prisma_migrations (id, checksum, migration_name, logs)"
            " VALUES (%s, repeat('0', 64), '99990101000000_failed', 'boom')",
            (str(uuid.uuid4()),),
        )
    _add_migration(migrations_copy, "99990102000000_next", "SELECT 1;\n")
    with pytest.raises(MigrationError, match=r"P3009(.|\n)*99990101000000_failed(.|\n)*boom"):
        migrations.apply_migrations(url, migrations_copy)


def test_non_empty_database_without_history_is_refused(new_db: Callable[[], str]) -> None:
    url = new_db()
    _run_script(url, "CREATE TABLE pushed (id INT);")
    with pytest.raises(MigrationError, match="P3005"):
        migrations.apply_migrations(url, MIGRATIONS_DIR)


def test_concurrent_appliers_apply_each_migration_once(
    new_db: Callable[[], str], migrations_copy: Path
) -> None:
    url = new_db()
    slow = _add_migration(migrations_copy, "99990101000000_slow", "SELECT pg_sleep(0.3);\n")
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(migrations.apply_migrations, url, migrations_copy) for _ in range(4)]
        results = [future.result() for future in futures]
    assert sorted(results, key=len) == [[], [], [], [*INIT, slow]]
    assert sorted(row["migration_name"] for row in _history(url)) == [*INIT, slow]


def test_prisma_url_parameters_and_schema(new_db: Callable[[], str]) -> None:
    url = new_db() + "?schema=tenant&connection_limit=3&pool_timeout=5&connect_timeout=5"
    assert migrations.apply_migrations(url, MIGRATIONS_DIR) == INIT
    with psycopg.connect(migrations.split_prisma_url(url)[0]) as conn:
        tables = {
            row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'tenant'")
        }
        public = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    assert tables >= {"User", "WebhookDelivery", "_prisma_migrations"}
    assert public == (0,)


def test_split_prisma_url() -> None:
    libpq, schema = migrations.split_prisma_url(
        "postgres://u:p@h:5/db?schema=s&sslmode=require&pgbouncer=true&connection_limit=1"
    )
    assert (libpq, schema) == ("postgresql://u:p@h:5/db?sslmode=require", "s")
    assert migrations.split_prisma_url("postgresql://h/db") == ("postgresql://h/db", None)
    options = "postgresql://h/db?options=-c%20statement_timeout%3D5s&host=%2Ftmp&schema=a%20b"
    assert migrations.split_prisma_url(options) == (
        "postgresql://h/db?options=-c%20statement_timeout%3D5s&host=%2Ftmp",
        "a b",
    )


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("init", "init"),
        ("Add thing", "add_thing"),
        ("addUserLocale", "add_user_locale"),
        ("  x--Y!! ", "x_y"),
    ],
)
def test_migration_name_slug(name: str, slug: str) -> None:
    assert migrations.migration_name_slug(name) == slug


# --- deploy() and the CLI ----------------------------------------------------------------------


def test_deploy_without_native_engine_uses_the_builtin_applier(
    new_db: Callable[[], str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Offline set-ups point the variable at a placeholder just to stop the CLI's download.
    placeholder = tmp_path / "schema-engine"
    placeholder.write_text("#!/bin/sh\necho schema-engine-cli placeholder\n")
    placeholder.chmod(0o755)
    monkeypatch.setenv("PRISMA_SCHEMA_ENGINE_BINARY", str(placeholder))
    assert migrations.native_schema_engine() is None
    assert migrations.deploy_method() == "builtin"
    url = new_db()
    monkeypatch.setenv("DATABASE_URL", url)
    assert main(["-q", "migrate-deploy"]) == 0
    assert [row["migration_name"] for row in _history(url)] == INIT


def test_cli_create_db_is_idempotent(capsys: pytest.CaptureFixture[str]) -> None:
    base_url = localdb.server_url()  # what the CLI uses
    name = f"test_migrations_cli_{uuid.uuid4().hex[:12]}"
    try:
        assert main(["create-db", name]) == 0
        assert main(["create-db", name]) == 0
        first, second = capsys.readouterr().out.split()
        assert first == second == localdb.database_url(base_url, name)
        with psycopg.connect(first) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == (name,)
    finally:
        localdb.drop_database(base_url, name)


# --- The project-local cluster -----------------------------------------------------------------


@pytest.mark.skipif(localdb.find_server_binaries() is None, reason="no PostgreSQL server binaries")
def test_local_cluster_starts_reuses_and_stops() -> None:
    # Under the project, not /tmp: as root the cluster runs as `postgres`, which must reach it.
    root = localdb.PROJECT_ROOT / ".local" / f"test-{uuid.uuid4().hex[:8]}"
    try:
        url = localdb.server_url(force_local_cluster=True, root=root)
        assert url == f"postgresql://postgres@127.0.0.1:{(root / 'port').read_text().strip()}"
        assert localdb.start_local_cluster(root) == url  # reused, not restarted
        localdb.create_database(url, "app")
        localdb.create_database(url, "app")
        with psycopg.connect(localdb.database_url(url, "app")) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("app",)
        localdb.drop_database(url, "app")
        assert localdb.stop_local_cluster(root) is True
        assert not localdb.server_answers(url)
        assert localdb.stop_local_cluster(root) is False
    finally:
        localdb.stop_local_cluster(root)
        shutil.rmtree(root, ignore_errors=True)
