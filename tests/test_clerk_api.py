from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import httpx
import pytest

from app.clerk.api import (
    CLERK_API_VERSION,
    ClerkAPI,
    ClerkAPIError,
    ClerkUnavailable,
    ClerkUserNotFound,
    parse_retry_after,
)
from app.clerk.deadline import deadline, remaining
from app.clerk.users import parse_clerk_user
from tests.fakeclerk import FakeClerk


@pytest.fixture
def fake() -> Iterator[FakeClerk]:
    with FakeClerk() as fake:
        yield fake


@pytest.fixture
def api(fake: FakeClerk) -> Iterator[ClerkAPI]:
    with ClerkAPI(fake.url, fake.secret_key, timeout=1.0) as api:
        yield api


def test_get_user_returns_the_raw_user_object(fake: FakeClerk, api: ClerkAPI) -> None:
    stored = fake.add_user("user_1", email="ada@example.com", other_emails=["old@example.com"])

    data = api.get_user("user_1")

    assert data == stored
    assert parse_clerk_user(data).email == "ada@example.com"


def test_requests_carry_the_secret_and_user_agent(fake: FakeClerk, api: ClerkAPI) -> None:
    fake.add_user("user_1")
    api.get_user("user_1")

    [request] = fake.requests
    assert request.authorized
    assert request.headers["User-Agent"] == "clerk-sync"
    assert (request.method, request.path) == ("GET", "/v1/users/user_1")


def test_wrong_secret_is_an_api_error_not_unavailable(fake: FakeClerk) -> None:
    fake.add_user("user_1")
    with ClerkAPI(fake.url, "sk_test_wrong", timeout=1.0) as api, pytest.raises(ClerkAPIError) as caught:
        api.get_user("user_1")

    assert type(caught.value) is ClerkAPIError
    assert caught.value.status_code == 401
    assert "sk_test_wrong" not in str(caught.value)


def test_unknown_user_is_not_found(api: ClerkAPI) -> None:
    with pytest.raises(ClerkUserNotFound) as caught:
        api.get_user("user_missing")
    assert caught.value.user_id == "user_missing"


def test_user_id_is_quoted_into_one_path_segment(fake: FakeClerk, api: ClerkAPI) -> None:
    fake.add_user("user_1")

    with pytest.raises(ClerkUserNotFound):
        api.get_user("x/../user_1")

    assert fake.requests[-1].path == "/v1/users/x%2F..%2Fuser_1"


@pytest.mark.parametrize("user_id", ["", ".", ".."])
def test_user_ids_that_would_escape_the_path_are_refused(
    fake: FakeClerk, api: ClerkAPI, user_id: str
) -> None:
    with pytest.raises(ValueError, match="not a Clerk user id"):
        api.get_user(user_id)
    assert fake.requests == []


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_unavailable(fake: FakeClerk, api: ClerkAPI, status: int) -> None:
    fake.add_user("user_1")
    fake.fail_with(status, retry_after=7, times=1)

    with pytest.raises(ClerkUnavailable) as caught:
        api.get_user("user_1")

    assert caught.value.status_code == status
    assert caught.value.retry_after == 7
    assert api.get_user("user_1")["id"] == "user_1"  # the fault was one-off


def test_rate_limit_is_unavailable_with_retry_after(fake: FakeClerk, api: ClerkAPI) -> None:
    fake.fail_with(429, retry_after="2.5")

    with pytest.raises(ClerkUnavailable) as caught:
        api.list_users()

    assert caught.value.status_code == 429
    assert caught.value.retry_after == 2.5


def test_rate_limit_with_an_http_date_retry_after(fake: FakeClerk, api: ClerkAPI) -> None:
    fake.fail_with(429, retry_after=formatdate(time.time() + 60, usegmt=True))

    with pytest.raises(ClerkUnavailable) as caught:
        api.list_users()

    assert caught.value.retry_after is not None
    assert 55 <= caught.value.retry_after <= 60


def test_unavailable_without_retry_after(fake: FakeClerk, api: ClerkAPI) -> None:
    fake.fail_with(503)
    with pytest.raises(ClerkUnavailable) as caught:
        api.get_user("user_1")
    assert caught.value.retry_after is None


def test_slow_answer_past_the_timeout_is_unavailable(fake: FakeClerk, api: ClerkAPI) -> None:
    fake.add_user("user_1")
    fake.delay(2, times=1)

    started = time.monotonic()
    with pytest.raises(ClerkUnavailable, match="in time"):
        api.get_user("user_1")

    assert time.monotonic() - started < 1.5
    assert api.get_user("user_1")["id"] == "user_1"


def test_unreachable_clerk_is_unavailable(fake: FakeClerk, api: ClerkAPI) -> None:
    fake.stop()
    with pytest.raises(ClerkUnavailable, match="could not reach"):
        api.get_user("user_1")


@pytest.mark.parametrize("call", [lambda api: api.get_user("user_1"), lambda api: api.list_users()])
def test_garbled_body_is_unavailable(fake: FakeClerk, api: ClerkAPI, call) -> None:
    fake.add_user("user_1")
    fake.garbled(on="users")

    with pytest.raises(ClerkUnavailable, match="not JSON"):
        call(api)


