"""`POST /webhooks/clerk`, end to end: Svix-signed deliveries over real HTTP into PostgreSQL.

Every delivery is signed with svix's own `Webhook.sign` and sent to the running
app; every test then reads the `User` and `WebhookDelivery` tables directly
(psycopg, not the app's client) to check what was, and was not, written.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from prisma import Prisma
from psycopg.rows import dict_row

from app import create_app
from app.config import Settings
from prisma_engines.migrations import MIGRATIONS_DIR, apply_migrations
from tests.conftest import WEBHOOK_SECRET, serve_app, sign_webhook
from tests.fakeclerk import build_clerk_user
from tests.tcpproxy import TcpProxy

PATH = "/webhooks/clerk"
# The secret Clerk used before a rotation; the app under test knows only WEBHOOK_SECRET.
OLD_SECRET = "whsec_" + base64.b64encode(b"the secret before the rotation!!").decode()
SVIX_HEADERS = ("svix-id", "svix-timestamp", "svix-signature")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CREATED_AT = 1_700_000_000_000  # ms, Clerk's `created_at` of every generated user
USER_COLUMNS = (
    "clerkId",
    "email",
    "firstName",
    "lastName",
    "username",
    "imageUrl",
    "clerkUpdatedAt",
    "deletedAt",
)
PERSONAL_COLUMNS = ("email", "firstName", "lastName", "username", "imageUrl")
ERROR_CODES = frozenset({"invalid_signature", "invalid_payload", "payload_too_large"})

Row = dict[str, Any]
Headers = dict[str, str]


def ms_to_datetime(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


# --- Clerk events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Version:
    """One Clerk snapshot of a user, and the row it should produce."""

    user_id: str
    updated_at: int
    email: str | None = "ada@example.com"
    first_name: str | None = "Ada"
    last_name: str | None = "Lovelace"
    username: str | None = "ada"
    image_url: str | None = "https://img.clerk.com/ada"

    def clerk_user(self) -> dict[str, Any]:
        # A non-primary address listed first: the stored email must be the primary one.
        return build_clerk_user(
            self.user_id,
            email=self.email,
            other_emails=(f"old-{self.updated_at}@example.com",),
            first_name=self.first_name,
            last_name=self.last_name,
            username=self.username,
            image_url=self.image_url,
            created_at=CREATED_AT,
            updated_at=self.updated_at,
        )

    def row(self) -> Row:
        return {
            "clerkId": self.user_id,
            "email": self.email,
            "firstName": self.first_name,
            "lastName": self.last_name,
            "username": self.username,
            "imageUrl": self.image_url,
            "clerkUpdatedAt": ms_to_datetime(self.updated_at),
            "deletedAt": None,
        }


def tombstone(user_id: str, deleted_at_ms: int) -> Row:
    """A deleted user's row: only the id and the deletion time are left."""
    return {
        "clerkId": user_id,
        **dict.fromkeys(PERSONAL_COLUMNS),
        "clerkUpdatedAt": None,
        "deletedAt": ms_to_datetime(deleted_at_ms),
    }


def ignoring_tombstone_versions(rows: dict[str, Row]) -> dict[str, Row]:
    """`rows` without tombstones' clerkUpdatedAt, for tests about something else; the value itself
    is pinned by `test_a_tombstone_is_the_same_whether_or_not_the_user_was_seen_first`."""
    return {k: {**v, "clerkUpdatedAt": None} if v["deletedAt"] is not None else v for k, v in rows.items()}


def row_differences(actual: dict[str, Row], expected: dict[str, Row]) -> dict[str, Any]:
    """Per Clerk id, the columns that differ as (actual, expected); {} when the tables agree."""
    diff: dict[str, Any] = {}
    for user_id in sorted(actual.keys() | expected.keys()):
        got, want = actual.get(user_id), expected.get(user_id)
        if got is None or want is None:
            diff[user_id] = (got, want)
        elif cols := {c: (got[c], want[c]) for c in USER_COLUMNS if got[c] != want[c]}:
            diff[user_id] = cols
    return diff


def clerk_event(event_type: str, data: object, at_ms: int) -> dict[str, Any]:
    """A payload shaped like Clerk's webhook events."""
    return {"data": data, "object": "event", "type": event_type, "timestamp": at_ms}


