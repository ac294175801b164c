"""Webhook input that is signed but unusable: answered 400 `invalid_payload`, logged briefly, never stored.

Each delivery is signed for real (svix's `Webhook.sign`, or the same HMAC over raw
bytes where svix can't) and sent to the running app over HTTP; the tables are then
read with psycopg, around the app's client.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from prisma import Prisma

from app.clerk.users import MAX_LENGTHS
from tests.conftest import WEBHOOK_SECRET, sign_webhook
from tests.fakeclerk import build_clerk_user

PATH = "/webhooks/clerk"
# Log lines stay short whatever the input; the attack that motivated this made 250 KB lines.
MAX_LOG_LINE = 2000


@pytest.fixture
def tables(db: Prisma, app_database_url: str) -> Iterator[str]:
    """The app's database URL, on empty tables; asserts at the end that nothing was written."""
    yield app_database_url
    with psycopg.connect(app_database_url, autocommit=True) as conn:
        counts = conn.execute(
            'SELECT (SELECT count(*) FROM "User"), (SELECT count(*) FROM "WebhookDelivery")'
        )
        assert counts.fetchone() == (0, 0)


@contextmanager
def app_logs(caplog: pytest.LogCaptureFixture) -> Iterator[list[logging.LogRecord]]:
    logger = logging.getLogger("app")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO)
    try:
        yield caplog.records
    finally:
        logger.removeHandler(caplog.handler)


def event(event_type: str, data: object) -> bytes:
    payload = {"data": data, "object": "event", "type": event_type, "timestamp": 1_700_000_000_000}
    return json.dumps(payload).encode()


