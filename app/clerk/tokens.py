"""Verify Clerk session tokens: short-lived RS256 JWTs sent by the browser.

The signing key comes either from a static PEM (`CLERK_JWT_KEY`), which needs
no network at all, or from the instance's JWKS, fetched with the secret key and
cached by `kid`. A token that cannot be trusted raises `InvalidSessionToken`
(answer 401); a JWKS that cannot be fetched raises `ClerkUnavailable` (answer
503), because an outage at Clerk says nothing about the token, or another
`ClerkAPIError` (answer 500) when Clerk refuses the secret key.

Tokens are secrets: they never appear in messages or logs.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.exceptions import InvalidIssuedAtError, InvalidSubjectError

from app import metrics
from app.clerk.api import ClerkAPI, ClerkAPIError, ClerkUnavailable
from app.clerk.deadline import remaining
from app.clerk.users import clip, is_plausible_user_id

__all__ = [
    "InvalidSessionToken",
    "SessionClaims",
    "SessionTokenVerifier",
    "TokenErrorCode",
    "extract_session_token",
    "normalise_pem_public_key",
]

logger = logging.getLogger(__name__)

ALGORITHM = "RS256"
SESSION_COOKIE = "__session"

TokenErrorCode = Literal[
    "token_missing",
    "token_malformed",
    "token_bad_algorithm",
    "token_unknown_key",
    "token_invalid_signature",
    "token_expired",
    "token_not_yet_valid",
    "token_invalid_claims",
    "token_wrong_azp",
    "token_wrong_issuer",
]


class InvalidSessionToken(Exception):
    """The request's session token cannot be trusted; `code` is stable, the message is for humans."""

    def __init__(self, code: TokenErrorCode, message: str | None = None) -> None:
        super().__init__(message or code)
        self.code: TokenErrorCode = code
        self.message = message or code


@dataclass(frozen=True, slots=True)
class SessionClaims:
    user_id: str
    """`sub`: the Clerk user id."""
    session_id: str | None
    """`sid`: the Clerk session id."""
    authorized_party: str | None
    """`azp`: the origin the token was issued to."""
    claims: Mapping[str, Any] = field(compare=False, repr=False)
    """Every verified claim, read-only."""


def extract_session_token(authorization_header: str | None, session_cookie: str | None) -> str:
    """The token from `Authorization: Bearer <token>`, else from the `__session` cookie.

    Clerk's frontend sends the header cross-origin and the cookie same-origin.
    Any other Authorization scheme is not a session token, so it is passed over.
    """
    if authorization_header:
        scheme, _, credentials = authorization_header.strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    if session_cookie and session_cookie.strip():
        return session_cookie.strip()
    raise InvalidSessionToken("token_missing", "no session token in the Authorization header or cookie")


def normalise_pem_public_key(text: str) -> str:
    """A well-formed PEM from a public key pasted with, without, or with escaped line breaks.

    Clerk's dashboard often shows the key on one line, and `.env` files keep `\\n`
    literally, neither of which `cryptography` accepts.
    """
    body = text.replace("\\n", "\n").strip()
    body = re.sub(r"-----(BEGIN|END) PUBLIC KEY-----", "", body)
    body = "".join(body.split())
    lines = [body[start : start + 64] for start in range(0, len(body), 64)]
    return "\n".join(["-----BEGIN PUBLIC KEY-----", *lines, "-----END PUBLIC KEY-----", ""])


