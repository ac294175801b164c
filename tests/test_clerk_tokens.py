from __future__ import annotations

import base64
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from app.clerk.api import ClerkAPIError, ClerkUnavailable
from app.clerk.deadline import deadline
from app.clerk.tokens import (
    InvalidSessionToken,
    SessionClaims,
    SessionTokenVerifier,
    extract_session_token,
    normalise_pem_public_key,
)
from tests.fakeclerk import DEFAULT_AZP, ISSUER, FakeClerk


class FakeMonotonicClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def fake() -> Iterator[FakeClerk]:
    with FakeClerk() as fake:
        yield fake


@pytest.fixture
def clock() -> FakeMonotonicClock:
    return FakeMonotonicClock()


@pytest.fixture
def make_verifier(
    fake: FakeClerk, clock: FakeMonotonicClock
) -> Iterator[Callable[..., SessionTokenVerifier]]:
    """A JWKS-backed verifier against `fake`; keyword arguments override the defaults."""
    verifiers: list[SessionTokenVerifier] = []

    def make(**overrides: Any) -> SessionTokenVerifier:
        options: dict[str, Any] = {
            "jwt_key": None,
            "api_url": fake.url,
            "secret_key": fake.secret_key,
            "authorized_parties": [DEFAULT_AZP],
            "timeout": 1.0,
            "monotonic": clock,
            **overrides,
        }
        verifier = SessionTokenVerifier(**options)
        verifiers.append(verifier)
        return verifier

    yield make
    for verifier in verifiers:
        verifier.close()


@pytest.fixture
def verifier(make_verifier: Callable[..., SessionTokenVerifier]) -> SessionTokenVerifier:
    return make_verifier()


def assert_rejected(verifier: SessionTokenVerifier, token: str, code: str) -> InvalidSessionToken:
    with pytest.raises(InvalidSessionToken) as caught:
        verifier.verify(token)
    assert caught.value.code == code
    return caught.value


# -- valid tokens -------------------------------------------------------------


def test_valid_token(fake: FakeClerk, verifier: SessionTokenVerifier) -> None:
    token = fake.mint_token("user_1", sid="sess_1")

    claims = verifier.verify(token)

    assert claims == SessionClaims(
        user_id="user_1", session_id="sess_1", authorized_party=DEFAULT_AZP, claims=claims.claims
    )
    assert claims.claims["sub"] == "user_1"
    assert fake.jwks_requests == 1
    assert fake.requests[0].authorized


def test_keys_are_cached_by_kid(fake: FakeClerk, verifier: SessionTokenVerifier) -> None:
    for n in range(5):
        verifier.verify(fake.mint_token(f"user_{n}"))
    assert fake.jwks_requests == 1


def test_claims_are_read_only(fake: FakeClerk, verifier: SessionTokenVerifier) -> None:
    claims = verifier.verify(fake.mint_token("user_1"))
    with pytest.raises(TypeError):
        claims.claims["sub"] = "user_2"  # type: ignore[index]


def test_any_azp_is_accepted_when_no_parties_are_configured(
    fake: FakeClerk, make_verifier: Callable[..., SessionTokenVerifier]
) -> None:
    verifier = make_verifier(authorized_parties=[])
    assert verifier.verify(fake.mint_token("user_1", azp="https://elsewhere.test")).user_id == "user_1"
    assert verifier.verify(fake.mint_token("user_1", azp=None)).authorized_party is None


def test_configured_party_with_trailing_slash_matches(
    fake: FakeClerk, make_verifier: Callable[..., SessionTokenVerifier]
) -> None:
    verifier = make_verifier(authorized_parties=[f"{DEFAULT_AZP}/"])
    assert verifier.verify(fake.mint_token("user_1")).authorized_party == DEFAULT_AZP


def test_session_id_is_optional(fake: FakeClerk, verifier: SessionTokenVerifier) -> None:
    assert verifier.verify(fake.mint_token("user_1", sid=None)).session_id is None


# -- time ---------------------------------------------------------------------


def test_expired_token(fake: FakeClerk, verifier: SessionTokenVerifier) -> None:
    assert_rejected(verifier, fake.mint_token("user_1", exp_in=-30), "token_expired")