@dataclass(frozen=True, slots=True)
class Event:
    """A Svix message: a stable id and the exact bytes Clerk sent."""

    msg_id: str
    type: str
    user_id: str | None
    body: bytes
    version: Version | None = None
    deleted_at: int | None = None

    @classmethod
    def snapshot(cls, event_type: str, version: Version, msg_id: str | None = None) -> Event:
        payload = clerk_event(event_type, version.clerk_user(), version.updated_at)
        return cls(_msg_id(msg_id), event_type, version.user_id, _encode(payload), version=version)

    @classmethod
    def deletion(cls, user_id: str, at_ms: int, msg_id: str | None = None) -> Event:
        payload = clerk_event("user.deleted", {"deleted": True, "id": user_id, "object": "user"}, at_ms)
        return cls(_msg_id(msg_id), "user.deleted", user_id, _encode(payload), deleted_at=at_ms)

    @classmethod
    def other(cls, event_type: str, data: object, msg_id: str | None = None) -> Event:
        payload = clerk_event(event_type, data, CREATED_AT)
        return cls(_msg_id(msg_id), event_type, None, _encode(payload))

    @classmethod
    def raw(cls, body: bytes | str, msg_id: str | None = None) -> Event:
        return cls(_msg_id(msg_id), "", None, body.encode() if isinstance(body, str) else body)

    def headers(self, *, secret: str = WEBHOOK_SECRET, at: datetime | None = None) -> Headers:
        return sign_webhook(self.body, msg_id=self.msg_id, secret=secret, at=at)


def _msg_id(msg_id: str | None) -> str:
    # uuid4, not `random`: Hypothesis reseeds `random` for every example, which would repeat ids.
    return msg_id or f"msg_{uuid.uuid4().hex}"


def _encode(payload: object) -> bytes:
    return json.dumps(payload).encode()


def expected_users(events: Iterable[Event]) -> dict[str, Row]:
    """The final rows, computed without the app: a deletion is final, else the newest snapshot."""
    newest: dict[str, Version] = {}
    deleted: dict[str, int] = {}
    for event in events:
        if event.deleted_at is not None and event.user_id is not None:
            deleted[event.user_id] = event.deleted_at
        elif event.version is not None:
            current = newest.get(event.version.user_id)
            if current is None or event.version.updated_at > current.updated_at:
                newest[event.version.user_id] = event.version
    rows = {user_id: version.row() for user_id, version in newest.items()}
    rows.update({user_id: tombstone(user_id, at) for user_id, at in deleted.items()})
    return rows


# --- Sending ----------------------------------------------------------------------------------------


def deliver(client: httpx.Client, event: Event, **signing: Any) -> httpx.Response:
    return client.post(PATH, content=event.body, headers=event.headers(**signing))


def deliver_all(base_url: str, events: Sequence[Event], *, workers: int) -> list[httpx.Response]:
    """Send `events` from `workers` threads at once (each with its own connection), in list order."""

    def send(event: Event) -> httpx.Response:
        with httpx.Client(base_url=base_url, timeout=30) as client:
            return deliver(client, event)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(send, events))


def storm(base_url: str, event: Event, copies: int) -> list[httpx.Response]:
    """The same delivery from `copies` threads, released together by a barrier."""
    barrier = threading.Barrier(copies)
    headers = event.headers()

    def send(_: int) -> httpx.Response:
        with httpx.Client(base_url=base_url, timeout=30) as client:
            request = client.build_request("POST", PATH, content=event.body, headers=headers)
            barrier.wait()
            return client.send(request)

    with ThreadPoolExecutor(max_workers=copies) as pool:
        return list(pool.map(send, range(copies)))


def assert_processed(response: httpx.Response, event: Event, outcome: str) -> None:
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "processed", "type": event.type, "outcome": outcome}


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    """An error answer: the status, a JSON body, and the stable `error.code`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code and isinstance(error["message"], str)


# --- Reading the database ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Store:
    """The tables as PostgreSQL holds them, read around the app's client."""

    url: str

    def _query(self, sql: str) -> list[Row]:
        with psycopg.connect(self.url, autocommit=True, row_factory=dict_row) as conn:
            return conn.execute(sql).fetchall()

    def users(self) -> dict[str, Row]:
        """The columns that carry meaning (not the row's own id or write stamps), by Clerk id."""
        columns = ", ".join(f'"{c}"' for c in USER_COLUMNS)
        return {row["clerkId"]: row for row in self._query(f'SELECT {columns} FROM "User"')}

    def raw_users(self) -> list[Row]:
        """Every column, including `updatedAt`, which any write would move."""
        return self._query('SELECT * FROM "User" ORDER BY "clerkId"')

    def deliveries(self) -> dict[str, Row]:
        return {row["svixId"]: row for row in self._query('SELECT * FROM "WebhookDelivery"')}

    def snapshot(self) -> tuple[list[Row], dict[str, Row]]:
        return self.raw_users(), self.deliveries()

    def assert_empty(self) -> None:
        assert self.users() == {}
        assert self.deliveries() == {}


