"""scripts/prisma's other commands against real PostgreSQL: db push, db execute, db pull,
generate and version, and the virtualenv's plain `prisma`. Migrations: test_migrations.py."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from prisma_engines.migrations import PROJECT_ROOT, SCHEMA, run_prisma

VENV_PRISMA = PROJECT_ROOT / ".venv" / "bin" / "prisma"


def _columns(url: str, table: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s", (table,)
        ).fetchall()
    return {row[0] for row in rows}


def test_db_push_refuses_data_loss_unless_accepted(new_db: Callable[[], str], tmp_path: Path) -> None:
    url = new_db()
    run_prisma(["db", "push"], database_url=url)
    with psycopg.connect(url, autocommit=True) as conn:
        row = "'1', 'user_1', 'ada', now()"
        conn.execute(f'INSERT INTO "User" (id, "clerkId", username, "updatedAt") VALUES ({row})')

    text = SCHEMA.read_text()
    username = "  username       String?\n"
    assert username in text, "update this test: the User model changed"
    without_username = tmp_path / "without_username.prisma"
    without_username.write_text(text.replace(username, ""))
    refused = run_prisma(["db", "push", "--schema", str(without_username)], database_url=url, check=False)
    assert refused.returncode == 1
    assert "You are about to drop the column `username` on the `User` table" in refused.stdout
    assert "--accept-data-loss" in refused.stdout + refused.stderr
    assert "username" in _columns(url, "User")

    accepted = run_prisma(
        ["db", "push", "--schema", str(without_username), "--accept-data-loss"], database_url=url
    )
    assert "Your database is now in sync with your Prisma schema" in accepted.stdout
    assert "username" not in _columns(url, "User")
    assert "clerkId" in _columns(url, "User")

    # Back to schema.prisma: adding a column loses nothing, so no flag is needed.
    again = run_prisma(["db", "push"], database_url=url)
    assert "Your database is now in sync with your Prisma schema" in again.stdout
    assert "username" in _columns(url, "User")
    with psycopg.connect(url) as conn:
        assert conn.execute('SELECT "clerkId", username FROM "User"').fetchall() == [("user_1", None)]


def test_db_execute_runs_a_script_whole(new_db: Callable[[], str]) -> None:
    url = new_db()
    script = "CREATE TABLE note (body TEXT); -- one ; in a comment\nINSERT INTO note VALUES ('a;b');\n"
    done = run_prisma(["db", "execute", "--stdin"], database_url=url, input=script)
    assert "Script executed successfully." in done.stdout
    failing = "CREATE TABLE half (a INT);\nSELECT no_such_function();\n"
    failed = run_prisma(["db", "execute", "--stdin"], database_url=url, input=failing, check=False)
    assert failed.returncode == 1 and "no_such_function" in failed.stdout + failed.stderr
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT body FROM note").fetchall() == [("a;b",)]
        assert conn.execute("SELECT to_regclass('half')").fetchone() == (None,)


def test_plain_prisma_in_the_virtualenv_pulls_what_the_migrations_built(
    app_database_url: str, tmp_path: Path
) -> None:
    """The virtualenv's `prisma` is scripts/prisma; `db pull` reads back the models schema.prisma has."""
    pulled = tmp_path / "schema.prisma"
    shutil.copy(SCHEMA, pulled)
    env = {"PATH": f"{VENV_PRISMA.parent}:/usr/local/bin:/usr/bin:/bin", "DATABASE_URL": app_database_url}
    result = subprocess.run(
        ["prisma", "db", "pull", "--schema", str(pulled)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Introspected 2 models" in result.stdout
    diff = ["migrate", "diff", "--exit-code", "--from-schema-datamodel", str(pulled)]
    same = run_prisma(
        [*diff, "--to-schema-datamodel", str(SCHEMA)],
        database_url=app_database_url,
        check=False,
    )
    assert same.returncode == 0, same.stdout + same.stderr
    assert "No difference detected." in same.stdout


def test_generate_is_prisma_client_pythons() -> None:
    result = subprocess.run(
        [str(PROJECT_ROOT / "scripts" / "prisma"), "generate"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Generated Prisma Client Python (v0.15.0)" in result.stdout


@pytest.mark.parametrize("command", [["scripts/prisma", "version"], [str(VENV_PRISMA), "--version"]])
def test_version_names_the_engines_that_run(command: list[str]) -> None:
    result = subprocess.run(
        command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    pairs = (line.split(":", 1) for line in result.stdout.splitlines())
    lines = {name.strip(): value.strip() for name, value in pairs}
    assert lines["Schema engine"].startswith("WebAssembly") and "prisma 6.19.0" in lines["Schema engine"]
    assert lines["Query engine"].startswith("WebAssembly") and "query-engine.mjs" in lines["Query engine"]
    assert lines["generate"] == "Prisma Client Python 0.15.0 (prisma 5.17.0 CLI)"
    assert "binaries.prisma.sh" not in result.stdout + result.stderr
