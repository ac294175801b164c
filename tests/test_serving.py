"""The production server: gunicorn workers, their engines, SIGTERM, and the request log."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.attacks import read_answer, user_webhook
from tests.conftest import WEBHOOK_SECRET, sign_webhook
from tests.fakeclerk import FakeClerk
from tests.served import Served, alive, gunicorn_server, server_env


def _children(pid: int) -> set[int]:
    """Direct children of `pid`, read from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces; the parent pid is the second field after it.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.add(int(entry.name))
    return found


@pytest.fixture
def gunicorn(app_database_url: str, fake_clerk: FakeClerk, tmp_path: Path) -> Iterator[Served]:
    env = server_env(app_database_url, fake_clerk, WEB_CONCURRENCY="2")
    with gunicorn_server(env, tmp_path / "server.log", startup_timeout=60) as server:
        yield server


def _is_engine(pid: int) -> bool:
    """A query engine serving its client, as Prisma spawns it (not e.g. its `--version` probe)."""
    try:
        return b"--enable-raw-queries" in (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return False


def test_each_worker_owns_an_engine_and_sigterm_leaves_none(gunicorn: Served, db: object) -> None:
    workers = _children(gunicorn.process.pid)
    assert len(workers) == 2
    # /healthz answered from one worker; the other may still be starting its engine, with
    # short-lived helpers of its own. Wait until each worker has settled on its children.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        children = {worker: _children(worker) for worker in workers}
        if all(len(c) == 1 and _is_engine(next(iter(c))) for c in children.values()):
            break
        time.sleep(0.1)
    engines = {engine for c in children.values() for engine in c}
    assert len(engines) == 2, "one engine per worker, started after fork"
    assert all(len(c) == 1 and all(_is_engine(pid) for pid in c) for c in children.values())

    gunicorn.process.send_signal(signal.SIGTERM)
    assert gunicorn.process.wait(timeout=30) == 0
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in engines | workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in engines | workers if alive(pid)], "no worker or engine outlives the server"


def test_request_log_is_one_json_line_per_request_without_secrets(
    gunicorn: Served, fake_clerk: FakeClerk, db: object
) -> None:
    fake_clerk.add_user("user_served", email="served@example.com")
    token = fake_clerk.mint_token("user_served")
    with httpx.Client(base_url=gunicorn.url, timeout=30) as http:
        assert (
            http.post("/after-login?token=" + token, headers={"Authorization": f"Bearer {token}"}).status_code
            == 200
        )
        body = json.dumps({"type": "user.updated", "data": {"id": "user_served"}})
        headers = sign_webhook(body)
        assert http.post("/webhooks/clerk", content=body + " ", headers=headers).status_code == 400
    gunicorn.process.send_signal(signal.SIGTERM)
    gunicorn.process.wait(timeout=30)

    text = gunicorn.log_path.read_text()
    for secret in (token, headers["svix-signature"], WEBHOOK_SECRET, fake_clerk.secret_key):
        assert secret not in text
    # One log format: every line, the server's own included, is a JSON object of one shape.
    lines = [json.loads(line) for line in text.splitlines()]
    assert all({"ts", "level", "logger", "message", "pid"} <= line.keys() for line in lines)
    server_lines = {line["message"].split(":")[0] for line in lines if line["logger"] == "gunicorn.error"}
    assert {"Booting worker with pid", "Shutting down"} <= server_lines
    requests = [line for line in lines if line.get("event") == "request"]
    by_path = {(r["method"], r["path"], r["status"]) for r in requests}
    assert ("POST", "/after-login", 200) in by_path
    assert ("POST", "/webhooks/clerk", 400) in by_path
    assert all(r["duration_ms"] >= 0 and r["request_id"] for r in requests)
    assert sum(r["path"] == "/after-login" for r in requests) == 1


