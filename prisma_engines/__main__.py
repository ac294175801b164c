"""`python -m prisma_engines <command>`: the Prisma workflows that work without Prisma's CDN.

Adding a command takes one function and one decorator line:

    @command("db-status", "Say whether migrations are pending.", arg("--json", action="store_true"))
    def db_status(args: argparse.Namespace) -> int:
        ...
        return 0

Handlers return the exit code. Errors the user can act on (the exception types in
`USER_ERRORS`) are printed without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg

from prisma_engines import engines, localdb, migrations

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Argument:
    """`add_argument`'s parameters, kept until the parser is built."""

    flags: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


def arg(*flags: str, **options: Any) -> Argument:
    return Argument(flags, options)


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    arguments: tuple[Argument, ...]
    handler: Handler


COMMANDS: list[Command] = []
USER_ERRORS: tuple[type[Exception], ...] = (
    migrations.MigrationError,
    migrations.PrismaCommandError,
    localdb.LocalDatabaseError,
    engines.GenerateError,
)


def command(name: str, help: str, *arguments: Argument) -> Callable[[Handler], Handler]:
    """Register the decorated function as subcommand `name`."""

    def register(handler: Handler) -> Handler:
        COMMANDS.append(Command(name, help, arguments, handler))
        return handler

    return register


# --- Migrations ------------------------------------------------------------------------------

SCHEMA_ARG = arg("--schema", type=Path, default=migrations.SCHEMA, help="default: %(default)s")
MIGRATIONS_ARG = arg(
    "--migrations-dir", type=Path, default=migrations.MIGRATIONS_DIR, help="default: %(default)s"
)


@command("migrate-deploy", "Apply pending migrations to DATABASE_URL (like `prisma migrate deploy`).")
def migrate_deploy(args: argparse.Namespace) -> int:
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        print(
            "DATABASE_URL is not set. For a local database: "
            'export DATABASE_URL="$(python -m prisma_engines create-db clerk_sync)"',
            file=sys.stderr,
        )
        return 2
    problem = _database_url_problem(database_url)
    if problem is not None:
        print(f"DATABASE_URL {problem}", file=sys.stderr)
        return 2
    try:
        migrations.deploy(database_url)
    except psycopg.OperationalError as exc:
        print(f"cannot migrate the database in DATABASE_URL: {_connection_cause(exc)}", file=sys.stderr)
        return 1
    return 0


def _database_url_problem(url: str) -> str | None:
    """What is wrong with `url` as a PostgreSQL URL, without quoting it (it holds the password)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing it raises ValueError on a bad port
    except ValueError:
        return "is not a URL (a bad port or brackets?)"
    if parts.scheme not in ("postgresql", "postgres"):
        return "must be a postgresql:// URL"
    if not parts.hostname:
        return "names no host: expected postgresql://user:password@host:port/db"
    return None


def _connection_cause(exc: psycopg.OperationalError) -> str:
    """libpq's reason on one line, e.g. "connection refused by 127.0.0.1:5999" (never a password)."""
    first = (str(exc).strip().splitlines() or ["unknown error"])[0].removeprefix("connection failed: ")
    found = re.match(r'connection to server at "([^"]+)"(?: \([^)]*\))?, port (\d+) failed: (.+)', first)
    if found is None:
        return first[:300]
    host, port, why = found.groups()
    if why.startswith("Connection refused") or why.startswith("timeout expired"):
        return f"{why.lower()} by {host}:{port}"
    return f"{host}:{port}: {why[:300]}"


@command(
    "migrate-dev",
    "Create a migration for what schema.prisma changed (like `prisma migrate dev --create-only`).",
    arg("--name", required=True, help="what the migration does, e.g. add_user_locale"),
    SCHEMA_ARG,
    MIGRATIONS_ARG,
)
def migrate_dev(args: argparse.Namespace) -> int:
    created = migrations.make_migration(args.name, schema=args.schema, migrations_dir=args.migrations_dir)
    if created is None:
        print("schema.prisma and the migrations already agree; no migration created.")
    else:
        print(created / "migration.sql")
    return 0


@command(
    "migrate-diff-check",
    "Exit 1 and print the SQL if schema.prisma and the migrations disagree.",
    SCHEMA_ARG,
    MIGRATIONS_ARG,
)
def migrate_diff_check(args: argparse.Namespace) -> int:
    script = migrations.diff_script(schema=args.schema, migrations_dir=args.migrations_dir)
    if script is None:
        print("schema.prisma and the migrations agree.")
        return 0
    print("schema.prisma and the migrations disagree. The missing migration would be:\n")
    print(script, end="")
    print("\nCreate it with: python -m prisma_engines migrate-dev --name <what_changed>", file=sys.stderr)
    return 1


# --- Engines and the client -------------------------------------------------------------------


@command("engine-env", "Print `export` lines selecting the query engine (native if downloadable).")
def engine_env(args: argparse.Namespace) -> int:
    for name, value in engines.engine_env().items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


@command(
    "generate",
    "Generate the Prisma client (prisma generate) with the selected engine.",
    arg("--schema", default=str(migrations.SCHEMA), help="schema file (default: schema.prisma)"),
)
def generate(args: argparse.Namespace) -> int:
    engines.generate(Path(args.schema))
    return 0


# --- Local database --------------------------------------------------------------------------


@command("local-db-url", "Print the base URL of a local PostgreSQL server, starting one if needed.")
def local_db_url(args: argparse.Namespace) -> int:
    print(localdb.server_url())
    return 0


@command("local-db-stop", "Stop the project-local cluster under .local/postgres, if it runs.")
def local_db_stop(args: argparse.Namespace) -> int:
    print("stopped" if localdb.stop_local_cluster() else "not running")
    return 0


@command(
    "create-db",
    "Create a database on the local server unless it exists; print its URL.",
    arg("name", help="database name"),
)
def create_db(args: argparse.Namespace) -> int:
    base_url = localdb.server_url()
    localdb.create_database(base_url, args.name)
    print(localdb.database_url(base_url, args.name))
    return 0


# --- Entry point -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m prisma_engines", description=__doc__.splitlines()[0])
    parser.add_argument("-q", "--quiet", action="store_true", help="log only warnings and errors")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for spec in COMMANDS:
        subparser = subparsers.add_parser(spec.name, help=spec.help, description=spec.help)
        for argument in spec.arguments:
            subparser.add_argument(*argument.flags, **argument.options)
        subparser.set_defaults(handler=spec.handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        return int(args.handler(args))
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
