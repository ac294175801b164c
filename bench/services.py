"""What a bench run stands up and tears down: a database, a fake Clerk, and the servers under test.

A server is the app served the way its revision serves it (tests/served.py:
gunicorn with gunicorn.conf.py). With `--compare REV`, an older revision is
checked out into a temporary git worktree and served from there too, with its
own offline engine code (prisma/src) on our node_modules, against the same
database, so both variants meet the same machine at the same moments.
"""

from __future__ import annotations

import contextlib
import importlib.util
import multiprocessing
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prisma_engines import engines, localdb, migrations
from tests.fakeclerk import FakeClerk

from .workload import fake_user_id

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def bench_database(server_url: str) -> Iterator[tuple[str, str]]:
    """A fresh, migrated database `clerk_sync_bench_<random>`; dropped at the end."""
    name = f"clerk_sync_bench_{uuid.uuid4().hex[:10]}"
    localdb.create_database(server_url, name)
    try:
        url = localdb.database_url(server_url, name)
        migrations.apply_migrations(url, migrations.MIGRATIONS_DIR)
        yield name, url
    finally:
        localdb.drop_database(server_url, name)


# --- the fake Clerk, in its own process (so it doesn't share the load generator's GIL) ---------


def _fake_clerk_main(conn: Any, n_users: int, token_ttl: int) -> None:
    with FakeClerk() as fake:
        ids = [fake_user_id() for _ in range(n_users)]
        for user_id in ids:
            fake.add_user(user_id, email=f"{user_id}@example.com")
        tokens = [fake.mint_token(user_id, exp_in=token_ttl) for user_id in ids]
        conn.send({"url": fake.url, "secret_key": fake.secret_key, "tokens": tokens, "ids": ids})
        with contextlib.suppress(EOFError, KeyboardInterrupt):
            conn.recv()  # until told to stop, or the parent is gone


@contextlib.contextmanager
def child_process(
    target: Callable[..., None], *args: Any, start_timeout: float = 300
) -> Iterator[tuple[dict[str, Any], int]]:
    """Run `target(conn, *args)` in a spawned process; yields (what it sends first, its pid).

    The target sends one dict when ready, then serves until told "stop" (or the parent is gone).
    """
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=target, args=(child, *args), daemon=True)
    process.start()
    try:
        if not parent.poll(start_timeout):
            raise RuntimeError(f"the {target.__name__} process did not start")
        yield parent.recv(), process.pid  # type: ignore[misc]
    finally:
        with contextlib.suppress(OSError):
            parent.send("stop")
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join()


def fake_clerk_process(
    n_users: int, token_ttl: int
) -> contextlib.AbstractContextManager[tuple[dict[str, Any], int]]:
    """A FakeClerk with `n_users` users and a session token for each; yields (info, pid)."""
    return child_process(_fake_clerk_main, n_users, token_ttl)


# --- the servers under test -------------------------------------------------------------------


@dataclass
class Variant:
    """One revision of the app under test."""

    name: str
    root: Path
    revision: str


@dataclass
class Server:
    variant: Variant
    url: str
    pid: int
    log_path: Path


def current_variant() -> Variant:
    return Variant("current", ROOT, _describe(ROOT))


def _describe(root: Path) -> str:
    result = subprocess.run(
        ["git", "-C", str(root), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() or "?"


@contextlib.contextmanager
def revision_worktree(revision: str, tmp: Path) -> Iterator[Variant]:
    """`revision`'s files exported into a temporary directory (`git archive`: the repository is
    not touched), sharing our prisma/node_modules."""
    path = tmp / f"rev-{revision.replace('/', '_')}"
    path.mkdir()
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", revision], capture_output=True, text=True, check=True
    ).stdout.strip()
    archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", commit], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(path)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise RuntimeError(f"git archive {revision} failed")
    (path / "prisma" / "node_modules").symlink_to(ROOT / "prisma" / "node_modules")
    yield Variant(f"rev {revision}", path, commit)


def _load_served(root: Path) -> Any:
    """The variant's own tests/served.py: it serves the app the way that revision does."""
    name = f"bench_served_{uuid.uuid4().hex[:6]}"
    spec = importlib.util.spec_from_file_location(name, root / "tests" / "served.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def variant_env(variant: Variant, base: dict[str, str]) -> dict[str, str]:
    """`base` with the offline engine taken from the variant's own prisma/ directory."""
    env = dict(base)
    ours = str(engines.OFFLINE_QUERY_ENGINE)
    theirs = str(variant.root / engines.OFFLINE_QUERY_ENGINE.relative_to(ROOT))
    for name, value in list(env.items()):
        if value == ours:
            env[name] = theirs
    env["PYTHONPATH"] = os.pathsep.join([str(variant.root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@contextlib.contextmanager
def serve(variant: Variant, env: dict[str, str], log_path: Path) -> Iterator[Server]:
    served_module = _load_served(variant.root)
    with served_module.gunicorn_server(variant_env(variant, env), log_path) as served:
        yield Server(variant, served.url, served.process.pid, log_path)
