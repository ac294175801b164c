"""`POST /after-login` over real HTTP, against a real fake Clerk and the real database.

The session app (see conftest) verifies tokens with the session fake Clerk's
JWKS; tests that need to stop Clerk or change how tokens are verified build
their own fake Clerk and app, served on their own socket.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prisma import Prisma
from prisma.models import User
from werkzeug.serving import make_server

from app import create_app
from app.clerk.users import parse_clerk_user
from app.config import Settings
from app.sync import SyncOutcome, delete_user_from_database, sync_user_with_database
from prisma_engines import localdb
from tests.concurrency import run_at_once
from tests.conftest import FRONTEND_ORIGIN
from tests.fakeclerk import ISSUER, FakeClerk, build_clerk_user
from tests.served import gunicorn_server

BASE_VERSION = 1_700_000_000_123
OUTCOME_HEADER = "X-Clerk-Sync-Outcome"
FOREIGN_ORIGIN = "https://evil.example"


# --- helpers ---------------------------------------------------------------------------------------


def new_clerk_id() -> str:
    return f"user_{uuid4().hex}"


@functools.cache
def foreign_key() -> rsa.RSAPrivateKey:
    """An RSA key Clerk never published (the fakes share their keys, so it is generated here)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def post_after_login(client: httpx.Client, token: str | None = None, **kwargs: Any) -> httpx.Response:
    headers = {**(bearer(token) if token is not None else {}), **kwargs.pop("headers", {})}
    return client.post("/after-login", headers=headers, **kwargs)


def add_user(fake: FakeClerk, clerk_id: str | None = None, **fields: Any) -> dict[str, Any]:
    """A Clerk user whose primary address is not listed first, so a wrong pick shows."""
    fields.setdefault("email", "ada@example.com")
    fields.setdefault("other_emails", ["secondary@example.com"])
    return fake.add_user(clerk_id or new_clerk_id(), **fields)


def assert_json_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """A JSON error answer with a stable code: never HTML, never a traceback."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    text = response.text.lower()
    assert "traceback" not in text and "<html" not in text and 'file "' not in text
    return body


def row_count(db: Prisma) -> int:
    return db.user.count()


def read(db: Prisma, clerk_id: str) -> User | None:
    return db.user.find_unique(where={"clerkId": clerk_id})


def assert_body_is_row(body: dict[str, Any], row: User | None) -> None:
    """The answer shows the stored row, field for field, without the internal id."""
    assert row is not None
    assert "id" not in body
    assert body["clerkId"] == row.clerkId
    assert body["email"] == row.email
    assert body["firstName"] == row.firstName
    assert body["lastName"] == row.lastName
    assert body["username"] == row.username
    assert body["imageUrl"] == row.imageUrl
    assert row.clerkUpdatedAt is not None
    assert body["clerkUpdatedAt"] == row.clerkUpdatedAt.isoformat()
    assert body["updatedAt"] == row.updatedAt.isoformat()
    assert body["deletedAt"] is None


def settings_for(fake: FakeClerk, database_url: str, **overrides: Any) -> Settings:
    """Settings like the session app's, pointed at another fake Clerk."""
    fields: dict[str, Any] = {
        "database_url": database_url,
        "clerk_api_url": fake.url,
        "clerk_secret_key": fake.secret_key,
        "clerk_authorized_parties": (FRONTEND_ORIGIN,),
        "clerk_timeout": 1.0,
        **overrides,
    }
    return Settings(**fields)


@contextmanager
def serve(settings: Settings) -> Iterator[httpx.Client]:
    """A fresh app on its own socket, and a client for it; the app's database is closed after."""
    app = create_app(settings)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    # A short poll interval only makes shutdown quick.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.server_port}", timeout=30) as client:
            yield client
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        app.extensions["database"].close()


@pytest.fixture
def clerk(fake_clerk: FakeClerk, db: Prisma) -> Iterator[FakeClerk]:
    """The session fake Clerk, healthy before and after the test (`db` heals it before)."""
    yield fake_clerk
    fake_clerk.heal()


@pytest.fixture
def own_clerk() -> Iterator[FakeClerk]:
    """A fake Clerk of this test's own, which it may stop."""
    with FakeClerk() as fake:
        yield fake


