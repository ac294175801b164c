"""Hostile clients on real sockets, for the serving tests and bench/servers.py.

Slow clients trickle a request head or body a byte at a time and reconnect when the
server cuts them off, so that `n` of them stay open for the whole attack; probes are
ordinary requests on fresh connections, each with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from tests.conftest import sign_webhook
from tests.fakeclerk import build_clerk_user

SlowKind = Literal["header", "body"]


def raw_request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if (body or method == "POST") and not any(k.lower() == "content-length" for k in headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def healthz() -> bytes:
    return raw_request("GET", "/healthz")


def user_webhook() -> bytes:
    """A signed `user.created` for a new user: a real write."""
    user = build_clerk_user(f"user_{uuid.uuid4().hex[:24]}")
    body = json.dumps({"type": "user.created", "object": "event", "data": user})
    return raw_request("POST", "/webhooks/clerk", body.encode(), sign_webhook(body))


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    head = await reader.readuntil(b"\r\n\r\n")
    while head.startswith(b"HTTP/1.1 100"):
        head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Answer(int(lines[0].split(" ", 2)[1]), headers, body)


async def probe(port: int, request: bytes, budget: float = 1.0) -> tuple[int | str, float]:
    """One request on a fresh connection: its status (or what went wrong) and its time."""
    started = time.monotonic()
    writer = None
    try:
        async with asyncio.timeout(budget):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            answer = await read_answer(reader)
        return answer.status, time.monotonic() - started
    except TimeoutError:
        return "timeout", time.monotonic() - started
    except (OSError, asyncio.IncompleteReadError) as exc:
        return type(exc).__name__, time.monotonic() - started
    finally:
        if writer is not None:
            writer.close()


@dataclass
class SlowStats:
    connections: int = 0
    cut_off: int = 0  # connections the server closed while they were still trickling
    answers: Counter[int] = field(default_factory=Counter)
    open_now: int = 0


async def _slow_client(port: int, kind: SlowKind, until: float, stats: SlowStats) -> None:
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.2)
            continue
        stats.connections += 1
        stats.open_now += 1
        if kind == "header":
            writer.write(b"POST /webhooks/clerk HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        else:
            writer.write(raw_request("POST", "/webhooks/clerk", b"", {"Content-Length": "100000"})[:-2])
            writer.write(b"\r\n{")
        answered = asyncio.ensure_future(read_answer(reader))
        try:
            while time.monotonic() < until and not answered.done():
                writer.write(b"a" if kind == "header" else b" ")
                await writer.drain()
                await asyncio.wait([answered], timeout=1)
            if answered.done():
                stats.cut_off += 1
                if answered.exception() is None:
                    stats.answers[answered.result().status] += 1
        except (ConnectionError, OSError):
            stats.cut_off += 1
        finally:
            answered.cancel()
            stats.open_now -= 1
            writer.close()


async def under_slow_clients(
    port: int, kind: SlowKind, n: int, seconds: float, interval: float = 0.5, budget: float = 1.0
) -> tuple[list[tuple[int | str, float]], SlowStats]:
    """Probe /healthz and a signed webhook alternately every `interval` s while `n` slow clients run."""
    until = time.monotonic() + seconds
    stats = SlowStats()
    slow = [asyncio.create_task(_slow_client(port, kind, until, stats)) for _ in range(n)]
    await asyncio.sleep(1)  # let them all connect
    results = []
    i = 0
    while time.monotonic() < until:
        request = healthz() if i % 2 == 0 else user_webhook()
        i += 1
        results.append(await probe(port, request, budget))
        await asyncio.sleep(interval)
    await asyncio.gather(*slow, return_exceptions=True)
    return results, stats