@pytest.fixture
def store(db: Prisma, app_database_url: str) -> Store:
    """The shared app's database, on empty tables (the `db` fixture empties them)."""
    return Store(app_database_url)


@pytest.fixture
def base_url(http: httpx.Client) -> str:
    return str(http.base_url).rstrip("/")


def assert_delivery(store: Store, event: Event, outcome: str, clerk_user_id: str | None = None) -> None:
    row = store.deliveries()[event.msg_id]
    assert (row["eventType"], row["clerkUserId"], row["outcome"]) == (event.type, clerk_user_id, outcome)


# --- Applying events --------------------------------------------------------------------------------


def test_user_created_stores_the_primary_snapshot_and_records_the_delivery(
    http: httpx.Client, store: Store
) -> None:
    """A user.created writes every mirrored field (the primary email, not the first) and its svix-id."""
    version = Version("user_created", CREATED_AT + 5, email="ada@example.com", username=None)
    event = Event.snapshot("user.created", version)

    assert_processed(deliver(http, event), event, "created")

    assert store.users() == {"user_created": version.row()}
    assert_delivery(store, event, "created", "user_created")
    assert len(store.deliveries()) == 1


def test_user_updated_applies_newer_snapshots_and_ignores_stale_ones(
    http: httpx.Client, store: Store
) -> None:
    """Newest `updated_at` wins, null fields overwrite; an older snapshot arriving late changes nothing."""
    v1 = Version("user_upd", CREATED_AT)
    v2 = Version("user_upd", CREATED_AT + 10, email="countess@example.com", first_name=None, image_url=None)
    v_stale = Version("user_upd", CREATED_AT + 5, email="stale@example.com")
    create, update, stale = (
        Event.snapshot("user.created", v1),
        Event.snapshot("user.updated", v2),
        Event.snapshot("user.updated", v_stale),
    )

    assert_processed(deliver(http, create), create, "created")
    assert_processed(deliver(http, update), update, "updated")
    assert store.users() == {"user_upd": v2.row()}
    before = store.raw_users()
    assert_processed(deliver(http, stale), stale, "unchanged")

    assert store.raw_users() == before
    assert_delivery(store, update, "updated", "user_upd")
    assert_delivery(store, stale, "unchanged", "user_upd")
    assert len(store.deliveries()) == 3


def test_user_deleted_writes_a_tombstone_and_keeps_the_row(http: httpx.Client, store: Store) -> None:
    """user.deleted clears personal data, sets deletedAt to the event's time, keeps the row (same id)."""
    version = Version("user_del", CREATED_AT)
    create, delete = Event.snapshot("user.created", version), Event.deletion("user_del", CREATED_AT + 99)
    assert_processed(deliver(http, create), create, "created")
    row_id = store.raw_users()[0]["id"]

    assert_processed(deliver(http, delete), delete, "deleted")

    expected = {"user_del": tombstone("user_del", CREATED_AT + 99)}
    assert ignoring_tombstone_versions(store.users()) == expected
    assert store.raw_users()[0]["id"] == row_id
    assert_delivery(store, delete, "deleted", "user_del")


def test_a_tombstone_is_the_same_whether_or_not_the_user_was_seen_first(
    http: httpx.Client, store: Store
) -> None:
    """Convergence of user.deleted: a tombstone written over a stored snapshot equals one written for
    an unknown id (the delete overtaking the create), clerkUpdatedAt included, since a snapshot
    arriving after the tombstone is never applied."""
    seen = [
        Event.snapshot("user.created", Version("user_seen", CREATED_AT)),
        Event.snapshot("user.updated", Version("user_seen", CREATED_AT + 10, first_name="Augusta")),
        Event.deletion("user_seen", CREATED_AT + 99),
    ]
    unseen = [
        Event.deletion("user_unseen", CREATED_AT + 99),
        Event.snapshot("user.created", Version("user_unseen", CREATED_AT)),
        Event.snapshot("user.updated", Version("user_unseen", CREATED_AT + 10, first_name="Augusta")),
    ]
    for event in seen + unseen:
        assert deliver(http, event).status_code == 200

    rows = store.users()
    assert {**rows["user_seen"], "clerkId": "x"} == {**rows["user_unseen"], "clerkId": "x"}
    assert rows["user_seen"] == tombstone("user_seen", CREATED_AT + 99)


