"""Nobody but its own client can use the offline query engine.

The engine listens on loopback, which every local user can reach. Each request must
carry the per-process token its client put in the engine's environment
(prisma_engines/auth.py); this is checked as an unprivileged user (`nobody`, when the
tests run as root), with a request that would otherwise run SQL as the service.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from prisma import Prisma

from app.db import Database
from prisma_engines import auth

CREATE_TABLE = {
    "query": 'mutation {\n  result: executeRaw\n  (\n    query: "CREATE TABLE intruder (x int)"\n'
    '    parameters: "[]"\n  )\n}',
    "variables": {},
}

# Run by another user: POST to the engine, print the status and body.
_REQUEST = """
import json, sys, urllib.error, urllib.request
url, body, headers = sys.argv[1], sys.argv[2].encode(), json.loads(sys.argv[3])
request = urllib.request.Request(url, data=body, headers={"content-type": "application/json", **headers})
try:
    with urllib.request.urlopen(request, timeout=10) as answer:
        print(answer.status, answer.read().decode())
except urllib.error.HTTPError as error:
    print(error.code, error.read().decode())
"""


@pytest.fixture
def engine(app_database_url: str) -> Iterator[tuple[Prisma, int]]:
    database = Database(app_database_url)
    client = database.client()
    with psycopg.connect(app_database_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS intruder")
    yield client, int(client._engine.url.rsplit(":", 1)[1])
    database.close()
    with psycopg.connect(app_database_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS intruder")


def as_other_user(url: str, body: object, headers: dict[str, str]) -> tuple[int, str]:
    """The request made by `nobody` (or, when not root, by this user without the client's help)."""
    python = sys.executable
    if os.geteuid() == 0:
        # The project's interpreter may live where `nobody` can't reach (/root/.pyenv); the system's will do.
        system = ("/usr/bin/python3", "/usr/local/bin/python3")
        python = next((p for p in system if os.access(p, os.X_OK)), python)
    command = [python, "-I", "-c", _REQUEST, url, json.dumps(body), json.dumps(headers)]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "nobody", "--", *command]
    out = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True, cwd="/")
    status, _, text = out.stdout.partition(" ")
    return int(status), text


def table_exists(url: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT to_regclass('intruder') IS NOT NULL").fetchone()
    return bool(row and row[0])


def test_a_request_without_the_token_is_refused(engine: tuple[Prisma, int], app_database_url: str) -> None:
    _, port = engine
    url = f"http://127.0.0.1:{port}/"
    for headers in ({}, {auth.TOKEN_HEADER: "x" * 43}, {auth.TOKEN_HEADER: ""}):
        status, text = as_other_user(url, CREATE_TABLE, headers)
        assert status == 401, text
        assert "x-query-engine-token" in text
    assert as_other_user(f"http://127.0.0.1:{port}/status", {}, {})[0] == 401
    assert not table_exists(app_database_url)

    # The same request with the token runs: it is the token, not the user, that the engine checks.
    status, text = as_other_user(url, CREATE_TABLE, {auth.TOKEN_HEADER: auth.engine_token()})
    assert status == 200, text
    assert table_exists(app_database_url)


def test_the_engine_listens_on_loopback_only(engine: tuple[Prisma, int]) -> None:
    _, port = engine
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                listening.add(address)
    loopback = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1 and ::1, as /proc writes them
    assert listening, "found no listening socket for the engine"
    assert listening <= loopback, listening


def test_the_token_is_in_no_log_nor_command_line(
    engine: tuple[Prisma, int], caplog: pytest.LogCaptureFixture
) -> None:
    client, _ = engine
    token = auth.engine_token()
    with caplog.at_level(logging.DEBUG, logger="prisma"):
        client.execute_raw("SELECT 1")
    assert caplog.records, "prisma logged nothing at debug level: the check would prove nothing"
    assert token not in caplog.text
    process = client._engine.process
    assert token not in " ".join(map(str, process.args))
    # Its environment is readable by its owner only, unlike its command line.
    assert Path(f"/proc/{process.pid}/environ").stat().st_mode & 0o077 == 0
