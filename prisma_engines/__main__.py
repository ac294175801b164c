"""`python -m prisma_engines <command>`: the local PostgreSQL the scripts use without DATABASE_URL.

Prisma's own commands (db push, migrate, generate) run through `scripts/prisma` instead.

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
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prisma_engines import localdb

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
USER_ERRORS: tuple[type[Exception], ...] = (localdb.LocalDatabaseError,)


def command(name: str, help: str, *arguments: Argument) -> Callable[[Handler], Handler]:
    """Register the decorated function as subcommand `name`."""

    def register(handler: Handler) -> Handler:
        COMMANDS.append(Command(name, help, arguments, handler))
        return handler

    return register


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
