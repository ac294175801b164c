"""Text is stored exactly as sent, through both write paths.

Prisma Client Python 0.15's query builder used to insert spaces after U+0085,
U+2028 and U+2029 (see prisma_engines/builder.py). Any string PostgreSQL can store
as text (anything but NUL) in any free-text field, sent by a webhook or fetched from
Clerk after a login, must come back from the database character for character.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prisma import Prisma

from tests.conftest import sign_webhook
from tests.fakeclerk import FakeClerk, build_clerk_user

FIELDS = ("email", "first_name", "last_name", "username", "image_url")
COLUMNS = {"email": "email", "first_name": "firstName", "last_name": "lastName", "username": "username"}
COLUMNS["image_url"] = "imageUrl"
# Every character str.splitlines splits at, quotes and escapes, a BOM, the last code point.
TRICKY = ["\u2028", "\u2029", "\x85", "\r", "\n", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\t"]
TRICKY += ['"', "\\", "\\u2028", "\ufeff", "\U0010ffff", " ", "é", "🙂"]

storable_char = st.characters(codec="utf-8", exclude_characters="\x00")  # utf-8: no lone surrogates
storable_text = st.lists(st.one_of(storable_char, st.sampled_from(TRICKY)), max_size=24).map("".join)


def stored_row(url: str, clerk_id: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            'SELECT "clerkId", email, "firstName", "lastName", username, "imageUrl" FROM "User"'
            ' WHERE "clerkId" = %s',
            (clerk_id,),
        ).fetchone()
    assert row is not None, f"no row for {clerk_id!r}"
    return dict(zip(("id", *FIELDS), row, strict=True))


def via_webhook(http: httpx.Client, clerk_id: str, values: dict[str, str]) -> None:
    user = build_clerk_user(clerk_id, **values)
    body = json.dumps({"type": "user.created", "object": "event", "data": user})
    response = http.post("/webhooks/clerk", content=body, headers=sign_webhook(body))
    assert response.status_code == 200, response.text
    assert response.json()["outcome"] == "created"


def via_after_login(http: httpx.Client, fake_clerk: FakeClerk, clerk_id: str, values: dict[str, str]) -> None:
    fake_clerk.add_user(clerk_id, **values)
    token = fake_clerk.mint_token(clerk_id)
    response = http.post("/after-login", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    answered = response.json()
    assert answered["clerkId"] == clerk_id
    assert {field: answered[COLUMNS[field]] for field in FIELDS} == values


def check_both_paths(http: httpx.Client, fake_clerk: FakeClerk, url: str, values: dict[str, str]) -> None:
    for path in ("webhook", "after-login"):
        # Ids are not free text: anything but `user_[0-9A-Za-z_]+` is refused (tests/test_webhook_input.py).
        clerk_id = f"user_{uuid.uuid4().hex}"
        if path == "webhook":
            via_webhook(http, clerk_id, values)
        else:
            via_after_login(http, fake_clerk, clerk_id, values)
        assert stored_row(url, clerk_id) == {"id": clerk_id, **values}, path


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\x85"])
def test_line_separators_survive_in_every_field(
    char: str, http: httpx.Client, db: Prisma, fake_clerk: FakeClerk, app_database_url: str
) -> None:
    values = {field: f"a{char}b{char}{char}c{char}" for field in FIELDS}
    check_both_paths(http, fake_clerk, app_database_url, values)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.fixed_dictionaries({field: storable_text for field in FIELDS}))
def test_any_storable_text_comes_back_identical(
    texts: dict[str, str],
    http: httpx.Client,
    db: Prisma,
    fake_clerk: FakeClerk,
    app_database_url: str,
) -> None:
    check_both_paths(http, fake_clerk, app_database_url, texts)