# --- success ---------------------------------------------------------------------------------------


def test_after_login_creates_then_keeps_then_updates(
    http: httpx.Client, db: Prisma, clerk: FakeClerk
) -> None:
    """First call creates the row, a repeat leaves it alone, a newer Clerk user updates it."""
    clerk_id = new_clerk_id()
    add_user(
        clerk,
        clerk_id,
        email="ada@example.com",
        first_name="Ada",
        last_name="Lovelace",
        image_url="https://img.example.com/ada.png",
        updated_at=BASE_VERSION,
    )
    token = clerk.mint_token(clerk_id)

    first = post_after_login(http, token)
    assert first.status_code == 200, first.text
    assert first.headers[OUTCOME_HEADER] == "created"
    body = first.json()
    assert body["clerkId"] == clerk_id
    assert body["email"] == "ada@example.com"
    assert (body["firstName"], body["lastName"]) == ("Ada", "Lovelace")
    assert body["imageUrl"] == "https://img.example.com/ada.png"
    created = read(db, clerk_id)
    assert_body_is_row(body, created)
    assert created is not None

    second = post_after_login(http, token)
    assert second.status_code == 200, second.text
    assert second.headers[OUTCOME_HEADER] == "unchanged"
    assert second.json() == body
    assert read(db, clerk_id) == created

    add_user(clerk, clerk_id, email="countess@example.com", first_name="Augusta", updated_at=BASE_VERSION + 1)
    third = post_after_login(http, token)
    assert third.status_code == 200, third.text
    assert third.headers[OUTCOME_HEADER] == "updated"
    updated = read(db, clerk_id)
    assert updated is not None
    assert_body_is_row(third.json(), updated)
    assert (updated.email, updated.firstName) == ("countess@example.com", "Augusta")
    assert updated.id == created.id
    assert db.user.count(where={"clerkId": clerk_id}) == 1


def test_token_in_session_cookie(http: httpx.Client, db: Prisma, clerk: FakeClerk) -> None:
    """Same-origin calls send the token in the `__session` cookie, without Authorization."""
    clerk_id = new_clerk_id()
    add_user(clerk, clerk_id)

    response = post_after_login(http, headers={"Cookie": f"__session={clerk.mint_token(clerk_id)}"})

    assert response.status_code == 200, response.text
    assert response.json()["clerkId"] == clerk_id
    assert_body_is_row(response.json(), read(db, clerk_id))


def test_clock_skew_within_leeway_is_accepted(http: httpx.Client, db: Prisma, clerk: FakeClerk) -> None:
    """A token whose `nbf` is a couple of seconds ahead (a fast browser clock) still works."""
    clerk_id = new_clerk_id()
    add_user(clerk, clerk_id)
    response = post_after_login(http, clerk.mint_token(clerk_id, nbf_offset=2))
    assert response.status_code == 200, response.text
    assert read(db, clerk_id) is not None


def test_deleted_user_gets_410(http: httpx.Client, db: Prisma, clerk: FakeClerk) -> None:
    """A tombstoned user who still has a session is told so, and the tombstone is not refilled."""
    clerk_id = new_clerk_id()
    add_user(clerk, clerk_id)
    delete_user_from_database(clerk_id, db)

    response = post_after_login(http, clerk.mint_token(clerk_id))

    assert_json_error(response, 410, "user_deleted")
    row = read(db, clerk_id)
    assert row is not None and row.deletedAt is not None and row.email is None


# --- 401: the token cannot be trusted --------------------------------------------------------------

TokenRequest = Callable[[FakeClerk, str], dict[str, str]]

