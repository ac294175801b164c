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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from app.config import Settings
from tests.conftest import WEBHOOK_SECRET, sign_webhook
from tests.fakeclerk import build_clerk_user
from tests.webhook_events import (
    CREATED_AT,
    ERROR_CODES,
    OLD_SECRET,
    PATH,
    SVIX_HEADERS,
    Event,
    Headers,
    Store,
    Version,
    assert_delivery,
    assert_error,
    assert_processed,
    clerk_event,
    deliver,
    encode_payload,
    ignoring_tombstone_versions,
    tombstone,
)

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
        return encode_payload(payload)
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
    event = Event.raw(encode_payload(payload))  # json.dumps escapes both: the body is valid UTF-8 JSON

    response = deliver(http, event)

    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert_error(response, 400, "invalid_payload")
        store.assert_empty()
    else:
        assert set(store.deliveries()) == {event.msg_id}


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
    _json.map(encode_payload),
    _event_payload.map(encode_payload),
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
    event = Event.raw(encode_payload(payload))

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
    unusable = Event.raw(encode_payload(clerk_event("user.created", {"object": "user"}, CREATED_AT)))
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