def test_faults_can_target_one_path_family(fake: FakeClerk, api: ClerkAPI) -> None:
    fake.add_user("user_1")
    fake.fail_with(503, on="jwks")

    assert api.get_user("user_1")["id"] == "user_1"
    with pytest.raises(ClerkUnavailable):
        api.get_jwks()

    fake.heal()
    assert api.get_jwks()["keys"]


def test_list_users_pages_newest_first(fake: FakeClerk, api: ClerkAPI) -> None:
    ids = [fake.add_user(f"user_{n}")["id"] for n in range(7)]
    newest_first = list(reversed(ids))

    pages = [api.list_users(limit=3, offset=offset) for offset in (0, 3, 6, 9)]

    assert [[user["id"] for user in page] for page in pages] == [
        newest_first[0:3],
        newest_first[3:6],
        newest_first[6:7],
        [],
    ]
    assert fake.requests[0].query == {"limit": ["3"], "offset": ["0"]}


def test_list_users_defaults_to_ten(fake: FakeClerk, api: ClerkAPI) -> None:
    for n in range(12):
        fake.add_user(f"user_{n}")
    assert len(api.list_users()) == 10


def test_list_users_accepts_a_data_envelope(fake: FakeClerk, api: ClerkAPI) -> None:
    user = fake.add_user("user_1")
    fake.respond_with({"data": [user], "total_count": 1}, on="users")

    assert api.list_users() == [user]


@pytest.mark.parametrize("body", [{"id": "user_1"}, ["user_1"], {"data": "user_1"}, 42])
def test_list_users_rejects_unexpected_shapes(fake: FakeClerk, api: ClerkAPI, body: object) -> None:
    fake.respond_with(body, on="users")
    with pytest.raises(ClerkUnavailable, match="unexpected shape"):
        api.list_users()


@pytest.mark.parametrize("body", [["user_1"], "user_1", None])
def test_get_user_rejects_a_body_that_is_not_an_object(fake: FakeClerk, api: ClerkAPI, body: object) -> None:
    fake.respond_with(body, on="users")
    with pytest.raises(ClerkUnavailable, match="not a JSON object"):
        api.get_user("user_1")


def test_jwks_without_keys_is_unavailable(fake: FakeClerk, api: ClerkAPI) -> None:
    fake.respond_with({"keys": "none"}, on="jwks")
    with pytest.raises(ClerkUnavailable, match="'keys'"):
        api.get_jwks()


@pytest.mark.parametrize(("limit", "offset"), [(0, 0), (501, 0), (10, -1)])
def test_list_users_validates_paging_before_calling_clerk(
    fake: FakeClerk, api: ClerkAPI, limit: int, offset: int
) -> None:
    with pytest.raises(ValueError):
        api.list_users(limit=limit, offset=offset)
    assert fake.requests == []


def test_get_jwks(fake: FakeClerk, api: ClerkAPI) -> None:
    assert api.get_jwks()["keys"][0]["kid"] == fake.kid
    assert fake.jwks_requests == 1


def test_secret_never_appears_in_repr_or_errors(fake: FakeClerk) -> None:
    fake.fail_with(503)
    with ClerkAPI(fake.url, "sk_live_very_secret", timeout=1.0) as api:
        assert "sk_live_very_secret" not in repr(api)
        with pytest.raises(ClerkUnavailable) as caught:
            api.get_user("user_1")
    assert "sk_live_very_secret" not in str(caught.value)


def test_a_shared_http_client_is_left_open(fake: FakeClerk) -> None:
    fake.add_user("user_1")
    with httpx.Client() as http:
        with ClerkAPI(fake.url, fake.secret_key, http=http) as api:
            api.get_user("user_1")
        assert not http.is_closed


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("0", 0.0),
        ("120", 120.0),
        (" 1.5 ", 1.5),
        ("-3", None),
        ("inf", None),
        ("nan", None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past: retry now
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header) == expected


def test_parse_retry_after_http_date_is_relative_to_now() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=1445412480.0) == 30.0


def test_count_users_reads_clerks_total(fake: FakeClerk, api: ClerkAPI) -> None:
    before = api.count_users()
    fake.add_user(f"user_count_{before}")
    assert api.count_users() == before + 1


def test_count_users_of_an_unexpected_shape_is_unavailable(fake: FakeClerk, api: ClerkAPI) -> None:
    fake.respond_with({"total_count": "many"}, on="count")
    with pytest.raises(ClerkUnavailable):
        api.count_users()


# -- the pinned API version ------------------------------------------------------


@pytest.fixture
def patient_api(fake: FakeClerk) -> Iterator[ClerkAPI]:
    """For tests about shapes, not time: a timeout a loaded machine never reaches."""
    with ClerkAPI(fake.url, fake.secret_key, timeout=10) as api:
        yield api


def test_every_call_names_the_pinned_api_version(fake: FakeClerk, patient_api: ClerkAPI) -> None:
    fake.add_user("user_1")
    patient_api.get_user("user_1")
    patient_api.list_users()
    patient_api.count_users()
    patient_api.get_jwks()

    assert CLERK_API_VERSION == "2025-11-10"
    assert [r.headers.get("Clerk-API-Version") for r in fake.requests] == [CLERK_API_VERSION] * 4


