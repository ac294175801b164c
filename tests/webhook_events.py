"""Clerk webhook events for the tests: building, signing, sending, and reading what was stored.

Shared by tests/test_webhooks.py and tests/test_webhook_races.py; the `store` and
`base_url` fixtures are in tests/conftest.py.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
from psycopg.rows import dict_row

from tests.conftest import WEBHOOK_SECRET, sign_webhook
from tests.fakeclerk import build_clerk_user

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
        return cls(_msg_id(msg_id), event_type, version.user_id, encode_payload(payload), version=version)

    @classmethod
    def deletion(cls, user_id: str, at_ms: int, msg_id: str | None = None) -> Event:
        payload = clerk_event("user.deleted", {"deleted": True, "id": user_id, "object": "user"}, at_ms)
        return cls(_msg_id(msg_id), "user.deleted", user_id, encode_payload(payload), deleted_at=at_ms)

    @classmethod
    def other(cls, event_type: str, data: object, msg_id: str | None = None) -> Event:
        payload = clerk_event(event_type, data, CREATED_AT)
        return cls(_msg_id(msg_id), event_type, None, encode_payload(payload))

    @classmethod
    def raw(cls, body: bytes | str, msg_id: str | None = None) -> Event:
        return cls(_msg_id(msg_id), "", None, body.encode() if isinstance(body, str) else body)

    def headers(self, *, secret: str = WEBHOOK_SECRET, at: datetime | None = None) -> Headers:
        return sign_webhook(self.body, msg_id=self.msg_id, secret=secret, at=at)


def _msg_id(msg_id: str | None) -> str:
    # uuid4, not `random`: Hypothesis reseeds `random` for every example, which would repeat ids.
    return msg_id or f"msg_{uuid.uuid4().hex}"


def encode_payload(payload: object) -> bytes:
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


def assert_delivery(store: Store, event: Event, outcome: str, clerk_user_id: str | None = None) -> None:
    row = store.deliveries()[event.msg_id]
    assert (row["eventType"], row["clerkUserId"], row["outcome"]) == (event.type, clerk_user_id, outcome)