BAD_TOKENS: dict[str, tuple[TokenRequest, str]] = {
    "missing": (lambda fake, sub: {}, "token_missing"),
    "other_scheme": (lambda fake, sub: {"Authorization": "Basic dXNlcjpwYXNz"}, "token_missing"),
    "malformed": (lambda fake, sub: bearer("not-a-jwt"), "token_malformed"),
    "garbage_segments": (lambda fake, sub: bearer("eyJhbGciOi.e30.c2ln"), "token_malformed"),
    "malformed_cookie": (lambda fake, sub: {"Cookie": "__session=abc.def"}, "token_malformed"),
    "expired": (lambda fake, sub: bearer(fake.mint_token(sub, exp_in=-60)), "token_expired"),
    "not_yet_valid": (lambda fake, sub: bearer(fake.mint_token(sub, nbf_offset=60)), "token_not_yet_valid"),
    "wrong_azp": (lambda fake, sub: bearer(fake.mint_token(sub, azp=FOREIGN_ORIGIN)), "token_wrong_azp"),
    "no_azp": (lambda fake, sub: bearer(fake.mint_token(sub, azp=None)), "token_wrong_azp"),
    "hs256_forgery": (lambda fake, sub: bearer(fake.mint_token(sub, alg="HS256")), "token_bad_algorithm"),
    "alg_none": (lambda fake, sub: bearer(fake.mint_token(sub, alg="none")), "token_bad_algorithm"),
    "unknown_kid": (
        lambda fake, sub: bearer(fake.mint_token(sub, kid="ins_never_published", key=foreign_key())),
        "token_unknown_key",
    ),
    "published_kid_foreign_key": (
        lambda fake, sub: bearer(fake.mint_token(sub, key=foreign_key())),
        "token_invalid_signature",
    ),
    "no_sub": (
        lambda fake, sub: bearer(fake.mint_token(sub, extra_claims={"sub": None})),
        "token_invalid_claims",
    ),
    # "." and ".." survive URL quoting as dot-segments: once a ValueError and a 500.
    "sub_dot": (lambda fake, sub: bearer(fake.mint_token(".")), "token_invalid_claims"),
    "sub_dotdot": (lambda fake, sub: bearer(fake.mint_token("..")), "token_invalid_claims"),
    "sub_not_a_user_id": (lambda fake, sub: bearer(fake.mint_token("org_" + sub)), "token_invalid_claims"),
    "sub_overlong": (lambda fake, sub: bearer(fake.mint_token(sub + "x" * 3000)), "token_invalid_claims"),
}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
def test_untrusted_token_gets_401_and_writes_nothing(
    http: httpx.Client, db: Prisma, clerk: FakeClerk, case: str
) -> None:
    """Each way a token can be untrustworthy has its own stable code; the user is never fetched or stored.

    The user exists in Clerk, so a token accepted by mistake would show up as a row.
    """
    make_request, code = BAD_TOKENS[case]
    clerk_id = new_clerk_id()
    add_user(clerk, clerk_id)
    user_fetches_before = sum(r.path.startswith("/v1/users/") for r in clerk.requests)

    response = post_after_login(http, headers=make_request(clerk, clerk_id))

    assert_json_error(response, 401, code)
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert row_count(db) == 0
    assert sum(r.path.startswith("/v1/users/") for r in clerk.requests) == user_fetches_before


# --- Clerk says no, or cannot answer ---------------------------------------------------------------


def test_user_unknown_to_clerk_gets_404(http: httpx.Client, db: Prisma, clerk: FakeClerk) -> None:
    """A valid token for a user Clerk answers 404 for: 404, nothing written."""
    response = post_after_login(http, clerk.mint_token(new_clerk_id()))
    assert_json_error(response, 404, "user_not_found")
    assert row_count(db) == 0


ClerkFault = Callable[[FakeClerk], None]

CLERK_FAULTS: dict[str, tuple[ClerkFault, str | None]] = {
    "500": (lambda fake: fake.fail_with(500, on="users"), None),
    "503": (lambda fake: fake.fail_with(503, on="users"), None),
    "503_retry_after": (lambda fake: fake.fail_with(503, retry_after=7, on="users"), "7"),
    "429": (lambda fake: fake.fail_with(429, on="users"), None),
    "429_retry_after": (lambda fake: fake.fail_with(429, retry_after=3, on="users"), "3"),
    "429_retry_after_fraction": (lambda fake: fake.fail_with(429, retry_after=2.6, on="users"), "3"),
    "slow": (lambda fake: fake.delay(2.0, on="users"), None),
    "garbled": (lambda fake: fake.garbled(on="users"), None),
    "not_an_object": (lambda fake: fake.respond_with(["a", "list"], on="users"), None),
}