def test_deleting_an_unknown_user_stores_a_tombstone_that_a_late_create_cannot_revive(
    http: httpx.Client, store: Store
) -> None:
    """A deletion that overtakes the user's creation still leaves a final tombstone."""
    delete = Event.deletion("user_ghost", CREATED_AT + 50)
    late_create = Event.snapshot("user.created", Version("user_ghost", CREATED_AT))
    late_update = Event.snapshot("user.updated", Version("user_ghost", CREATED_AT + 100))

    assert_processed(deliver(http, delete), delete, "deleted")
    assert_processed(deliver(http, late_create), late_create, "ignored_deleted")
    assert_processed(deliver(http, late_update), late_update, "ignored_deleted")

    assert store.users() == {"user_ghost": tombstone("user_ghost", CREATED_AT + 50)}
    assert_delivery(store, late_create, "ignored_deleted", "user_ghost")
    assert len(store.deliveries()) == 3


@pytest.mark.parametrize(
    ("event_type", "data"),
    [
        ("session.created", {"id": "sess_1", "object": "session", "user_id": "user_1"}),
        ("organization.created", {"id": "org_1", "object": "organization"}),
        ("email.created", None),
        ("user.banned", {"id": "user_1"}),
    ],
)
def test_other_event_types_are_acknowledged_and_recorded_as_ignored(
    http: httpx.Client, store: Store, event_type: str, data: object
) -> None:
    """Events clerk-sync doesn't handle get a 2xx (so Svix stops) and an 'ignored' delivery row."""
    event = Event.other(event_type, data)

    assert_processed(deliver(http, event), event, "ignored")

    assert store.users() == {}
    assert_delivery(store, event, "ignored")


@pytest.mark.parametrize(
    "make_first",
    [
        pytest.param(lambda: Event.snapshot("user.created", Version("user_dup", CREATED_AT)), id="created"),
        pytest.param(lambda: Event.deletion("user_dup", CREATED_AT + 1), id="deleted"),
        pytest.param(lambda: Event.other("session.ended", {"id": "sess_1"}), id="ignored"),
    ],
)
def test_redelivery_is_a_duplicate_and_changes_nothing(
    http: httpx.Client, store: Store, make_first: Callable[[], Event]
) -> None:
    """A redelivered svix-id answers 2xx 'duplicate' with the first outcome and writes nothing."""
    first = make_first()
    response = deliver(http, first)
    assert response.status_code == 200, response.text
    outcome = response.json()["outcome"]
    before = store.snapshot()

    again = deliver(http, first, at=datetime.now(UTC) - timedelta(seconds=30))  # a later attempt, re-signed

    assert again.status_code == 200, again.text
    assert again.json() == {"status": "duplicate", "type": first.type, "outcome": outcome}
    assert store.snapshot() == before


def test_dedupe_is_keyed_on_the_svix_id_not_the_content(http: httpx.Client, store: Store) -> None:
    """A second message under an already-processed svix-id is not applied, even if it would change the row."""
    v1, v2 = Version("user_key", CREATED_AT), Version("user_key", CREATED_AT + 1, first_name="Augusta")
    first = Event.snapshot("user.created", v1, msg_id="msg_same")
    assert_processed(deliver(http, first), first, "created")
    before = store.snapshot()

    response = deliver(http, Event.snapshot("user.updated", v2, msg_id="msg_same"))

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "duplicate"
    assert store.snapshot() == before


# --- Signature verification -------------------------------------------------------------------------

Tamper = Callable[[bytes, Headers], tuple[bytes, Headers]]


def _without(*names: str) -> Tamper:
    return lambda body, headers: (body, {k: v for k, v in headers.items() if k not in names})


def _with(name: str, value: Callable[[str], str]) -> Tamper:
    return lambda body, headers: (body, {**headers, name: value(headers[name])})


def _resigned(secret: str = WEBHOOK_SECRET, shift: timedelta = timedelta(0)) -> Tamper:
    def tamper(body: bytes, headers: Headers) -> tuple[bytes, Headers]:
        return body, sign_webhook(
            body, msg_id=headers["svix-id"], secret=secret, at=datetime.now(UTC) + shift
        )

    return tamper


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