def test_token_not_yet_valid(fake: FakeClerk, verifier: SessionTokenVerifier) -> None:
    assert_rejected(verifier, fake.mint_token("user_1", nbf_offset=30), "token_not_yet_valid")


def test_clock_skew_within_leeway_is_accepted(fake: FakeClerk, verifier: SessionTokenVerifier) -> None:
    assert verifier.verify(fake.mint_token("user_1", exp_in=-2)).user_id == "user_1"
    assert verifier.verify(fake.mint_token("user_1", nbf_offset=2)).user_id == "user_1"


def test_leeway_is_configurable(fake: FakeClerk, make_verifier: Callable[..., SessionTokenVerifier]) -> None:
    strict = make_verifier(leeway=0)
    assert_rejected(strict, fake.mint_token("user_1", exp_in=-2), "token_expired")
    assert_rejected(strict, fake.mint_token("user_1", nbf_offset=2), "token_not_yet_valid")


def test_nbf_is_optional(fake: FakeClerk, verifier: SessionTokenVerifier) -> None:
    assert verifier.verify(fake.mint_token("user_1", extra_claims={"nbf": None})).user_id == "user_1"


@pytest.mark.parametrize("claim", ["exp", "sub"])
def test_exp_and_sub_are_required(fake: FakeClerk, verifier: SessionTokenVerifier, claim: str) -> None:
    assert_rejected(verifier, fake.mint_token("user_1", extra_claims={claim: None}), "token_invalid_claims")


@pytest.mark.parametrize(
    ("claims", "code"),
    [
        ({"sub": ""}, "token_invalid_claims"),
        ({"sub": 42}, "token_invalid_claims"),
        ({"sid": 42}, "token_invalid_claims"),
        ({"azp": ["http://localhost:3000"]}, "token_invalid_claims"),
        ({"exp": "tomorrow"}, "token_malformed"),
    ],
)
def test_ill_typed_claims(
    fake: FakeClerk, verifier: SessionTokenVerifier, claims: dict[str, Any], code: str
) -> None:
    assert_rejected(verifier, fake.mint_token("user_1", extra_claims=claims), code)


@pytest.mark.parametrize(
    "sub",
    [".", "..", "user_", "user_..", "user_a/b", "../v1/jwks", "usr_123", "user_" + "a" * 60, "user_1\n"],
)
def test_sub_must_be_a_plausible_clerk_user_id(
    fake: FakeClerk, verifier: SessionTokenVerifier, sub: str
) -> None:
    """`sub` goes into a Backend API path: "." and ".." would reach another endpoint."""
    error = assert_rejected(verifier, fake.mint_token(sub), "token_invalid_claims")
    assert sub not in error.message


@pytest.mark.parametrize("sub", ["user_2NNEqL2nrIRdJ194ndJqAHwEfxC", "user_1", "user_count_5"])
def test_clerk_shaped_subs_are_accepted(fake: FakeClerk, verifier: SessionTokenVerifier, sub: str) -> None:
    assert verifier.verify(fake.mint_token(sub)).user_id == sub


# -- issuer -------------------------------------------------------------------


def test_issuer_is_not_checked_unless_configured(fake: FakeClerk, verifier: SessionTokenVerifier) -> None:
    token = fake.mint_token("user_1", extra_claims={"iss": "https://clerk.elsewhere.test"})
    assert verifier.verify(token).user_id == "user_1"


@pytest.mark.parametrize("configured", [ISSUER, ISSUER + "/"])
def test_configured_issuer_accepts_its_tokens(
    fake: FakeClerk, make_verifier: Callable[..., SessionTokenVerifier], configured: str
) -> None:
    verifier = make_verifier(issuer=configured)
    assert verifier.verify(fake.mint_token("user_1")).user_id == "user_1"


@pytest.mark.parametrize(
    "iss", ["https://clerk.elsewhere.test", "http://clerk.fake.test", None, 42, ISSUER + ".evil.test"]
)
def test_configured_issuer_rejects_other_issuers(
    fake: FakeClerk, make_verifier: Callable[..., SessionTokenVerifier], iss: object
) -> None:
    verifier = make_verifier(issuer=ISSUER)
    token = fake.mint_token("user_1", extra_claims={"iss": iss})
    assert_rejected(verifier, token, "token_wrong_issuer")


# -- authorized parties -------------------------------------------------------