@pytest.mark.parametrize("case", list(CLERK_FAULTS))
def test_clerk_unavailable_gets_503_and_writes_nothing(
    http: httpx.Client, db: Prisma, clerk: FakeClerk, case: str
) -> None:
    """Clerk failing, throttling, slow past the 1 s timeout or garbled: 503 JSON, Retry-After passed on."""
    inject, retry_after = CLERK_FAULTS[case]
    clerk_id = new_clerk_id()
    add_user(clerk, clerk_id)
    token = clerk.mint_token(clerk_id)
    inject(clerk)

    response = post_after_login(http, token)

    assert_json_error(response, 503, "clerk_unavailable")
    assert response.headers.get("Retry-After") == retry_after
    assert row_count(db) == 0


def test_clerk_answering_with_another_user_gets_503(http: httpx.Client, db: Prisma, clerk: FakeClerk) -> None:
    """A user object for someone else is never stored under the caller's session."""
    clerk_id = new_clerk_id()
    add_user(clerk, clerk_id)
    clerk.respond_with(build_clerk_user(new_clerk_id(), updated_at=BASE_VERSION), on="users")

    response = post_after_login(http, clerk.mint_token(clerk_id))

    assert_json_error(response, 503, "clerk_bad_response")
    assert row_count(db) == 0


@pytest.mark.parametrize(
    "overrides",
    [{"first_name": "A" * 3000}, {"image_url": "https://img.clerk.com/" + "x" * 3000}],
    ids=["first_name", "image_url"],
)
def test_overlong_user_from_clerk_is_refused_with_a_logged_reason(
    http: httpx.Client,
    db: Prisma,
    clerk: FakeClerk,
    caplog: pytest.LogCaptureFixture,
    overrides: dict[str, str],
) -> None:
    """Longer than Clerk sends is not Clerk's data: never stored (it may exceed an index row); logged."""
    clerk_id = new_clerk_id()
    add_user(clerk, clerk_id, **overrides)
    app_logger = logging.getLogger("app")
    app_logger.addHandler(caplog.handler)
    try:
        response = post_after_login(http, clerk.mint_token(clerk_id))
    finally:
        app_logger.removeHandler(caplog.handler)

    assert_json_error(response, 503, "clerk_bad_response")
    assert row_count(db) == 0
    reasons = [r.getMessage() for r in caplog.records if "characters long" in r.getMessage()]
    assert reasons and all(len(reason) < 500 for reason in reasons), reasons


def test_clerk_refusing_the_secret_key_gets_502(http: httpx.Client, db: Prisma, clerk: FakeClerk) -> None:
    """Clerk answering 401/403 is the server's misconfiguration: 502, not the caller's 401."""
    clerk_id = new_clerk_id()
    add_user(clerk, clerk_id)
    clerk.fail_with(401, on="users")

    response = post_after_login(http, clerk.mint_token(clerk_id))

    assert_json_error(response, 502, "clerk_error")
    assert row_count(db) == 0


def test_clerk_unreachable_for_the_user_fetch(
    own_clerk: FakeClerk, db: Prisma, app_database_url: str
) -> None:
    """Clerk going away after the JWKS was fetched: the user fetch fails, 503, nothing written."""
    first, second = new_clerk_id(), new_clerk_id()
    add_user(own_clerk, first)
    add_user(own_clerk, second)
    token = own_clerk.mint_token(second)

    with serve(settings_for(own_clerk, app_database_url)) as client:
        assert post_after_login(client, own_clerk.mint_token(first)).status_code == 200
        own_clerk.stop()
        response = post_after_login(client, token)

    assert_json_error(response, 503, "clerk_unavailable")
    assert read(db, second) is None
    assert row_count(db) == 1


def test_trickling_clerk_is_cut_off_at_clerk_timeout_in_total(
    http: httpx.Client, db: Prisma, clerk: FakeClerk
) -> None:
    """Clerk sending one byte every 0.3 s never trips a per-read timeout; the login still ends at 1 s.

    The user object is about 2 KB, so without a total deadline this login would take ten minutes.
    """
    clerk_id = new_clerk_id()
    add_user(clerk, clerk_id)
    token = clerk.mint_token(clerk_id)
    clerk.trickle(0.3, on="users")

    started = time.monotonic()
    response = post_after_login(http, token)
    took = time.monotonic() - started

    assert_json_error(response, 503, "clerk_unavailable")
    assert took < 1.0 + 2.0, f"the login took {took:.1f} s with CLERK_TIMEOUT=1"
    assert row_count(db) == 0