UNVERIFIABLE: dict[str, Tamper] = {
    "no svix-id": _without("svix-id"),
    "no svix-timestamp": _without("svix-timestamp"),
    "no svix-signature": _without("svix-signature"),
    "no svix headers": _without(*SVIX_HEADERS),
    "empty signature": _with("svix-signature", lambda sig: ""),
    "signature without version": _with("svix-signature", lambda sig: sig.split(",", 1)[1]),
    "v1 with nothing": _with("svix-signature", lambda sig: "v1,"),
    "v1 with junk": _with("svix-signature", lambda sig: "v1,!!not*base64!!"),
    "extra comma": _with("svix-signature", lambda sig: sig + ",AAAA"),
    "comma separated list": _with("svix-signature", lambda sig: f"{sig},{sig}"),
    "wrong version": _with("svix-signature", lambda sig: "v2," + sig.split(",", 1)[1]),
    "truncated signature": _with("svix-signature", lambda sig: sig[:-8]),
    "random signature": _with("svix-signature", lambda sig: "v1," + _b64(random.randbytes(32))),
    "garbled timestamp": _with("svix-timestamp", lambda ts: "yesterday"),
    "nan timestamp": _with("svix-timestamp", lambda ts: "nan"),
    "infinite timestamp": _with("svix-timestamp", lambda ts: "inf"),
    "huge timestamp": _with("svix-timestamp", lambda ts: "9" * 40),
    "negative timestamp": _with("svix-timestamp", lambda ts: "-" + ts),
    "shifted timestamp": _with("svix-timestamp", lambda ts: str(int(ts) + 1)),
    "other svix-id": _with("svix-id", lambda msg_id: msg_id + "x"),
    "wrong secret": _resigned(OLD_SECRET),
    "stale timestamp": _resigned(shift=-timedelta(minutes=6)),
    "future timestamp": _resigned(shift=timedelta(minutes=6)),
    "altered body": lambda body, headers: (body.replace(b'"Ada"', b'"Eve"', 1), headers),
    "appended body": lambda body, headers: (body + b" ", headers),
}


@pytest.mark.parametrize("tamper", UNVERIFIABLE.values(), ids=UNVERIFIABLE.keys())
def test_unverifiable_deliveries_are_rejected_with_400(
    http: httpx.Client, store: Store, tamper: Tamper
) -> None:
    """Missing, garbled, wrongly signed, stale/future or altered: 400 invalid_signature, no writes."""
    event = Event.snapshot("user.created", Version("user_forged", CREATED_AT))
    signed = event.headers()
    body, headers = tamper(event.body, signed)
    assert (body, headers) != (event.body, signed)

    assert_error(http.post(PATH, content=body, headers=headers), 400, "invalid_signature")

    store.assert_empty()


@pytest.mark.parametrize(
    "shift", [timedelta(minutes=-4), timedelta(minutes=4)], ids=["4min-old", "4min-ahead"]
)
def test_timestamps_within_five_minutes_are_accepted(
    http: httpx.Client, store: Store, shift: timedelta
) -> None:
    """Clock skew inside Svix's 5-minute tolerance is fine."""
    version = Version("user_skew", CREATED_AT)
    event = Event.snapshot("user.created", version)

    assert_processed(deliver(http, event, at=datetime.now(UTC) + shift), event, "created")

    assert store.users() == {"user_skew": version.row()}


def _signature_list(event: Event, at: datetime, secrets: Sequence[str]) -> Headers:
    """Headers whose svix-signature holds one `v1,` signature per secret, space-separated."""
    signatures = [event.headers(secret=secret, at=at)["svix-signature"] for secret in secrets]
    return {**event.headers(at=at), "svix-signature": " ".join(signatures)}


@pytest.mark.parametrize(
    "secrets",
    [
        pytest.param((OLD_SECRET, WEBHOOK_SECRET), id="old-then-new"),
        pytest.param((WEBHOOK_SECRET, OLD_SECRET), id="new-then-old"),
        pytest.param((OLD_SECRET, "whsec_" + _b64(b"another retired one"), WEBHOOK_SECRET), id="three"),
    ],
)
def test_secret_rotation_any_matching_signature_suffices(
    http: httpx.Client, store: Store, secrets: tuple[str, ...]
) -> None:
    """During a rotation Svix signs with old and new secrets; one signature by our secret is enough."""
    version = Version("user_rotated", CREATED_AT)
    event = Event.snapshot("user.created", version)
    headers = _signature_list(event, datetime.now(UTC), secrets)
    assert len(headers["svix-signature"].split(" ")) == len(secrets)

    assert_processed(http.post(PATH, content=event.body, headers=headers), event, "created")

    assert store.users() == {"user_rotated": version.row()}


