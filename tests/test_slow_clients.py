"""Slow clients and a slow Clerk cannot starve the service: real gunicorn, real sockets.

Figures are printed (run with -s to see them); the assertions are the goals.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.attacks import probe, raw_request, under_slow_clients, user_webhook
from tests.fakeclerk import FakeClerk
from tests.served import Served, gunicorn_server, server_env

# 40 s in the issue; shorter shows the same: every slow client is cut off at least twice.
ATTACK_SECONDS = float(os.environ.get("SLOW_ATTACK_SECONDS", "15"))
BODY_TIMEOUT = 3
WEBHOOK_SECONDS = 15


@pytest.fixture
def server(app_database_url: str, fake_clerk: FakeClerk, tmp_path: Path) -> Iterator[Served]:
    env = server_env(
        app_database_url,
        fake_clerk,
        # Longer than the fake's 10 s, so logins really wait on Clerk.
        CLERK_TIMEOUT="15",
        REQUEST_BODY_TIMEOUT=str(BODY_TIMEOUT),
        WEB_CONCURRENCY="2",
    )
    with gunicorn_server(env, tmp_path / "server.log", startup_timeout=60) as served:
        yield served


def _p99(ordered: list[float]) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _failures(results: list[tuple[int | str, float]], budget: float) -> list[tuple[int | str, float]]:
    return [(s, t) for s, t in results if not (isinstance(s, int) and 200 <= s < 300 and t <= budget)]


@pytest.mark.parametrize("kind", ["header", "body"])
def test_fifty_slow_clients_starve_nobody(server: Served, db: object, kind: str) -> None:
    started = time.monotonic()
    results, stats = asyncio.run(under_slow_clients(server.port, kind, 50, ATTACK_SECONDS))  # type: ignore[arg-type]
    failed = _failures(results, 1.0)
    print(
        f"\nslow-{kind}: {len(results)} probes, {len(failed)} failed, worst "
        f"{max(t for _, t in results):.3f} s; slow connections {stats.connections}, cut off "
        f"{stats.cut_off}, answers {dict(stats.answers)}, {time.monotonic() - started:.1f} s"
    )
    assert len(results) >= ATTACK_SECONDS, "the probe ran all along"
    assert not failed, f"probes without a 2xx within 1 s: {failed}"
    # Every wait is bounded: the server cuts each slow client off (heads after `keepalive`
    # s, bodies after REQUEST_BODY_TIMEOUT s), and they had to reconnect to stay at 50.
    assert stats.cut_off >= 50
    if kind == "body":
        assert stats.answers[408] >= 50, "a body that doesn't arrive in time gets 408"


def test_slow_clerk_does_not_hold_up_webhooks(server: Served, fake_clerk: FakeClerk, db: object) -> None:
    users = [f"user_slowclerk_{i:02d}" for i in range(64)]
    for user in users:
        fake_clerk.add_user(user, email=f"{user}@example.com")
    tokens = [fake_clerk.mint_token(user) for user in users]
    calls_before = sum(r.path.startswith("/v1/users/") for r in fake_clerk.requests)
    baseline: list[tuple[int | str, float]] = []

    async def attack() -> tuple[list[tuple[int | str, float]], list[tuple[int | str, float]]]:
        until = 0.0
        logins: list[tuple[int | str, float]] = []
        webhooks: list[tuple[int | str, float]] = []

        async def login(token: str) -> None:  # 64 of these keep 64 logins in flight
            request = raw_request("POST", "/after-login", headers={"Authorization": f"Bearer {token}"})
            while time.monotonic() < until:
                logins.append(await probe(server.port, request, 40))

        async def webhook_sender() -> None:
            while time.monotonic() < until:
                webhooks.append(await probe(server.port, user_webhook(), 10))

        # The same webhook load without logins first: the machine's own p99, for comparison.
        baseline_until = time.monotonic() + 6
        while time.monotonic() < baseline_until:
            pair = (probe(server.port, user_webhook(), 10) for _ in range(2))
            baseline.extend(await asyncio.gather(*pair))
        fake_clerk.delay(10, on="users")
        until = time.monotonic() + WEBHOOK_SECONDS + 1
        in_flight = [asyncio.create_task(login(token)) for token in tokens]
        await asyncio.sleep(1)
        await asyncio.gather(webhook_sender(), webhook_sender())
        await asyncio.gather(*in_flight)
        return logins, webhooks

    logins, webhooks = asyncio.run(attack())
    waited_on_clerk = sum(r.path.startswith("/v1/users/") for r in fake_clerk.requests) - calls_before
    times = sorted(t for _, t in webhooks)
    p99 = _p99(times)
    baseline_p99 = _p99(sorted(t for _, t in baseline))
    print(
        f"\nslow Clerk: {len(logins)} logins {dict(Counter(s for s, _ in logins))}, {waited_on_clerk} "
        f"waited on Clerk; {len(webhooks)} webhooks {dict(Counter(s for s, _ in webhooks))}, "
        f"p50 {times[len(times) // 2]:.3f} s, p99 {p99:.3f} s (without logins: p99 {baseline_p99:.3f} s)"
    )
    assert waited_on_clerk >= 16, "logins were stuck on Clerk while the webhooks ran"
    assert len(webhooks) >= 30
    assert all(s == 200 for s, _ in webhooks)
    # Under 1 s on an idle machine; a busy shared one may be slower with no logins at all.
    assert p99 < max(1.0, 3 * baseline_p99)
    assert all(isinstance(s, int) and s in (200, 503) for s, _ in logins), "every login is answered"