def post(http: httpx.Client, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return http.post(PATH, content=body, headers=headers or sign_webhook(body))


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code
    return error


def assert_short_logs(records: list[logging.LogRecord]) -> None:
    assert records, "the rejection was not logged"
    lengths = [len(record.getMessage()) for record in records]
    assert max(lengths) <= MAX_LOG_LINE, lengths


def sign_raw(body: bytes, msg_id: str) -> dict[str, str]:
    """Svix's signature scheme over raw bytes, for bodies svix (which signs text) cannot sign."""
    key = base64.b64decode(WEBHOOK_SECRET.removeprefix("whsec_"))
    stamp = str(int(time.time()))
    digest = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    signature = base64.b64encode(digest).decode()
    return {"svix-id": msg_id, "svix-timestamp": stamp, "svix-signature": f"v1,{signature}"}


# --- lengths: what Clerk can send, and no more -------------------------------------------


def too_long(field: str) -> str:
    return "x" * (MAX_LENGTHS[field] + 1)


OVERLONG_USERS = {
    "id": lambda: build_clerk_user("user_" + "a" * 3000),
    "email": lambda: build_clerk_user(email="a" * 3000 + "@example.com"),
    "first_name": lambda: build_clerk_user(first_name=too_long("first_name")),
    "last_name": lambda: build_clerk_user(last_name=too_long("last_name")),
    "username": lambda: build_clerk_user(username=too_long("username")),
    "image_url": lambda: build_clerk_user(image_url="https://img.clerk.com/" + too_long("image_url")),
}


@pytest.mark.parametrize("field", OVERLONG_USERS)
@pytest.mark.parametrize("event_type", ["user.created", "user.updated"])
def test_overlong_fields_are_invalid_payload(
    http: httpx.Client, tables: str, caplog: pytest.LogCaptureFixture, field: str, event_type: str
) -> None:
    with app_logs(caplog) as records:
        error = assert_error(post(http, event(event_type, OVERLONG_USERS[field]())), 400, "invalid_payload")
    assert "characters long" in error["message"]
    assert any("characters long" in record.getMessage() for record in records), "no logged reason"
    assert_short_logs(records)


def test_overlong_deleted_user_id_is_invalid_payload(
    http: httpx.Client, tables: str, caplog: pytest.LogCaptureFixture
) -> None:
    data = {"deleted": True, "id": "user_" + "z" * 5000, "object": "user"}
    with app_logs(caplog) as records:
        assert_error(post(http, event("user.deleted", data)), 400, "invalid_payload")
    assert_short_logs(records)


def test_fields_at_the_bound_are_stored(http: httpx.Client, db: Prisma, app_database_url: str) -> None:
    local = "a" * (MAX_LENGTHS["email_address"] - len("@example.com"))
    user = build_clerk_user(
        "user_" + "b" * (MAX_LENGTHS["id"] - len("user_")),
        email=f"{local}@example.com",
        first_name="é" * MAX_LENGTHS["first_name"],
        image_url="https://img.clerk.com/" + "c" * (MAX_LENGTHS["image_url"] - 22),
    )
    response = post(http, event("user.created", user))
    assert response.status_code == 200, response.text
    with psycopg.connect(app_database_url, autocommit=True) as conn:
        row = conn.execute('SELECT "clerkId", email, "firstName" FROM "User"').fetchone()
    assert row == (user["id"], f"{local}@example.com", "é" * MAX_LENGTHS["first_name"])


def test_overlong_svix_id_is_invalid_payload(
    http: httpx.Client, tables: str, caplog: pytest.LogCaptureFixture
) -> None:
    body = event("user.created", build_clerk_user())
    msg_id = "msg_" + "q" * 2700
    with app_logs(caplog) as records:
        assert_error(post(http, body, sign_webhook(body, msg_id=msg_id)), 400, "invalid_payload")
    assert_short_logs(records)
    assert not any(msg_id in record.getMessage() for record in records)


def test_huge_unknown_event_type_is_invalid_payload_and_logged_briefly(
    http: httpx.Client, tables: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The 250 KB log line: an event type logged in full. Now it is refused, and quoted by length only."""
    event_type = "session." + "x" * 200_000
    with app_logs(caplog) as records:
        assert_error(post(http, event(event_type, {})), 400, "invalid_payload")
    assert_short_logs(records)


@pytest.mark.parametrize(
    "overrides",
    [
        {"updated_at": "9" * 100_000},  # invalid values were quoted in full
        {"object": "o" * 100_000},
        {"id": 10**4000},
    ],
    ids=["updated_at", "object", "id"],
)
def test_invalid_values_are_quoted_briefly(
    http: httpx.Client, tables: str, caplog: pytest.LogCaptureFixture, overrides: dict[str, object]
) -> None:
    user = build_clerk_user(**overrides)
    with app_logs(caplog) as records:
        response = post(http, event("user.updated", user))
    assert_error(response, 400, "invalid_payload")
    assert len(response.text) <= MAX_LOG_LINE
    assert_short_logs(records)


# --- bytes that are not text ---------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"type": "user.created", "data": {"id": "user_\xff\xfe"}}',
        b"\xc3\x28",  # an invalid two-byte sequence
        '{"type": "user.created"}'.encode("utf-16"),
    ],
    ids=["latin1-in-json", "bad-sequence", "utf16"],
)
def test_signed_body_that_is_not_utf8_is_invalid_payload(
    http: httpx.Client, tables: str, caplog: pytest.LogCaptureFixture, body: bytes
) -> None:
    msg_id = f"msg_{uuid.uuid4().hex}"
    with app_logs(caplog) as records:
        error = assert_error(post(http, body, sign_raw(body, msg_id)), 400, "invalid_payload")
    assert "UTF-8" in error["message"]
    assert any("UTF-8" in record.getMessage() for record in records)


def test_utf8_body_still_needs_a_valid_signature(http: httpx.Client, tables: str) -> None:
    body = event("user.created", build_clerk_user())
    headers = sign_webhook(body)
    headers["svix-signature"] = "v1," + base64.b64encode(b"\x00" * 32).decode()
    assert_error(post(http, body, headers), 400, "invalid_signature")


# --- why a signature was refused -------------------------------------------------------------


def test_stale_timestamp_is_logged_with_its_age(
    http: httpx.Client, tables: str, caplog: pytest.LogCaptureFixture
) -> None:
    body = event("user.created", build_clerk_user())
    headers = sign_webhook(body, at=datetime.now(UTC) - timedelta(minutes=10))
    with app_logs(caplog) as records:
        assert_error(post(http, body, headers), 400, "invalid_signature")
    messages = [record.getMessage() for record in records]
    assert any("timestamp 10 min in the past" in message for message in messages), messages


def test_wrong_secret_is_logged_as_such_without_the_secret(
    http: httpx.Client, tables: str, caplog: pytest.LogCaptureFixture
) -> None:
    body = event("user.created", build_clerk_user())
    other = "whsec_" + base64.b64encode(b"some other endpoint's secret!!!!").decode()
    with app_logs(caplog) as records:
        assert_error(post(http, body, sign_webhook(body, secret=other)), 400, "invalid_signature")
    messages = [record.getMessage() for record in records]
    assert any("no signature matches" in message for message in messages), messages
    assert not any(other.removeprefix("whsec_") in message for message in messages)