def test_wrong_azp(fake: FakeClerk, verifier: SessionTokenVerifier) -> None:
    assert_rejected(verifier, fake.mint_token("user_1", azp="https://evil.test"), "token_wrong_azp")


def test_missing_azp_while_parties_are_configured(fake: FakeClerk, verifier: SessionTokenVerifier) -> None:
    assert_rejected(verifier, fake.mint_token("user_1", azp=None), "token_wrong_azp")


def test_a_single_string_is_not_a_list_of_parties(make_verifier: Callable[..., SessionTokenVerifier]) -> None:
    with pytest.raises(TypeError):
        make_verifier(authorized_parties=DEFAULT_AZP)


# -- algorithms and signatures -------------------------------------------------


def test_hs256_signed_with_the_public_key_is_rejected(
    fake: FakeClerk, verifier: SessionTokenVerifier
) -> None:
    """The classic algorithm-confusion forgery: HMAC keyed with the (public) RSA key."""
    forged = fake.mint_token("user_1", alg="HS256")
    assert_rejected(verifier, forged, "token_bad_algorithm")
    assert fake.jwks_requests == 0  # rejected before any key was looked up


def test_hs256_forgery_is_rejected_with_a_static_key(fake: FakeClerk) -> None:
    pem = fake.public_pem()
    verifier = SessionTokenVerifier(jwt_key=pem, api_url=fake.url, secret_key=None, authorized_parties=[])
    forged = fake.mint_token("user_1", alg="HS256", key=pem.encode())
    assert_rejected(verifier, forged, "token_bad_algorithm")


def test_alg_none_is_rejected(fake: FakeClerk, verifier: SessionTokenVerifier) -> None:
    assert_rejected(verifier, fake.mint_token("user_1", alg="none"), "token_bad_algorithm")


@pytest.mark.parametrize("headers", [{"alg": "RS512"}, {"alg": None}, {"alg": "rs256"}])
def test_only_rs256_is_accepted(
    fake: FakeClerk, verifier: SessionTokenVerifier, headers: dict[str, Any]
) -> None:
    assert_rejected(verifier, fake.mint_token("user_1", headers=headers), "token_bad_algorithm")


def test_real_rs512_signature_is_rejected(fake: FakeClerk, verifier: SessionTokenVerifier) -> None:
    assert_rejected(verifier, fake.mint_token("user_1", alg="RS512"), "token_bad_algorithm")


def test_signature_by_another_key_is_rejected(fake: FakeClerk, verifier: SessionTokenVerifier) -> None:
    impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert_rejected(verifier, fake.mint_token("user_1", key=impostor), "token_invalid_signature")


def test_tampered_payload_is_rejected(fake: FakeClerk, verifier: SessionTokenVerifier) -> None:
    header, _, signature = fake.mint_token("user_1").split(".")
    other_payload = fake.mint_token("user_admin").split(".")[1]
    assert_rejected(verifier, f"{header}.{other_payload}.{signature}", "token_invalid_signature")


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "abc.def",
        "garbage.garbage.garbage",
        "!!!.@@@.###",
        "bm90IGpzb24.e30.c2ln",  # header not JSON
        "WyJSUzI1NiJd.e30.c2ln",  # header a JSON array
    ],
)
def test_malformed_tokens(verifier: SessionTokenVerifier, token: str) -> None:
    error = assert_rejected(verifier, token, "token_malformed")
    if token:
        assert token not in str(error)


def test_payload_that_is_not_json_is_malformed(fake: FakeClerk, verifier: SessionTokenVerifier) -> None:
    """Properly signed, so only the payload itself can be the problem."""
    header = fake.mint_token("user_1").split(".")[0]
    signing_input = f"{header}.{_b64(b'not json')}".encode()
    signature = fake.private_key().sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    assert_rejected(verifier, f"{signing_input.decode()}.{_b64(signature)}", "token_malformed")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_error_messages_never_contain_the_token(fake: FakeClerk, verifier: SessionTokenVerifier) -> None:
    token = fake.mint_token("user_1", exp_in=-30)
    error = assert_rejected(verifier, token, "token_expired")
    assert token not in str(error) and token not in error.message


# -- JWKS: unknown keys, rotation, rate limiting ---------------------------------