def test_clerk_timeout_bounds_the_jwks_and_user_fetches_together(
    own_clerk: FakeClerk, db: Prisma, app_database_url: str
) -> None:
    """0.7 s for the JWKS and 0.7 s for the user are each under CLERK_TIMEOUT=1, but not together."""
    clerk_id = new_clerk_id()
    add_user(own_clerk, clerk_id)
    own_clerk.delay(0.7, on="jwks")
    own_clerk.delay(0.7, on="users")

    with serve(settings_for(own_clerk, app_database_url)) as client:
        started = time.monotonic()
        response = post_after_login(client, own_clerk.mint_token(clerk_id))
        took = time.monotonic() - started

    assert_json_error(response, 503, "clerk_unavailable")
    assert took < 1.0 + 2.0
    assert row_count(db) == 0


def test_token_from_another_issuer_gets_401(own_clerk: FakeClerk, db: Prisma, app_database_url: str) -> None:
    clerk_id = new_clerk_id()
    add_user(own_clerk, clerk_id)
    settings = settings_for(own_clerk, app_database_url, clerk_issuer=ISSUER)

    with serve(settings) as client:
        foreign = own_clerk.mint_token(clerk_id, extra_claims={"iss": "https://clerk.other-app.test"})
        assert_json_error(post_after_login(client, foreign), 401, "token_wrong_issuer")
        assert row_count(db) == 0
        assert post_after_login(client, own_clerk.mint_token(clerk_id)).status_code == 200


def test_backend_api_calls_name_the_pinned_version(http: httpx.Client, db: Prisma, clerk: FakeClerk) -> None:
    clerk_id = new_clerk_id()
    add_user(clerk, clerk_id)
    assert post_after_login(http, clerk.mint_token(clerk_id)).status_code == 200
    versions = {r.headers.get("Clerk-API-Version") for r in clerk.requests}
    assert versions == {"2025-11-10"}


JWKS_FAULTS: dict[str, ClerkFault] = {
    "unreachable": lambda fake: fake.stop(),
    "500": lambda fake: fake.fail_with(500, on="jwks"),
    "garbled": lambda fake: fake.garbled(on="jwks"),
}


@pytest.mark.parametrize("case", list(JWKS_FAULTS))
def test_jwks_unavailable_gets_503_not_401(
    own_clerk: FakeClerk, db: Prisma, app_database_url: str, case: str
) -> None:
    """A JWKS that cannot be fetched says nothing about the token: 503, and nothing written."""
    clerk_id = new_clerk_id()
    add_user(own_clerk, clerk_id)
    token = own_clerk.mint_token(clerk_id)
    JWKS_FAULTS[case](own_clerk)

    with serve(settings_for(own_clerk, app_database_url)) as client:
        response = post_after_login(client, token)

    assert_json_error(response, 503, "clerk_unavailable")
    assert row_count(db) == 0


def test_database_unavailable_gets_503(own_clerk: FakeClerk, db: Prisma, postgres_server: str) -> None:
    """A database that cannot be reached is "try again later": 503 JSON, not a 500.

    The app's database URL names a database that does not exist on the real server.
    """
    clerk_id = new_clerk_id()
    add_user(own_clerk, clerk_id)
    missing = localdb.database_url(postgres_server, f"clerk_sync_missing_{uuid4().hex[:10]}")

    with serve(settings_for(own_clerk, missing)) as client:
        response = post_after_login(client, own_clerk.mint_token(clerk_id))

    assert_json_error(response, 503, "database_unavailable")
    assert read(db, clerk_id) is None


# --- CLERK_JWT_KEY ---------------------------------------------------------------------------------

