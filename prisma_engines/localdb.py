"""A PostgreSQL server for development and tests when DATABASE_URL isn't set.

The project needs a real PostgreSQL (Prisma has no in-memory fallback), but nobody should
have to configure one by hand. `server_url()` uses the server already answering on
127.0.0.1:5432 (a distribution package or CI service), and otherwise starts a
project-local cluster under `.local/postgres` (gitignored) from the installed PostgreSQL
server binaries, reusing it while it runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import shlex
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432"
LOCAL_CLUSTER_ROOT = PROJECT_ROOT / ".local" / "postgres"
#: Set to 1 to skip the 127.0.0.1:5432 probe and always use the project-local cluster.
FORCE_LOCAL_CLUSTER_ENV = "LOCALDB_FORCE_LOCAL_CLUSTER"
#: initdb refuses to run as root, so as root the cluster belongs to this user.
SERVER_USER = "postgres"


class LocalDatabaseError(RuntimeError):
    """No PostgreSQL server could be found or started; the message says what to do instead."""


def server_url(*, force_local_cluster: bool | None = None, root: Path | None = None) -> str:
    """Base URL (no database) of a PostgreSQL server to use, starting one if needed."""
    if force_local_cluster is None:
        force_local_cluster = os.environ.get(FORCE_LOCAL_CLUSTER_ENV, "") not in ("", "0")
    if not force_local_cluster and server_answers(DEFAULT_SERVER_URL):
        return DEFAULT_SERVER_URL
    return start_local_cluster(root)


def server_answers(base_url: str, *, timeout_s: int = 2) -> bool:
    """Whether a PostgreSQL server accepts a connection to its `postgres` database."""
    try:
        with psycopg.connect(database_url(base_url, "postgres"), connect_timeout=timeout_s):
            return True
    except psycopg.OperationalError:
        return False


def database_url(base_url: str, name: str) -> str:
    """`base_url` pointed at database `name` (keeping any query parameters)."""
    parts = urlsplit(base_url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + quote(name, safe=""), parts.query, ""))


def create_database(base_url: str, name: str) -> None:
    """Create database `name` unless it exists (safe to race with another creator)."""
    with _maintenance_connection(base_url) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return
        with contextlib.suppress(psycopg.errors.DuplicateDatabase):
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(base_url: str, name: str) -> None:
    """Drop database `name` if it exists, disconnecting whoever is still connected to it."""
    with _maintenance_connection(base_url) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        force = sql.SQL(" WITH (FORCE)") if conn.info.server_version >= 130000 else sql.SQL("")
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}{}").format(sql.Identifier(name), force))


@contextlib.contextmanager
def _maintenance_connection(base_url: str) -> Iterator[psycopg.Connection]:
    # CREATE/DROP DATABASE can't run inside a transaction block.
    with psycopg.connect(database_url(base_url, "postgres"), autocommit=True) as conn:
        yield conn


# --- The project-local cluster ---------------------------------------------------------------


def start_local_cluster(root: Path | None = None) -> str:
    """Start (creating it first if needed) the cluster under `root`; return its base URL.

    Layout: `data/` (PGDATA), `socket/` (unix socket, so nothing lands in /var/run),
    `port` (the TCP port on 127.0.0.1), `server.log`. A file lock serialises concurrent
    callers so two test processes can't both run initdb.
    """
    root = (root or LOCAL_CLUSTER_ROOT).resolve()
    bindir = find_server_binaries()
    if bindir is None:
        raise LocalDatabaseError(
            "No PostgreSQL server answers on 127.0.0.1:5432 and no PostgreSQL server binaries"
            " (initdb, pg_ctl) are installed. Set DATABASE_URL to a PostgreSQL database, or install"
            " PostgreSQL (e.g. `apt-get install postgresql`)."
        )
    root.mkdir(parents=True, exist_ok=True)
    _give_to_server_user(root)
    with _locked(root / ".lock"):
        data = root / "data"
        if not (data / "PG_VERSION").is_file():
            _run_as_server_user(
                [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8"],
                cwd=root,
            )
        port = _running_port(bindir, data)
        if port is None:
            port = _recorded_port(root)
            if port is None or not _port_is_free(port):
                port = _free_port()
            (root / "port").write_text(f"{port}\n")
            (root / "socket").mkdir(exist_ok=True)
            _give_to_server_user(root / "socket")
            options = f"-h 127.0.0.1 -p {port} -k {shlex.quote(str(root / 'socket'))}"
            pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log")]
            _run_as_server_user([*pg_ctl, "-w", "-t", "60", "-o", options, "start"], cwd=root)
        return f"postgresql://postgres@127.0.0.1:{port}"


def stop_local_cluster(root: Path | None = None) -> bool:
    """Stop the cluster under `root` if it runs (fast shutdown); return whether it ran."""
    root = (root or LOCAL_CLUSTER_ROOT).resolve()
    bindir = find_server_binaries()
    data = root / "data"
    if bindir is None or _running_port(bindir, data) is None:
        return False
    _run_as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], cwd=root)
    return True


def find_server_binaries() -> Path | None:
    """The directory holding `initdb` and `pg_ctl`: PATH first, then Debian's versioned dirs."""
    initdb = shutil.which("initdb")
    candidates = [Path(initdb).resolve().parent] if initdb else []
    versioned = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(versioned, key=lambda path: _version_key(path.parent.name), reverse=True)
    for bindir in candidates:
        if all(os.access(bindir / tool, os.X_OK) for tool in ("initdb", "pg_ctl")):
            return bindir
    return None


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _running_port(bindir: Path, data: Path) -> int | None:
    """The port of the postmaster running on `data`, from postmaster.pid, or None."""
    if not (data / "PG_VERSION").is_file():
        return None
    status = subprocess.run(
        _as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "status"]),
        cwd=data.parent,
        capture_output=True,
        check=False,
    )
    if status.returncode != 0:
        return None
    lines = (data / "postmaster.pid").read_text().splitlines()
    return int(lines[3])  # line 4 of postmaster.pid is the port


def _recorded_port(root: Path) -> int | None:
    with contextlib.suppress(FileNotFoundError, ValueError):
        return int((root / "port").read_text().strip())
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _as_server_user(command: list[str]) -> list[str]:
    """`command` as the cluster's owner: unchanged normally, via runuser/su when we are root."""
    if os.geteuid() != 0:
        return command
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise LocalDatabaseError(
            f"Running as root, and initdb refuses root, but there is no `{SERVER_USER}` user to own"
            " the local cluster. Set DATABASE_URL, or install PostgreSQL's server package."
        ) from None
    if shutil.which("runuser"):
        return ["runuser", "-u", SERVER_USER, "--", *command]
    return ["su", SERVER_USER, "-s", "/bin/sh", "-c", shlex.join(command)]


def _run_as_server_user(command: list[str], *, cwd: Path) -> None:
    result = subprocess.run(_as_server_user(command), cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LocalDatabaseError(
            f"`{shlex.join(command)}` failed ({result.returncode}):\n{result.stdout}{result.stderr}".rstrip()
        )


def _give_to_server_user(path: Path) -> None:
    """As root, hand `path` to the server user so initdb/postgres can write there."""
    if os.geteuid() == 0 and path.owner() != SERVER_USER:
        shutil.chown(path, user=SERVER_USER, group=pwd.getpwnam(SERVER_USER).pw_gid)