def test_unknown_kid_refetches_once_then_is_rejected(
    fake: FakeClerk, verifier: SessionTokenVerifier, clock: FakeMonotonicClock
) -> None:
    verifier.verify(fake.mint_token("user_1"))
    clock.advance(31)

    assert_rejected(verifier, fake.mint_token("user_1", kid="ins_unknown"), "token_unknown_key")
    assert fake.jwks_requests == 2


def test_token_without_kid_is_rejected(fake: FakeClerk, verifier: SessionTokenVerifier) -> None:
    assert_rejected(verifier, fake.mint_token("user_1", headers={"kid": None}), "token_unknown_key")


def test_key_rotation_triggers_exactly_one_refetch(
    fake: FakeClerk, verifier: SessionTokenVerifier, clock: FakeMonotonicClock
) -> None:
    verifier.verify(fake.mint_token("user_1"))
    clock.advance(31)
    fake.rotate_key()

    for _ in range(3):
        assert verifier.verify(fake.mint_token("user_1")).user_id == "user_1"
    assert fake.jwks_requests == 2


def test_rotation_with_refetch_interval_zero(
    fake: FakeClerk, make_verifier: Callable[..., SessionTokenVerifier]
) -> None:
    verifier = make_verifier(jwks_refetch_interval=0)
    verifier.verify(fake.mint_token("user_1"))
    fake.rotate_key()

    assert verifier.verify(fake.mint_token("user_1")).user_id == "user_1"
    assert fake.jwks_requests == 2


def test_retired_key_is_rejected_after_refetch(
    fake: FakeClerk, make_verifier: Callable[..., SessionTokenVerifier]
) -> None:
    verifier = make_verifier(jwks_refetch_interval=0)
    old_kid = fake.kid
    fake.rotate_key()

    assert_rejected(verifier, fake.mint_token("user_1", kid=old_kid), "token_unknown_key")


def test_both_keys_verify_while_rotation_keeps_the_old_one(
    fake: FakeClerk, verifier: SessionTokenVerifier
) -> None:
    old_kid = fake.kid
    fake.rotate_key(keep_old=True)

    assert verifier.verify(fake.mint_token("user_1", kid=old_kid)).user_id == "user_1"
    assert verifier.verify(fake.mint_token("user_1")).user_id == "user_1"
    assert fake.jwks_requests == 1


def test_unknown_kids_refetch_at_most_once_per_interval(
    fake: FakeClerk, verifier: SessionTokenVerifier, clock: FakeMonotonicClock
) -> None:
    verifier.verify(fake.mint_token("user_1"))

    for n in range(20):
        assert_rejected(verifier, fake.mint_token("user_1", kid=f"ins_forged_{n}"), "token_unknown_key")
        clock.advance(1)  # 20 s in all: still inside the 30 s interval
    assert fake.jwks_requests == 1

    clock.advance(10)
    for n in range(20):
        assert_rejected(verifier, fake.mint_token("user_1", kid=f"ins_again_{n}"), "token_unknown_key")
    assert fake.jwks_requests == 2


def test_concurrent_cold_verifications_fetch_the_jwks_once(
    fake: FakeClerk, verifier: SessionTokenVerifier
) -> None:
    fake.delay(0.05, times=1, on="jwks")  # hold the first fetch open while the others queue
    tokens = [fake.mint_token(f"user_{n}") for n in range(8)]
    results: list[str] = []
    errors: list[BaseException] = []

    def verify(token: str) -> None:
        try:
            results.append(verifier.verify(token).user_id)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=verify, args=(token,)) for token in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert sorted(results) == sorted(f"user_{n}" for n in range(8))
    assert fake.jwks_requests == 1


def test_known_kid_never_waits_for_a_refetch(
    fake: FakeClerk, make_verifier: Callable[..., SessionTokenVerifier], clock: FakeMonotonicClock
) -> None:
    """A forged kid's refetch (held open 3 s by a slow Clerk) must not hold up valid tokens."""
    verifier = make_verifier(timeout=10)
    verifier.verify(fake.mint_token("user_1"))
    clock.advance(31)
    fake.delay(3, times=1, on="jwks")
    forged_token = fake.mint_token("user_1", kid="ins_forged")

    def verify_forged() -> None:
        with contextlib.suppress(InvalidSessionToken):
            verifier.verify(forged_token)

    forged = threading.Thread(target=verify_forged)
    forged.start()
    deadline = time.monotonic() + 10
    while fake.jwks_requests < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.jwks_requests == 2, "the forged kid did not start a refetch"

    started = time.monotonic()
    for _ in range(5):
        assert verifier.verify(fake.mint_token("user_1")).user_id == "user_1"
    took = time.monotonic() - started

    assert forged.is_alive(), "the refetch ended before the valid tokens were checked"
    assert took < 1.5, f"valid tokens waited {took:.2f} s behind the refetch"
    forged.join()