class SessionTokenVerifier:
    """Verifies session tokens; safe to share between threads.

    `jwt_key` (the PEM public key) takes precedence; without it, keys come from
    `{api_url}/v1/jwks`, authenticated with `secret_key`. An unknown `kid` (key
    rotation) triggers a JWKS refetch, but at most one fetch is attempted per
    `jwks_refetch_interval` seconds, failed or not, so that a flood of forged
    `kid`s or a Clerk outage cannot turn into a flood of requests to Clerk.
    A token whose `kid` is cached never waits for a fetch.
    `issuer` (Clerk's Frontend API URL), when given, must equal the token's `iss`.
    `monotonic` is injectable so tests can move time without sleeping.
    """

    def __init__(
        self,
        *,
        jwt_key: str | None,
        api_url: str,
        secret_key: str | None,
        authorized_parties: Sequence[str],
        issuer: str | None = None,
        leeway: float = 5,
        jwks_refetch_interval: float = 30,
        timeout: float = 5.0,
        http: httpx.Client | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(authorized_parties, str):
            raise TypeError("authorized_parties must be a sequence of origins, not one string")
        self._authorized_parties = frozenset(party.rstrip("/") for party in authorized_parties)
        self._issuer = issuer.rstrip("/") if issuer else None
        self._leeway = leeway
        self._static_key: RSAPublicKey | None = None
        self._jwks: _JWKSCache | None = None
        if jwt_key:
            self._static_key = _load_static_key(jwt_key)
        elif secret_key:
            api = ClerkAPI(api_url, secret_key, timeout=timeout, http=http)
            self._jwks = _JWKSCache(api, jwks_refetch_interval, monotonic)
        else:
            raise ValueError("a Clerk JWT key or a secret key (to fetch the JWKS) is required")

    def close(self) -> None:
        if self._jwks is not None:
            self._jwks.api.close()

    def verify(self, token: str) -> SessionClaims:
        """The token's claims, or `InvalidSessionToken`; `ClerkUnavailable` if the JWKS can't be had."""
        if not isinstance(token, str) or not token:
            raise InvalidSessionToken("token_malformed", "the session token is empty")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidSessionToken("token_malformed", "the session token is not a JWT") from None

        # Checked before any key is chosen: the algorithm must never be the token's choice.
        if header.get("alg") != ALGORITHM:
            raise InvalidSessionToken(
                "token_bad_algorithm", f"session tokens must be signed with {ALGORITHM}"
            )

        key = self._signing_key(header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                leeway=self._leeway,
                # Clerk session tokens name their audience in `azp`, checked below.
                options={"require": ["sub", "exp"], "verify_aud": False},
            )
        except jwt.PyJWTError as exc:
            raise _as_invalid_token(exc) from None

        self._check_issuer(claims)
        return SessionClaims(
            user_id=_user_id(claims),
            session_id=_optional_claim(claims, "sid"),
            authorized_party=self._authorized_party(claims),
            claims=MappingProxyType(claims),
        )

    def _signing_key(self, kid: object) -> RSAPublicKey:
        if self._static_key is not None:
            return self._static_key
        assert self._jwks is not None
        if not isinstance(kid, str) or not kid:
            raise InvalidSessionToken("token_unknown_key", "the session token names no signing key (kid)")
        key = self._jwks.key_for(kid)
        if key is None:
            raise InvalidSessionToken("token_unknown_key", "the session token's signing key is not Clerk's")
        return key

    def _check_issuer(self, claims: Mapping[str, Any]) -> None:
        if self._issuer is None:
            return
        iss = claims.get("iss")
        if not isinstance(iss, str) or iss.rstrip("/") != self._issuer:
            raise InvalidSessionToken("token_wrong_issuer", "the session token was issued by another Clerk")

    def _authorized_party(self, claims: Mapping[str, Any]) -> str | None:
        azp = claims.get("azp")
        if azp is not None and not isinstance(azp, str):
            raise InvalidSessionToken("token_invalid_claims", "the session token's azp is not a string")
        if self._authorized_parties and azp not in self._authorized_parties:
            raise InvalidSessionToken("token_wrong_azp", "the session token was issued to another origin")
        return azp


class _JWKSCache:
    """RSA keys by `kid`, refetched on a miss at most once per `refetch_interval`.

    A hit reads `_keys` without any lock: the dict is replaced whole, never
    changed in place, so a known `kid` never waits behind a refetch. Misses take
    `_fetch_lock`, so misses that arrive together wait for one fetch (single
    flight) instead of each making their own.
    """

    def __init__(self, api: ClerkAPI, refetch_interval: float, monotonic: Callable[[], float]) -> None:
        self.api = api
        self._refetch_interval = refetch_interval
        self._monotonic = monotonic
        self._fetch_lock = threading.Lock()
        self._keys: Mapping[str, RSAPublicKey] = MappingProxyType({})
        self._last_attempt: float | None = None
        self._last_failure: ClerkAPIError | None = None

    def key_for(self, kid: str) -> RSAPublicKey | None:
        key = self._keys.get(kid)
        if key is not None:
            return key
        # Waiting for another thread's fetch counts against this call's deadline too.
        left = remaining()
        if not self._fetch_lock.acquire(timeout=-1 if left is None else max(left, 0.0)):
            raise ClerkUnavailable("timed out waiting for Clerk's JWKS")
        try:
            return self._key_after_miss(kid)
        finally:
            self._fetch_lock.release()

    def _key_after_miss(self, kid: str) -> RSAPublicKey | None:
        key = self._keys.get(kid)  # fetched while this thread waited for the lock
        if key is not None:
            return key
        now = self._monotonic()
        if self._last_attempt is None or now - self._last_attempt >= self._refetch_interval:
            self._last_attempt = now
            self._refresh()
            return self._keys.get(kid)
        failure = self._last_failure
        if failure is None:
            return None
        # The last fetch failed, so we still cannot tell whether this kid is Clerk's.
        if isinstance(failure, ClerkUnavailable):
            wait = self._refetch_interval - (now - self._last_attempt)
            raise ClerkUnavailable(str(failure), status_code=failure.status_code, retry_after=wait)
        raise ClerkAPIError(str(failure), status_code=failure.status_code)

    @metrics.jwks_fetch
    def _refresh(self) -> None:
        try:
            jwks = self.api.get_jwks()
        except ClerkAPIError as exc:
            self._last_failure = exc
            logger.warning("could not fetch Clerk's JWKS: %s", exc)
            raise
        self._last_failure = None
        self._keys = MappingProxyType(_rsa_keys(jwks))
        logger.info("fetched Clerk's JWKS: %d RSA key(s)", len(self._keys))


def _rsa_keys(jwks: Mapping[str, Any]) -> dict[str, RSAPublicKey]:
    keys: dict[str, RSAPublicKey] = {}
    for entry in jwks.get("keys", []):
        # Only RSA signing keys can verify RS256; anything else in the set is skipped.
        if not isinstance(entry, dict) or entry.get("kty") != "RSA" or entry.get("use", "sig") != "sig":
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str):
            continue
        try:
            key = jwt.PyJWK(entry, algorithm=ALGORITHM).key
        except jwt.PyJWTError:
            logger.warning("skipping unusable JWKS key %s", clip(kid))
            continue
        if isinstance(key, RSAPublicKey):
            keys[kid] = key
    return keys


