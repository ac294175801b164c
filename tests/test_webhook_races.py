"""Webhooks under concurrency and faults: storms of one delivery, racing versions, every
delivery order, and a database cut mid-stream. Real HTTP, real PostgreSQL, a real TCP proxy.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from app import create_app
from app.config import Settings
from prisma_engines.migrations import MIGRATIONS_DIR, apply_migrations
from tests.conftest import WEBHOOK_SECRET, serve_app
from tests.tcpproxy import TcpProxy, via_local_port
from tests.webhook_events import (
    CREATED_AT,
    Event,
    Row,
    Store,
    Version,
    assert_delivery,
    assert_error,
    deliver,
    deliver_all,
    expected_users,
    ignoring_tombstone_versions,
    row_differences,
    storm,
    tombstone,
)

# --- Concurrency ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make_event", "outcome", "expected_rows"),
    [
        pytest.param(
            lambda: Event.snapshot("user.created", Version("user_storm", CREATED_AT)),
            "created",
            {"user_storm": Version("user_storm", CREATED_AT).row()},
            id="created",
        ),
        pytest.param(
            lambda: Event.deletion("user_storm", CREATED_AT + 7),
            "deleted",
            {"user_storm": tombstone("user_storm", CREATED_AT + 7)},
            id="deleted",
        ),
        pytest.param(
            lambda: Event.other("session.created", {"id": "sess_storm"}), "ignored", {}, id="ignored"
        ),
    ],
)
def test_a_storm_of_identical_deliveries_has_exactly_one_effect(
    base_url: str,
    store: Store,
    make_event: Callable[[], Event],
    outcome: str,
    expected_rows: dict[str, Row],
) -> None:
    """20 concurrent copies of one message: all 2xx, one 'processed', one delivery row, one effect."""
    event = make_event()

    responses = storm(base_url, event, copies=20)

    assert [r.status_code for r in responses] == [200] * 20, [
        r.text for r in responses if r.status_code != 200
    ]
    answers = sorted((r.json()["status"], r.json()["outcome"]) for r in responses)
    assert answers == [("duplicate", outcome)] * 19 + [("processed", outcome)]
    assert store.users() == expected_rows
    assert_delivery(store, event, outcome, event.user_id)
    assert len(store.deliveries()) == 1


def test_concurrent_versions_of_one_user_converge_to_the_newest(base_url: str, store: Store) -> None:
    """Ten different snapshots of one user racing each other: the newest wins, each is recorded once."""
    versions = [Version("user_race", CREATED_AT + i, first_name=f"Ada {i}") for i in range(10)]
    events = [Event.snapshot("user.updated", v) for v in reversed(versions)]

    responses = deliver_all(base_url, events, workers=10)

    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert store.users() == {"user_race": versions[-1].row()}
    assert set(store.deliveries()) == {e.msg_id for e in events}


# --- Convergence ------------------------------------------------------------------------------------

# (updates after the create, deleted?) per user; None updates: deleted without ever being created.
USER_PLANS: tuple[tuple[int | None, bool], ...] = (
    (0, False),
    (1, False),
    (3, False),
    (2, True),
    (0, True),
    (1, True),
    (3, True),
    (None, True),
)


def convergence_events() -> list[Event]:
    """Create/update/delete histories for 8 users, with increasing updated_at, as Clerk would emit."""
    events: list[Event] = []
    for n, (updates, deleted) in enumerate(USER_PLANS):
        user_id = f"user_conv{n}"
        start = CREATED_AT + n * 1000
        count = -1 if updates is None else updates
        for k in range(count + 1):
            version = Version(
                user_id,
                start + 10 * k,
                email=f"{user_id}.v{k}@example.com",
                first_name=None if k == 2 else f"First{k}",
                last_name=f"Last{k}",
                username=f"{user_id}_{k}" if k % 2 == 0 else None,
                image_url=f"https://img.clerk.com/{user_id}/{k}",
            )
            events.append(Event.snapshot("user.created" if k == 0 else "user.updated", version))
        if deleted:
            events.append(Event.deletion(user_id, start + 500))
    return events


@pytest.mark.parametrize(("seed", "workers"), [(1, 1), (2, 1), (3, 1), (4, 4), (5, 4)], ids=lambda v: str(v))
def test_every_delivery_order_converges_to_the_same_rows(
    base_url: str, store: Store, seed: int, workers: int
) -> None:
    """Shuffled (and partly concurrent) deliveries with redeliveries end in the independently
    computed rows: newest snapshot per user, or a tombstone dated by the delete event."""
    rng = random.Random(seed)
    events = convergence_events()
    stream = events + rng.sample(events, 6)  # six redeliveries of the same messages
    rng.shuffle(stream)

    responses = deliver_all(base_url, stream, workers=workers)

    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    processed = [r.json()["status"] for r in responses].count("processed")
    assert processed == len(events)
    assert row_differences(store.users(), expected_users(events)) == {}
    deliveries = store.deliveries()
    assert {k: (v["eventType"], v["clerkUserId"]) for k, v in deliveries.items()} == {
        e.msg_id: (e.type, e.user_id) for e in events
    }


# --- Database outage --------------------------------------------------------------------------------


@pytest.fixture
def outage_db(database_factory: Callable[[str], str]) -> Store:
    url = database_factory("clerk_sync_outage")
    apply_migrations(url, MIGRATIONS_DIR)
    return Store(url)


def test_a_database_outage_answers_503_without_partial_writes_and_redelivery_recovers(
    outage_db: Store,
) -> None:
    """With the database cut off mid-stream, deliveries fail with 503 and leave no trace (effect and
    svix-id go together); once it is back, Svix's redeliveries (same ids) apply and rows are right."""
    before = [
        Event.snapshot("user.created", Version("user_o1", CREATED_AT)),
        Event.snapshot("user.created", Version("user_o2", CREATED_AT)),
        Event.other("session.created", {"id": "sess_o"}),
    ]
    during = [
        Event.snapshot("user.updated", Version("user_o1", CREATED_AT + 10, first_name="Augusta")),
        Event.deletion("user_o2", CREATED_AT + 20),
        Event.snapshot("user.created", Version("user_o3", CREATED_AT)),
        Event.deletion("user_o4", CREATED_AT + 30),
        Event.other("session.removed", {"id": "sess_o"}),
    ]
    # A second stream, cut while requests are in flight.
    in_flight = [
        Event.snapshot("user.updated", Version(f"user_f{i % 4}", CREATED_AT + 100 + i, last_name=f"L{i}"))
        for i in range(16)
    ] + [Event.deletion("user_f3", CREATED_AT + 50_000)]

    with TcpProxy(("127.0.0.1", 5432)) as proxy:
        app = create_app(
            Settings(
                database_url=via_local_port(outage_db.url, proxy.port, "connect_timeout=2"),
                clerk_webhook_signing_secret=WEBHOOK_SECRET,
            )
        )
        try:
            with serve_app(app) as url, httpx.Client(base_url=url, timeout=30) as client:
                for event in before:
                    assert deliver(client, event).status_code == 200
                assert proxy.live_connections > 0
                healthy = outage_db.snapshot()

                proxy.cut()
                for event in during:
                    assert_error(deliver(client, event), 503, "database_unavailable")
                    assert outage_db.snapshot() == healthy

                proxy.restore()
                for event in during:
                    response = deliver(client, event)
                    assert response.status_code == 200, response.text
                    assert response.json()["status"] == "processed"
                assert ignoring_tombstone_versions(outage_db.users()) == expected_users(before + during)
                assert set(outage_db.deliveries()) == {e.msg_id for e in before + during}

                _cut_while_in_flight(url, proxy, in_flight)
                _assert_atomic(outage_db, before + during + in_flight)
                for event in in_flight:  # Svix retries everything without a 2xx; we resend all
                    response = deliver(client, event)
                    assert response.status_code == 200, response.text
                expected = expected_users(before + during + in_flight)
                assert ignoring_tombstone_versions(outage_db.users()) == expected
                assert set(outage_db.deliveries()) == {e.msg_id for e in before + during + in_flight}
        finally:
            app.extensions["database"].close()


def _cut_while_in_flight(base_url: str, proxy: TcpProxy, events: Sequence[Event]) -> None:
    """Deliver `events` from 4 threads and cut the database after the first few answers."""
    answered = threading.Semaphore(0)

    def send(event: Event) -> int:
        with httpx.Client(base_url=base_url, timeout=30) as client:
            status = deliver(client, event).status_code
        answered.release()
        return status

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(send, event) for event in events]
        for _ in range(3):
            answered.acquire()
        proxy.cut()
        statuses = [f.result() for f in futures]
    proxy.restore()
    assert set(statuses) <= {200, 503}, statuses
    assert 503 in statuses


def _assert_atomic(store: Store, events: Sequence[Event]) -> None:
    """The rows are exactly what the recorded deliveries produce: no effect without its svix-id."""
    recorded = set(store.deliveries())
    expected = expected_users(e for e in events if e.msg_id in recorded)
    assert ignoring_tombstone_versions(store.users()) == expected