def test_waiting_for_another_threads_fetch_is_bounded_by_the_deadline(
    fake: FakeClerk, make_verifier: Callable[..., SessionTokenVerifier]
) -> None:
    """A cold miss queued behind a 3 s fetch gives up when its own deadline passes."""
    verifier = make_verifier(timeout=10)
    fake.delay(3, times=1, on="jwks")
    token = fake.mint_token("user_1")
    first = threading.Thread(target=lambda: verifier.verify(token))
    first.start()
    deadline_at = time.monotonic() + 10
    while fake.jwks_requests < 1 and time.monotonic() < deadline_at:
        time.sleep(0.01)

    started = time.monotonic()
    with deadline(0.5), pytest.raises(ClerkUnavailable, match="waiting for Clerk's JWKS"):
        verifier.verify(token)
    took = time.monotonic() - started

    assert first.is_alive(), "the first fetch ended before the second gave up"
    assert took < 0.5 + 1.5
    first.join()
    assert verifier.verify(token).user_id == "user_1"  # the first fetch filled the cache
    assert fake.jwks_requests == 1


# -- JWKS outages ----------------------------------------------------------------


def test_unreachable_jwks_is_clerk_unavailable(fake: FakeClerk, verifier: SessionTokenVerifier) -> None:
    token = fake.mint_token("user_1")
    fake.stop()

    with pytest.raises(ClerkUnavailable):
        verifier.verify(token)


@pytest.mark.parametrize("status", [500, 503, 429])
def test_failing_jwks_is_clerk_unavailable(
    fake: FakeClerk, verifier: SessionTokenVerifier, status: int
) -> None:
    fake.fail_with(status, retry_after=3, on="jwks")

    with pytest.raises(ClerkUnavailable) as caught:
        verifier.verify(fake.mint_token("user_1"))
    assert caught.value.retry_after == 3


def test_slow_jwks_is_clerk_unavailable(fake: FakeClerk, verifier: SessionTokenVerifier) -> None:
    fake.delay(2, on="jwks")
    with pytest.raises(ClerkUnavailable, match="in time"):
        verifier.verify(fake.mint_token("user_1"))


def test_garbled_jwks_is_clerk_unavailable(fake: FakeClerk, verifier: SessionTokenVerifier) -> None:
    fake.garbled(on="jwks")
    with pytest.raises(ClerkUnavailable):
        verifier.verify(fake.mint_token("user_1"))


def test_failed_fetch_is_not_retried_within_the_interval(
    fake: FakeClerk, verifier: SessionTokenVerifier, clock: FakeMonotonicClock
) -> None:
    fake.fail_with(503, times=1, on="jwks")
    token = fake.mint_token("user_1")
    with pytest.raises(ClerkUnavailable):
        verifier.verify(token)

    clock.advance(10)
    with pytest.raises(ClerkUnavailable) as caught:
        verifier.verify(token)
    assert caught.value.retry_after == 20
    assert fake.jwks_requests == 1

    clock.advance(20)
    assert verifier.verify(token).user_id == "user_1"
    assert fake.jwks_requests == 2


def test_cached_keys_survive_an_outage(
    fake: FakeClerk, verifier: SessionTokenVerifier, clock: FakeMonotonicClock
) -> None:
    verifier.verify(fake.mint_token("user_1"))
    fake.stop()
    clock.advance(3600)

    assert verifier.verify(fake.mint_token("user_1")).user_id == "user_1"


def test_wrong_secret_key_is_not_a_token_problem(
    fake: FakeClerk, make_verifier: Callable[..., SessionTokenVerifier], clock: FakeMonotonicClock
) -> None:
    verifier = make_verifier(secret_key="sk_test_wrong")
    for _ in range(2):  # the second time from the remembered failure, without a fetch
        with pytest.raises(ClerkAPIError) as caught:
            verifier.verify(fake.mint_token("user_1"))
        assert type(caught.value) is ClerkAPIError
        assert caught.value.status_code == 401
        clock.advance(1)
    assert fake.jwks_requests == 1


