"""The query engine never outlives the process that started it, even one that dies while it boots.

Real processes: a launcher starts prisma/query-engine.mjs the way Prisma Client Python
does (a copy of its environment, naming itself in CLERK_SYNC_ENGINE_PARENT as app/db.py
does) and is killed before Node has run the engine's first line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from app.db import ENGINE_PARENT_VARIABLE
from prisma_engines import engines
from prisma_engines.auth import TOKEN_ENV
from prisma_engines.migrations import PROJECT_ROOT
from tests.served import alive, free_port

# Prints the engine's pid, then dies abruptly, long before Node has started (~50 ms or more).
LAUNCHER = """
import os, subprocess, sys
env = dict(os.environ)
if sys.argv[1] == "names-itself":
    env[sys.argv[2]] = str(os.getpid())
engine = subprocess.Popen(sys.argv[3:], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(engine.pid, flush=True)
os._exit(0)
"""


def _orphan_engine(mode: str, database_url: str) -> int:
    env = {
        **os.environ,
        "PRISMA_DML_PATH": str(PROJECT_ROOT / "schema.prisma"),
        "DATABASE_URL": database_url,
        TOKEN_ENV: "t" * 32,
    }
    env.pop(ENGINE_PARENT_VARIABLE, None)
    command = ["node", str(engines.OFFLINE_QUERY_ENGINE), "--port", str(free_port())]
    launched = subprocess.run(
        [sys.executable, "-c", LAUNCHER, mode, ENGINE_PARENT_VARIABLE, *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return int(launched.stdout)


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_an_engine_orphaned_while_it_starts_exits(app_database_url: str) -> None:
    pid = _orphan_engine("names-itself", app_database_url)
    try:
        assert _gone_within(pid, 10), "the engine outlived the process that started it"
    finally:
        if alive(pid):
            os.kill(pid, 9)


def test_without_the_parent_named_an_orphan_keeps_running(app_database_url: str) -> None:
    """The control: the same launch without the variable leaves an engine watching init."""
    pid = _orphan_engine("anonymous", app_database_url)
    try:
        assert not _gone_within(pid, 5)
    finally:
        os.kill(pid, 9)