PEM_SHAPES: dict[str, Callable[[str], str]] = {
    "as_shown": lambda pem: pem,
    "one_line": lambda pem: pem.replace("\n", ""),
    "escaped_newlines": lambda pem: pem.strip().replace("\n", "\\n"),
    "spaces": lambda pem: pem.strip().replace("\n", " "),
}


@pytest.mark.parametrize("shape", list(PEM_SHAPES))
def test_static_jwt_key_verifies_without_jwks(
    own_clerk: FakeClerk, db: Prisma, app_database_url: str, shape: str
) -> None:
    """With CLERK_JWT_KEY, however pasted, tokens are verified without any JWKS request.

    Users still come from Clerk's API, and a token signed by another key is still refused.
    """
    clerk_id = new_clerk_id()
    add_user(own_clerk, clerk_id, email="static@example.com")
    pem = PEM_SHAPES[shape](own_clerk.public_pem())
    settings = settings_for(own_clerk, app_database_url, clerk_jwt_key=pem)

    with serve(settings) as client:
        forged = post_after_login(client, own_clerk.mint_token(clerk_id, key=foreign_key()))
        assert_json_error(forged, 401, "token_invalid_signature")
        assert row_count(db) == 0

        response = post_after_login(client, own_clerk.mint_token(clerk_id, kid="ins_any_kid"))

    assert response.status_code == 200, response.text
    assert response.json()["email"] == "static@example.com"
    assert_body_is_row(response.json(), read(db, clerk_id))
    assert own_clerk.jwks_requests == 0
    assert [r.path for r in own_clerk.requests] == [f"/v1/users/{clerk_id}"]


# --- CORS and methods ------------------------------------------------------------------------------


def preflight(client: httpx.Client, origin: str) -> httpx.Response:
    return client.options(
        "/after-login",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )


def test_cors_preflight_from_the_frontend(http: httpx.Client, db: Prisma) -> None:
    """The frontend's origin may POST with an Authorization header (and cookies)."""
    response = preflight(http, FRONTEND_ORIGIN)

    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == FRONTEND_ORIGIN
    allowed_headers = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert "authorization" in allowed_headers
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert response.headers.get("Access-Control-Allow-Credentials") == "true"
    assert row_count(db) == 0


def test_cors_preflight_from_a_foreign_origin(http: httpx.Client, db: Prisma) -> None:
    """Any other origin gets no Access-Control-Allow-Origin, so browsers block it."""
    response = preflight(http, FOREIGN_ORIGIN)
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_cors_headers_on_answers(http: httpx.Client, db: Prisma, clerk: FakeClerk) -> None:
    """Real answers, errors included, carry the CORS headers so the frontend can read them."""
    clerk_id = new_clerk_id()
    add_user(clerk, clerk_id)
    origin = {"Origin": FRONTEND_ORIGIN}

    ok = post_after_login(http, clerk.mint_token(clerk_id), headers=origin)
    assert ok.status_code == 200
    assert ok.headers["Access-Control-Allow-Origin"] == FRONTEND_ORIGIN

    refused = post_after_login(http, headers=origin)
    assert_json_error(refused, 401, "token_missing")
    assert refused.headers["Access-Control-Allow-Origin"] == FRONTEND_ORIGIN

    foreign = post_after_login(http, clerk.mint_token(clerk_id), headers={"Origin": FOREIGN_ORIGIN})
    assert "Access-Control-Allow-Origin" not in foreign.headers


def test_get_is_405_json(http: httpx.Client, db: Prisma) -> None:
    """Only POST is served; other methods get a JSON 405 naming POST in Allow."""
    response = http.get("/after-login")
    assert_json_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