def test_sigterm_to_the_process_group_drains_like_sigterm_to_the_master(gunicorn: Served, db: object) -> None:
    """systemd's KillMode=control-group signals every process, the query engines too."""
    answered_before: list[int | str] = []  # requests sent before the signal
    answered_after: list[int | str] = []
    signalled = 0.0

    async def client() -> None:
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", gunicorn.port)
            except OSError:
                return  # the listener is closed: the server is stopping
            try:
                while True:
                    sent_at = time.monotonic()
                    writer.write(user_webhook())
                    answer = await asyncio.wait_for(read_answer(reader), 30)
                    (answered_before if not signalled or sent_at < signalled else answered_after).append(
                        answer.status
                    )
                    if answer.headers.get("connection") == "close":
                        break
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                if not signalled or sent_at < signalled:
                    answered_before.append(type(exc).__name__)  # lost: it was sent before the signal
                return
            finally:
                writer.close()

    async def attack() -> None:
        nonlocal signalled
        clients = [asyncio.create_task(client()) for _ in range(32)]
        await asyncio.sleep(2)
        signalled = time.monotonic()
        os.killpg(gunicorn.process.pid, signal.SIGTERM)
        await asyncio.gather(*clients)

    started = time.monotonic()
    asyncio.run(attack())
    assert gunicorn.process.wait(timeout=40) == 0
    print(
        f"\ngroup SIGTERM: sent before {len(answered_before)} {dict(Counter(answered_before))}, "
        f"after {len(answered_after)} {dict(Counter(answered_after))}, {time.monotonic() - started:.1f} s"
    )
    assert len(answered_before) >= 32
    assert all(status == 200 for status in answered_before), "every request sent before the signal is applied"
    assert not [status for status in answered_after if not isinstance(status, int) or status >= 500]


async def _exchange(
    port: int, *requests: bytes, await_close: bool = True
) -> tuple[list[tuple[int, dict[str, str], object]], bool]:
    """Sends each request on one connection, reading each answer; and whether the server then closed it.

    A kept-alive connection is only closed after gunicorn's `keepalive` (5 s), so callers that
    expect it to stay open pass `await_close=False` instead of racing that timer.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    try:
        for request in requests:
            writer.write(request)
            await writer.drain()
            answer = await asyncio.wait_for(read_answer(reader), 30)
            answers.append((answer.status, answer.headers, json.loads(answer.body)))
            if answer.headers.get("connection") == "close":
                break
        closed = await asyncio.wait_for(reader.read(1), 5) == b"" if await_close else False
    finally:
        writer.close()
    return answers, closed


def test_server_answers_are_json_and_close_honestly(gunicorn: Served, db: object) -> None:
    port = gunicorn.port
    healthz = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"

    def post(size: int) -> bytes:
        head = f"POST /webhooks/clerk HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n"
        return head.encode() + b" " * size

    # Over the server's REQUEST_MAX_BYTES (1 MiB): refused before the app, and closed.
    [(status, headers, body)], closed = asyncio.run(_exchange(port, post(2 * 1024 * 1024), healthz))
    assert (status, headers["connection"], body["error"]["code"]) == (413, "close", "payload_too_large")
    assert closed
    # Over the webhook limit (256 KiB) but read whole: the app's 413, and the connection goes on.
    answers, _ = asyncio.run(_exchange(port, post(300 * 1024), healthz, await_close=False))
    assert [a[0] for a in answers] == [413, 200]
    assert answers[0][1].get("connection") != "close"
    assert answers[0][2]["error"]["code"] == "payload_too_large"
    # gunicorn's own parse errors: JSON, closed.
    for request, expected in (
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n", 431),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", 400),
    ):
        [(status, headers, body)], closed = asyncio.run(_exchange(port, request, healthz))
        assert (status, headers["connection"]) == (expected, "close")
        assert headers["content-type"] == "application/json"
        assert set(body["error"]) == {"code", "message"}
        assert closed


def test_master_never_imports_the_app(gunicorn: Served, db: object) -> None:
    """Workers patch for gevent before importing the app; a master holding it would fork it unpatched."""
    master = gunicorn.process.pid
    killed = min(_children(master))
    os.kill(killed, signal.SIGKILL)  # the master runs child_exit, then forks a replacement
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        workers = _children(master)
        if killed not in workers and len(workers) == 2 and all(_children(w) for w in workers):
            break
        time.sleep(0.2)
    assert killed not in workers and len(workers) == 2
    # Prisma's pydantic_core extension is mapped into every process that imported the app.
    assert all("pydantic_core" in (Path("/proc") / str(w) / "maps").read_text() for w in workers)
    assert "pydantic_core" not in (Path("/proc") / str(master) / "maps").read_text()