# -- static CLERK_JWT_KEY --------------------------------------------------------


@pytest.mark.parametrize(
    "reshape",
    [
        lambda pem: pem,
        lambda pem: pem.replace("\n", ""),  # one line, as the dashboard sometimes shows it
        lambda pem: pem.replace("\n", "\\n"),  # escaped, as .env files often keep it
        lambda pem: "  " + pem.replace("\n", " ") + "  ",
    ],
    ids=["pem", "one-line", "escaped-newlines", "spaces"],
)
def test_static_key_needs_no_network(fake: FakeClerk, reshape: Callable[[str], str]) -> None:
    token = fake.mint_token("user_1")
    jwt_key = reshape(fake.public_pem())
    fake.stop()

    verifier = SessionTokenVerifier(
        jwt_key=jwt_key, api_url=fake.url, secret_key=fake.secret_key, authorized_parties=[DEFAULT_AZP]
    )

    assert verifier.verify(token).user_id == "user_1"
    assert fake.jwks_requests == 0


def test_static_key_rejects_tokens_from_other_keys(fake: FakeClerk) -> None:
    verifier = SessionTokenVerifier(
        jwt_key=fake.public_pem(), api_url=fake.url, secret_key=None, authorized_parties=[]
    )
    fake.rotate_key()
    assert_rejected(verifier, fake.mint_token("user_1"), "token_invalid_signature")


def test_normalise_pem_public_key_rebuilds_64_char_lines(fake: FakeClerk) -> None:
    pem = fake.public_pem()
    assert normalise_pem_public_key(pem.replace("\n", "")) == pem


@pytest.mark.parametrize("jwt_key", ["not a key", "-----BEGIN PUBLIC KEY-----AAAA-----END PUBLIC KEY-----"])
def test_bad_static_key_fails_at_construction(jwt_key: str) -> None:
    with pytest.raises(ValueError, match="CLERK_JWT_KEY"):
        SessionTokenVerifier(
            jwt_key=jwt_key, api_url="http://127.0.0.1:9", secret_key=None, authorized_parties=[]
        )


def test_a_key_source_is_required() -> None:
    with pytest.raises(ValueError, match="secret key"):
        SessionTokenVerifier(
            jwt_key=None, api_url="http://127.0.0.1:9", secret_key=None, authorized_parties=[]
        )


# -- extracting the token ---------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "cookie", "expected"),
    [
        ("Bearer abc.def.ghi", None, "abc.def.ghi"),
        ("bearer abc.def.ghi", None, "abc.def.ghi"),
        ("BEARER   abc.def.ghi  ", None, "abc.def.ghi"),
        ("Bearer header.token.x", "cookie.token.x", "header.token.x"),
        (None, "cookie.token.x", "cookie.token.x"),
        ("", "cookie.token.x", "cookie.token.x"),
        ("Basic dXNlcjpwYXNz", "cookie.token.x", "cookie.token.x"),
        ("Bearer ", "cookie.token.x", "cookie.token.x"),
    ],
)
def test_extract_session_token(header: str | None, cookie: str | None, expected: str) -> None:
    assert extract_session_token(header, cookie) == expected


@pytest.mark.parametrize(
    ("header", "cookie"), [(None, None), ("", ""), ("Bearer", None), ("Basic dXNlcjpwYXNz", "  ")]
)
def test_extract_session_token_missing(header: str | None, cookie: str | None) -> None:
    with pytest.raises(InvalidSessionToken) as caught:
        extract_session_token(header, cookie)
    assert caught.value.code == "token_missing"


def test_tokens_are_never_logged(
    fake: FakeClerk, verifier: SessionTokenVerifier, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = [fake.mint_token("user_1"), fake.mint_token("user_1", exp_in=-60), fake.mint_token("u", kid="x")]
    for token in tokens:
        with contextlib.suppress(InvalidSessionToken):
            verifier.verify(token)
    assert caplog.records  # the JWKS fetch was logged...
    for token in tokens:
        assert token not in caplog.text  # ...the tokens were not
    assert fake.secret_key not in caplog.text