# --- races -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("newest_from", ["after_login", "direct_sync"])
def test_after_login_races_direct_syncs(
    http: httpx.Client, db: Prisma, clerk: FakeClerk, newest_from: str
) -> None:
    """After-login calls and direct syncs (webhooks, backfill) for one brand-new user, all at once.

    Exactly one writer creates the row, every call succeeds, and the newest
    version, wherever it came from, is what stays.
    """
    clerk_id = new_clerk_id()
    direct_versions = [1, 2, 3] if newest_from == "after_login" else [1, 2, 5]
    clerk_version = 4

    def raw(n: int) -> dict[str, Any]:
        return build_clerk_user(
            clerk_id, email=f"v{n}@example.com", first_name=f"First{n}", updated_at=BASE_VERSION + n
        )

    clerk.add_user(
        clerk_id,
        email=f"v{clerk_version}@example.com",
        first_name=f"First{clerk_version}",
        updated_at=BASE_VERSION + clerk_version,
    )
    token = clerk.mint_token(clerk_id)

    def login() -> str:
        response = post_after_login(http, token)
        assert response.status_code == 200, response.text
        assert response.json()["clerkId"] == clerk_id
        return response.headers[OUTCOME_HEADER]

    def direct(n: int) -> str:
        return sync_user_with_database(parse_clerk_user(raw(n)), db).outcome.value

    calls: list[Callable[[], str]] = [login] * 4
    calls += [functools.partial(direct, n) for n in direct_versions * 2]
    outcomes = Counter(run_at_once(calls))

    assert outcomes[SyncOutcome.CREATED.value] == 1, outcomes
    assert set(outcomes) <= {"created", "updated", "unchanged"}
    rows = db.user.find_many(where={"clerkId": clerk_id})
    assert len(rows) == 1
    newest = max([*direct_versions, clerk_version])
    assert (rows[0].email, rows[0].firstName) == (f"v{newest}@example.com", f"First{newest}")
    assert rows[0].clerkUpdatedAt == parse_clerk_user(raw(newest)).updated_at_datetime


# Header values an HTTP client can send: visible latin-1 text, as werkzeug decodes it.
_header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f")
)
_tokenish = st.one_of(
    _header_text,
    st.lists(
        st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=", max_size=60),
        min_size=1,
        max_size=5,
    ).map(".".join),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    authorization=st.one_of(st.none(), _tokenish, _tokenish.map("Bearer ".__add__)),
    cookie=st.one_of(st.none(), _tokenish),
)
def test_arbitrary_credentials_are_refused_with_401_never_500(
    http: httpx.Client, db: Prisma, authorization: str | None, cookie: str | None
) -> None:
    """Whatever arrives as a token, the answer is a JSON 401 and nothing is written."""
    # Raw latin-1 bytes: what a client can put on the wire, beyond what httpx would encode itself.
    headers: dict[str, bytes] = {}
    if authorization and authorization.strip():
        headers["Authorization"] = authorization.strip().encode("latin-1")
    if cookie and cookie.strip() and ";" not in cookie:
        headers["Cookie"] = b"__session=" + cookie.strip().encode("latin-1")
    response = http.post("/after-login", headers=headers)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"].startswith("token_")
    assert row_count(db) == 0


def test_production_server_cuts_a_trickling_clerk_at_clerk_timeout(
    own_clerk: FakeClerk, db: Prisma, app_database_url: str, tmp_path: Path
) -> None:
    """The same deadline under gunicorn's gevent workers (greenlets, patched sockets), 3 logins at once."""
    ids = [new_clerk_id() for _ in range(4)]
    for clerk_id in ids:
        add_user(own_clerk, clerk_id)
    env = {
        **os.environ,
        "DATABASE_URL": app_database_url,
        "CLERK_API_URL": own_clerk.url,
        "CLERK_SECRET_KEY": own_clerk.secret_key,
        "CLERK_AUTHORIZED_PARTIES": FRONTEND_ORIGIN,
        "CLERK_TIMEOUT": "2",
        "WEB_CONCURRENCY": "1",
    }
    with gunicorn_server(env, tmp_path / "server.log", startup_timeout=90) as server:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            assert post_after_login(client, own_clerk.mint_token(ids[0])).status_code == 200  # JWKS cached
        own_clerk.trickle(0.3, on="users")

        def login(clerk_id: str) -> tuple[int, float]:
            with httpx.Client(base_url=server.url, timeout=60) as client:
                started = time.monotonic()
                response = post_after_login(client, own_clerk.mint_token(clerk_id))
                return response.status_code, time.monotonic() - started

        results = run_at_once([functools.partial(login, clerk_id) for clerk_id in ids[1:]])

    assert [status for status, _ in results] == [503] * 3
    assert max(took for _, took in results) < 2 + 3, results
    assert row_count(db) == 1