def test_fake_clerk_refuses_a_version_it_does_not_speak(fake: FakeClerk) -> None:
    """So the header test above would notice the fake and the app drifting apart."""
    fake.add_user("user_1")
    response = httpx.get(
        f"{fake.url}/v1/users/user_1",
        headers={"Authorization": f"Bearer {fake.secret_key}", "Clerk-API-Version": "2021-02-05"},
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["code"] == "api_version_invalid"


def test_fake_users_have_the_pinned_versions_shape(fake: FakeClerk, patient_api: ClerkAPI) -> None:
    """The fields 2025-11-10 user objects carry, as the parser meets them."""
    user = patient_api.get_user(fake.add_user("user_1")["id"])
    for field in ("id", "object", "primary_email_address_id", "email_addresses", "updated_at", "image_url"):
        assert field in user
    assert user["object"] == "user" and isinstance(user["updated_at"], int)
    address = user["email_addresses"][0]
    assert {"id", "object", "email_address", "verification", "created_at", "updated_at"} <= set(address)


# -- a total deadline --------------------------------------------------------------


def test_trickling_answer_is_cut_off_at_the_timeout_in_total(fake: FakeClerk) -> None:
    """One byte every 0.25 s never trips the 1 s per-read timeout; the call still ends at 1 s."""
    fake.add_user("user_1")
    fake.trickle(0.25, on="users")
    with ClerkAPI(fake.url, fake.secret_key, timeout=1.0) as api:
        started = time.monotonic()
        with pytest.raises(ClerkUnavailable, match="in time"):
            api.get_user("user_1")
        took = time.monotonic() - started
    assert took < 1.0 + 2.0, f"the call took {took:.1f} s"


def test_a_shared_deadline_bounds_several_calls(fake: FakeClerk, patient_api: ClerkAPI) -> None:
    fake.add_user("user_1")
    fake.delay(1.2, on="users")
    with deadline(2.0):
        patient_api.get_user("user_1")  # 1.2 s of the 2
        with pytest.raises(ClerkUnavailable):
            patient_api.get_user("user_1")  # would need 1.2 s more
    assert remaining() is None  # the deadline ends with its block


def test_trickled_answer_within_the_timeout_succeeds(fake: FakeClerk) -> None:
    """Slow bytes are fine while the whole answer arrives in time."""
    fake.add_user("user_1")
    fake.trickle(0.001, on="count")
    with ClerkAPI(fake.url, fake.secret_key, timeout=5) as api:
        assert api.count_users() == 1


# -- through an HTTP proxy from the environment -----------------------------------


class _ForwardProxy(BaseHTTPRequestHandler):
    """A plain HTTP forward proxy: absolute-form requests, recorded, then forwarded."""

    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen.append(self.path)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "proxy-connection")}
        upstream = httpx.get(self.path, headers=headers, trust_env=False, timeout=10)
        self.send_response(upstream.status_code)
        self.send_header("Content-Type", upstream.headers.get("content-type", "application/json"))
        self.send_header("Content-Length", str(len(upstream.content)))
        self.end_headers()
        self.wfile.write(upstream.content)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def forward_proxy() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ForwardProxy)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    _ForwardProxy.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _proxy_env(monkeypatch: pytest.MonkeyPatch, proxy: str, no_proxy: str) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.setenv("NO_PROXY", no_proxy)
    monkeypatch.setenv("no_proxy", no_proxy)


def test_environment_proxy_is_used_as_httpx_would(
    fake: FakeClerk, forward_proxy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deadline transport replaces httpx's default one; HTTP_PROXY must keep working."""
    _proxy_env(monkeypatch, forward_proxy, no_proxy="")
    fake.add_user("user_1")
    with ClerkAPI(fake.url, fake.secret_key, timeout=10) as api:
        assert api.get_user("user_1")["id"] == "user_1"
    assert _ForwardProxy.seen == [f"{fake.url}/v1/users/user_1"]


def test_no_proxy_hosts_go_direct(
    fake: FakeClerk, forward_proxy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _proxy_env(monkeypatch, forward_proxy, no_proxy="127.0.0.1")
    fake.add_user("user_1")
    with ClerkAPI(fake.url, fake.secret_key, timeout=10) as api:
        assert api.get_user("user_1")["id"] == "user_1"
    assert _ForwardProxy.seen == []
    assert len(fake.requests) == 1


def test_deadline_holds_for_direct_no_proxy_hosts(
    fake: FakeClerk, forward_proxy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NO_PROXY hosts get the deadline transport too, not httpx's default one."""
    _proxy_env(monkeypatch, forward_proxy, no_proxy="127.0.0.1")
    fake.add_user("user_1")
    fake.trickle(0.25, on="users")
    with ClerkAPI(fake.url, fake.secret_key, timeout=1.0) as api:
        started = time.monotonic()
        with pytest.raises(ClerkUnavailable):
            api.get_user("user_1")
    assert time.monotonic() - started < 1.0 + 2.0