def test_signatures_only_by_retired_secrets_are_rejected(http: httpx.Client, store: Store) -> None:
    """A well-formed list in which no signature is by the app's secret is refused."""
    event = Event.snapshot("user.created", Version("user_rotated", CREATED_AT))
    other = "whsec_" + _b64(b"another retired one")
    headers = _signature_list(event, datetime.now(UTC), (OLD_SECRET, other))

    assert_error(http.post(PATH, content=event.body, headers=headers), 400, "invalid_signature")

    store.assert_empty()


# --- Size limit -------------------------------------------------------------------------------------


def _padded_event(size: int) -> Event:
    """A valid user.created whose JSON body is exactly `size` bytes (whitespace padding)."""
    event = Event.snapshot("user.created", Version("user_big", CREATED_AT))
    assert len(event.body) < size
    return Event.raw(event.body[:-1] + b" " * (size - len(event.body)) + b"}", msg_id=event.msg_id)


def _chunks(body: bytes, size: int = 16 * 1024) -> Iterator[bytes]:
    """A generator body: httpx sends it chunked, without Content-Length."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def _post_sized(http: httpx.Client, event: Event, *, chunked: bool) -> httpx.Response:
    content: bytes | Iterator[bytes] = _chunks(event.body) if chunked else event.body
    return http.post(PATH, content=content, headers=event.headers())


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_bodies_over_the_limit_are_rejected_with_413(
    http: httpx.Client, store: Store, settings: Settings, chunked: bool
) -> None:
    """One byte over webhook_max_bytes, announced or streamed in chunks: 413 and nothing written."""
    event = _padded_event(settings.webhook_max_bytes + 1)

    assert_error(_post_sized(http, event, chunked=chunked), 413, "payload_too_large")

    store.assert_empty()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_bodies_at_the_limit_are_read_whole_and_applied(
    http: httpx.Client, store: Store, settings: Settings, chunked: bool
) -> None:
    """Exactly webhook_max_bytes is allowed, and a chunked body is read to its end before verifying."""
    event = _padded_event(settings.webhook_max_bytes)

    response = _post_sized(http, event, chunked=chunked)

    assert response.status_code == 200, response.text
    assert store.users()["user_big"] == Version("user_big", CREATED_AT).row()


# --- Verified but unusable --------------------------------------------------------------------------

UNUSABLE: dict[str, bytes | str | dict[str, Any]] = {
    "not JSON": "this is not json",
    "truncated JSON": '{"type": "user.created", "data": {"id": "user_1"',
    "JSON array": "[1, 2, 3]",
    "JSON string": '"user.created"',
    "JSON null": "null",
    "no type": {"data": {"id": "user_1"}, "object": "event"},
    "empty type": clerk_event("", {"id": "user_1"}, CREATED_AT),
    "numeric type": clerk_event(7, {"id": "user_1"}, CREATED_AT),  # type: ignore[arg-type]
    "created without data": {"type": "user.created", "object": "event"},
    "created with null data": clerk_event("user.created", None, CREATED_AT),
    "created with list data": clerk_event("user.created", [{"id": "user_1"}], CREATED_AT),
    "created without id": clerk_event("user.created", build_clerk_user("user_x", id=None), CREATED_AT),
    "updated with empty id": clerk_event("user.updated", build_clerk_user("user_x", id=""), CREATED_AT),
    "updated with numeric id": clerk_event("user.updated", build_clerk_user("user_x", id=12), CREATED_AT),
    "updated with bad updated_at": clerk_event(
        "user.updated", build_clerk_user("user_x", updated_at="yesterday"), CREATED_AT
    ),
    "created of another object": clerk_event(
        "user.created", build_clerk_user("user_x", object="organization"), CREATED_AT
    ),
    "deleted without id": clerk_event("user.deleted", {"deleted": True, "object": "user"}, CREATED_AT),
    "deleted with null data": clerk_event("user.deleted", None, CREATED_AT),
    "deeply nested JSON": "[" * 100_000 + "]" * 100_000,
    "deeply nested data": clerk_event("user.created", json.loads("[" * 500 + "]" * 500), CREATED_AT),
}


def _body(payload: bytes | str | dict[str, Any]) -> bytes:
    if isinstance(payload, dict):
        return _encode(payload)
    return payload.encode() if isinstance(payload, str) else payload


@pytest.mark.parametrize("payload", UNUSABLE.values(), ids=UNUSABLE.keys())
def test_verified_but_unusable_payloads_are_rejected_with_400(
    http: httpx.Client, store: Store, payload: bytes | str | dict[str, Any]
) -> None:
    """Authentic but unusable deliveries: 400 invalid_payload (a retry won't help), no writes."""
    event = Event.raw(_body(payload))

    assert_error(deliver(http, event), 400, "invalid_payload")

    store.assert_empty()


UNSTORABLE: dict[str, dict[str, Any]] = {
    "NUL in a name": clerk_event(
        "user.created", build_clerk_user("user_nul", first_name="Ada\x00Lovelace"), CREATED_AT
    ),
    "NUL in the user id": clerk_event("user.created", build_clerk_user("user_\x00nul"), CREATED_AT),
    "NUL in an ignored event type": clerk_event("session.\x00created", {"id": "sess_1"}, CREATED_AT),
    "lone surrogate in a name": clerk_event(
        "user.created", build_clerk_user("user_sur", first_name="Ada\ud800"), CREATED_AT
    ),
    "lone surrogate in an ignored event type": clerk_event("session.\udfffcreated", {}, CREATED_AT),
}


@pytest.mark.parametrize("payload", UNSTORABLE.values(), ids=UNSTORABLE.keys())
def test_verified_payloads_with_unstorable_text_are_answered_200_or_400(
    http: httpx.Client, store: Store, payload: dict[str, Any]
) -> None:
    """Valid JSON that PostgreSQL/Prisma can't store as is (NUL, lone surrogates) is a payload
    problem, not an outage: 400 (or 200 if sanitised), never 5xx, which Svix would retry forever."""
    event = Event.raw(_encode(payload))  # json.dumps escapes both: the body is valid UTF-8 JSON

    response = deliver(http, event)

    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert_error(response, 400, "invalid_payload")
        store.assert_empty()
    else:
        assert set(store.deliveries()) == {event.msg_id}


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


def _via_proxy(database_url: str, port: int) -> str:
    """`database_url` through the proxy, failing fast on connect."""
    parts = urlsplit(database_url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    query = "&".join(filter(None, [parts.query, "connect_timeout=2"]))
    return urlunsplit(
        (parts.scheme, f"{netloc[0]}@{host}" if len(netloc) == 2 else host, parts.path, query, "")
    )


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
                database_url=_via_proxy(outage_db.url, proxy.port),
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


# --- Properties: nothing a client sends makes the server fail ---------------------------------------

_NOW = int(datetime.now(UTC).timestamp())
_header_text = st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=60).map(
    lambda s: s.strip(" \t\u00a0")
)
_b64_blob = st.binary(max_size=48).map(_b64)
_signature_item = st.one_of(
    _b64_blob.map(lambda b: f"v1,{b}"),
    _header_text.map(lambda t: f"v1,{t}"),
    _b64_blob.map(lambda b: f"v2,{b}"),
    st.sampled_from(["v1,", "v1", ",", "v1,,", "v1,a,b", "v1a,AAAA", "V1,AAAA"]),
    _header_text,
)
_signature = st.one_of(
    st.lists(_signature_item, max_size=3).map(" ".join),
    st.lists(_signature_item, min_size=20, max_size=80).map(" ".join),
    st.lists(_signature_item, max_size=4).map(",".join),
)
_timestamp = st.one_of(
    st.integers(_NOW - 600, _NOW + 600).map(str),
    st.integers(-(10**30), 10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "0", "-0", "1e400", "0x10", "NaN", "9" * 400, "\u0661\u0662\u0663", f"{_NOW}.5"]),
    _header_text,
)
_msg_ids = st.one_of(st.just("msg_2ZKqT3Zk1"), _header_text, st.text("msg_0123456789abcdef", max_size=40))
# Strings JSON can carry but a database may not: NUL, lone surrogates, odd unicode.
_text = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["\x00", "a\x00b", "\ud800", "x\udfff", "\u202e\ufeff", "\U0001f600", "\\", "'; --"]),
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
_event_type = st.one_of(
    st.sampled_from(["user.created", "user.updated", "user.deleted", "session.created", ""]),
    _text,
    _json,
)
_user_id = st.one_of(st.just("user_prop"), _text.map(lambda s: f"user_{s}"), _json)
_user_data = st.fixed_dictionaries(
    {},
    optional={
        "id": _user_id,
        "object": st.one_of(st.just("user"), _json),
        "deleted": st.booleans(),
        "updated_at": st.one_of(
            st.integers(0, 253402300799999), st.integers(-(10**20), 10**20), st.booleans(), _json
        ),
        "first_name": st.one_of(st.none(), _text, _json),
        "username": st.one_of(st.none(), _text),
        "primary_email_address_id": st.one_of(st.just("idn_1"), st.none(), _json),
        "email_addresses": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {"id": st.sampled_from(["idn_1", "idn_2"]), "email_address": st.one_of(_text, _json)}
                ),
                max_size=3,
            ),
            _json,
        ),
    },
)
_event_payload = st.fixed_dictionaries(
    {},
    optional={
        "type": _event_type,
        "data": st.one_of(_user_data, _json),
        "object": st.just("event"),
        "timestamp": st.one_of(st.integers(-(10**20), 10**20), st.booleans(), _json),
    },
)
_any_body = st.one_of(
    st.binary(max_size=2048),
    st.text(max_size=500).map(str.encode),
    _json.map(_encode),
    _event_payload.map(_encode),
)
_headers = st.fixed_dictionaries(
    {
        "svix-id": st.one_of(st.none(), _msg_ids),
        "svix-timestamp": st.one_of(st.none(), _timestamp),
        "svix-signature": st.one_of(st.none(), _signature),
        "content-type": st.one_of(st.none(), st.just("application/json"), _header_text),
    }
)
_PROPERTY_SETTINGS = hypothesis_settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_PROPERTY_SETTINGS
@given(body=_any_body, headers=_headers)
def test_arbitrary_requests_are_never_a_server_error(
    http: httpx.Client, body: bytes, headers: dict[str, str | None]
) -> None:
    """Random bodies with random, garbled or missing Svix headers: a 4xx JSON error, never a 5xx."""
    # HTTP can't carry leading/trailing whitespace in a value; everything else goes as UTF-8 bytes.
    sent = [(name, value.strip(" \t").encode()) for name, value in headers.items() if value is not None]

    response = http.post(PATH, content=body, headers=sent)

    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.json()["error"]["code"] in ERROR_CODES


