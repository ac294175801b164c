"""Prisma's own schema commands, called from Python (tests, the benchmark, conformance).

Everything goes through `scripts/prisma`, the one entry point the README names: Prisma 6.19's
CLI with its WebAssembly schema engine (configured by `prisma/prisma.config.mjs`). Nothing
here applies or generates migrations by hand.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from prisma_engines import localdb

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SCHEMA = PROJECT_ROOT / "schema.prisma"
MIGRATIONS_DIR = PROJECT_ROOT / "prisma" / "migrations"
PRISMA_SCRIPT = PROJECT_ROOT / "scripts" / "prisma"


class PrismaCommandError(RuntimeError):
    """A Prisma CLI call failed; carries its output, since that is where Prisma explains itself."""


def run_prisma(
    args: list[str],
    *,
    database_url: str,
    direct_url: str | None = None,
    migrations_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    check: bool = True,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """`scripts/prisma <args>` against `database_url` (and `direct_url`, Prisma's `directUrl`).

    `migrations_dir` replaces prisma/migrations for this call (PRISMA_MIGRATIONS_DIR, read
    by prisma.config.mjs), for tests that add migrations to a copy.
    """
    call_env = dict(os.environ if env is None else env)
    call_env["DATABASE_URL"] = database_url
    call_env.pop("DIRECT_URL", None)
    call_env.pop("PRISMA_MIGRATIONS_DIR", None)
    if direct_url is not None:
        call_env["DIRECT_URL"] = direct_url
    if migrations_dir is not None:
        call_env["PRISMA_MIGRATIONS_DIR"] = str(migrations_dir)
    result = subprocess.run(
        [str(PRISMA_SCRIPT), *args],
        cwd=PROJECT_ROOT,
        env=call_env,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise PrismaCommandError(describe_failure(args, result))
    return result


def describe_failure(args: list[str], result: subprocess.CompletedProcess[str]) -> str:
    output = "\n".join(part.strip() for part in (result.stdout, result.stderr) if part.strip())
    return f"`scripts/prisma {' '.join(args)}` exited with {result.returncode}:\n{output}"


def apply_migrations(database_url: str, migrations_dir: Path = MIGRATIONS_DIR) -> None:
    """`prisma migrate deploy`: apply the pending migrations, as scripts/serve does at start."""
    run_prisma(
        ["migrate", "deploy"],
        database_url=database_url,
        migrations_dir=None if migrations_dir == MIGRATIONS_DIR else migrations_dir,
    )


def diff_script(*, schema: Path, migrations_dir: Path, server_url: str | None = None) -> str | None:
    """SQL taking a database from the migrations' end state to `schema`; None when they agree.

    `prisma migrate diff --from-migrations <dir>` (`--from-empty` when there are none)
    `--to-schema-datamodel <schema> --script --exit-code`. The engine replays the migrations
    on a temporary shadow database of `server_url` (default: DATABASE_URL's server, else the
    local one) and only asks its `postgres` database for the server version.
    """
    has_migrations = migrations_dir.is_dir() and any(path.is_dir() for path in migrations_dir.iterdir())
    source = ["--from-migrations", str(migrations_dir)] if has_migrations else ["--from-empty"]
    args = ["migrate", "diff", *source, "--to-schema-datamodel", str(schema), "--script", "--exit-code"]
    result = run_prisma(args, database_url=_maintenance_url(server_url), check=False)
    if result.returncode == 0:
        return None
    if result.returncode == 2:
        return result.stdout
    raise PrismaCommandError(describe_failure(args, result))


def _maintenance_url(server_url: str | None) -> str:
    """The `postgres` database of `server_url`, else of DATABASE_URL's server, else the local one."""
    base = server_url or os.environ.get("DATABASE_URL") or localdb.server_url()
    parts = urlsplit(base)
    query = urlencode([(key, value) for key, value in parse_qsl(parts.query) if key != "schema"])
    return urlunsplit((parts.scheme, parts.netloc, "/postgres", query, ""))