def _load_static_key(jwt_key: str) -> RSAPublicKey:
    try:
        key = load_pem_public_key(normalise_pem_public_key(jwt_key).encode())
    except ValueError:
        raise ValueError("CLERK_JWT_KEY is not a PEM public key") from None
    if not isinstance(key, RSAPublicKey):
        raise ValueError("CLERK_JWT_KEY must be an RSA public key")
    return key


def _user_id(claims: Mapping[str, Any]) -> str:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise InvalidSessionToken("token_invalid_claims", "the session token has no subject")
    if not is_plausible_user_id(sub):
        raise InvalidSessionToken("token_invalid_claims", "the session token's sub is not a Clerk user id")
    return sub


def _optional_claim(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidSessionToken("token_invalid_claims", f"the session token's {name} is not a string")
    return value


def _as_invalid_token(exc: jwt.PyJWTError) -> InvalidSessionToken:
    # Subclasses before their bases: InvalidSignatureError is a DecodeError.
    if isinstance(exc, jwt.ExpiredSignatureError):
        return InvalidSessionToken("token_expired", "the session token has expired")
    if isinstance(exc, jwt.ImmatureSignatureError):
        return InvalidSessionToken("token_not_yet_valid", "the session token is not valid yet")
    if isinstance(exc, jwt.InvalidSignatureError):
        return InvalidSessionToken("token_invalid_signature", "the session token's signature is invalid")
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return InvalidSessionToken("token_bad_algorithm", f"session tokens must be signed with {ALGORITHM}")
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return InvalidSessionToken("token_invalid_claims", f"the session token has no {exc.claim!r} claim")
    if isinstance(exc, InvalidIssuedAtError | InvalidSubjectError):
        return InvalidSessionToken("token_invalid_claims", "the session token has an ill-typed claim")
    # Not PyJWT's message: a decoding error can quote bytes of the token.
    return InvalidSessionToken("token_malformed", "the session token is malformed")