@_PROPERTY_SETTINGS
@given(payload=st.one_of(_event_payload, _json))
def test_signed_arbitrary_json_is_answered_200_or_400(http: httpx.Client, payload: object) -> None:
    """Correctly signed JSON of any shape is applied (200) or refused as unusable (400): never 5xx."""
    event = Event.raw(_encode(payload))

    response = deliver(http, event)

    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert_error(response, 400, "invalid_payload")


# --- Logs -------------------------------------------------------------------------------------------


@contextmanager
def capture_app_logs(caplog: pytest.LogCaptureFixture) -> Iterator[list[logging.LogRecord]]:
    """Every record, including the `app` loggers' (which may not propagate to root)."""
    app_logger = logging.getLogger("app")
    level = app_logger.level
    caplog.set_level(logging.DEBUG)
    app_logger.addHandler(caplog.handler)
    app_logger.setLevel(logging.DEBUG)
    try:
        yield caplog.records
    finally:
        app_logger.removeHandler(caplog.handler)
        app_logger.setLevel(level)


def _log_text(caplog: pytest.LogCaptureFixture, record: logging.LogRecord) -> str:
    """The record as formatted (with any traceback) plus its attributes (structured extras)."""
    return f"{caplog.handler.format(record)} {record.__dict__!r}"


def _secret_forms(secret: str) -> list[str]:
    return [secret, secret.removeprefix("whsec_")]


def test_logs_never_contain_the_secret_or_signatures(
    http: httpx.Client, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Rejections are logged (by svix-id), but no log line carries the secret or a signature."""
    forged = Event.snapshot("user.created", Version("user_log", CREATED_AT))
    forged_headers = _signature_list(forged, datetime.now(UTC), (OLD_SECRET,))
    unusable = Event.raw(_encode(clerk_event("user.created", {"object": "user"}, CREATED_AT)))
    unusable_headers = unusable.headers()
    signatures = [forged_headers["svix-signature"], unusable_headers["svix-signature"]]

    with capture_app_logs(caplog) as records:
        assert_error(http.post(PATH, content=forged.body, headers=forged_headers), 400, "invalid_signature")
        assert_error(http.post(PATH, content=unusable.body, headers=unusable_headers), 400, "invalid_payload")
        texts = [_log_text(caplog, record) for record in records]
        app_texts = [_log_text(caplog, r) for r in records if r.name.startswith("app")]

    assert any(unusable.msg_id in t for t in app_texts), "the unusable delivery was not logged"
    forbidden = [
        *_secret_forms(WEBHOOK_SECRET),
        *_secret_forms(OLD_SECRET),
        *signatures,
        *(sig.split(",", 1)[1] for s in signatures for sig in s.split(" ")),
    ]
    leaks = [(secret, text) for secret in forbidden for text in texts if secret in text]
    assert leaks == []
    store.assert_empty()
