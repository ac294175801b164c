"""A small synchronous client for the parts of Clerk's Backend API that clerk-sync uses.

Errors are sorted by what the caller should do about them: `ClerkUserNotFound`
means "the user is gone", `ClerkUnavailable` means "try again later" (answer
503), and any other `ClerkAPIError` is a bug or a misconfiguration.
"""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx

from .. import metrics
from .deadline import deadline, new_client, remaining

__all__ = [
    "CLERK_API_VERSION",
    "ClerkAPI",
    "ClerkAPIError",
    "ClerkUnavailable",
    "ClerkUserNotFound",
    "new_http_client",
    "parse_retry_after",
]

USER_AGENT = "clerk-sync"
# The Backend API version the parser (app.clerk.users) was written against; Clerk
# answers in this version's shapes whatever the instance's default. See README,
# "Clerk API version", before changing it.
CLERK_API_VERSION = "2025-11-10"
MAX_PAGE_SIZE = 500


class ClerkAPIError(Exception):
    """Clerk answered in a way we cannot use."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class ClerkUserNotFound(ClerkAPIError):
    def __init__(self, user_id: str) -> None:
        super().__init__(f"Clerk has no user {user_id!r}", status_code=404)
        self.user_id = user_id


class ClerkUnavailable(ClerkAPIError):
    """Clerk could not be reached or is overloaded; the same call may succeed later."""

    def __init__(
        self, message: str, *, status_code: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status_code=status_code)
        self.retry_after = retry_after


def new_http_client() -> httpx.Client:
    """A connection pool for Clerk whose calls honour `deadline()` (see app.clerk.deadline)."""
    return new_client()


class ClerkAPI:
    """`api_url` is the Backend API origin, e.g. `https://api.clerk.com`, without `/v1`.

    Each call ends within `timeout` seconds in all, or sooner inside a shorter
    `deadline()`. Pass `http` (from `new_http_client`) to share a connection pool;
    the caller then owns (and closes) it.
    """

    def __init__(
        self,
        api_url: str,
        secret_key: str,
        timeout: float = 5.0,
        http: httpx.Client | None = None,
    ) -> None:
        if not secret_key:
            raise ValueError("a Clerk secret key is required")
        self._base_url = api_url.rstrip("/")
        self._secret_key = secret_key
        self._timeout = timeout
        self._owns_http = http is None
        self._http = http if http is not None else new_http_client()

    def __repr__(self) -> str:
        return f"ClerkAPI({self._base_url!r})"  # never the secret

    def __enter__(self) -> ClerkAPI:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def get_user(self, user_id: str) -> dict[str, Any]:
        """The raw user object; parse it with `app.clerk.users.parse_clerk_user`."""
        # Quoting with safe="" keeps "/" out of the path, but "." and ".." survive
        # quoting and would be resolved as dot-segments, reaching another endpoint.
        if user_id in ("", ".", ".."):
            raise ValueError(f"not a Clerk user id: {user_id!r}")
        try:
            response = self._get(f"/v1/users/{quote(user_id, safe='')}")
        except ClerkAPIError as exc:
            if exc.status_code == 404:
                raise ClerkUserNotFound(user_id) from exc
            raise
        body = self._json(response)
        if not isinstance(body, dict):
            raise ClerkUnavailable("Clerk returned a user that is not a JSON object", status_code=200)
        return body

    def list_users(self, limit: int = 10, offset: int = 0) -> list[dict[str, Any]]:
        """One page of users, newest first (Clerk's default order)."""
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}, got {limit}")
        if offset < 0:
            raise ValueError(f"offset must not be negative, got {offset}")
        response = self._get("/v1/users", params={"limit": limit, "offset": offset})
        body = self._json(response)
        # Clerk answers with a bare array; some paginated endpoints wrap it in "data".
        users = body.get("data") if isinstance(body, dict) else body
        if not isinstance(users, list) or not all(isinstance(user, dict) for user in users):
            raise ClerkUnavailable("Clerk returned a user list of an unexpected shape", status_code=200)
        return users

    def count_users(self) -> int:
        """How many users the instance has (`GET /v1/users/count`)."""
        body = self._json(self._get("/v1/users/count"))
        total = body.get("total_count") if isinstance(body, dict) else None
        if not isinstance(total, int) or isinstance(total, bool) or total < 0:
            raise ClerkUnavailable("Clerk returned a user count of an unexpected shape", status_code=200)
        return total

    def get_jwks(self) -> dict[str, Any]:
        """The instance's JSON Web Key Set, used to verify session tokens."""
        body = self._json(self._get("/v1/jwks"))
        if not isinstance(body, dict) or not isinstance(body.get("keys"), list):
            raise ClerkUnavailable("Clerk returned a JWKS without a 'keys' list", status_code=200)
        return body

    @metrics.clerk_call
    def _get(self, path: str, params: dict[str, int] | None = None) -> httpx.Response:
        headers = {
            "Authorization": f"Bearer {self._secret_key}",
            "Clerk-API-Version": CLERK_API_VERSION,
            "User-Agent": USER_AGENT,
        }
        try:
            with deadline(self._timeout):
                # Also bounds the wait for a free pooled connection, which no socket call covers.
                left = remaining()
                budget = self._timeout if left is None else max(left, 0.001)
                url = self._base_url + path
                response = self._http.get(url, params=params, headers=headers, timeout=budget)
        except httpx.TimeoutException as exc:
            raise ClerkUnavailable(f"Clerk did not answer GET {path} in time") from exc
        except httpx.TransportError as exc:
            raise ClerkUnavailable(f"could not reach Clerk for GET {path}: {type(exc).__name__}") from exc

        status = response.status_code
        if status == 429 or status >= 500:
            raise ClerkUnavailable(
                f"Clerk answered GET {path} with {status}",
                status_code=status,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        if status >= 400:
            raise ClerkAPIError(f"Clerk answered GET {path} with {status}", status_code=status)
        return response

    @staticmethod
    def _json(response: httpx.Response) -> object:
        try:
            return response.json()
        except ValueError as exc:  # also covers UnicodeDecodeError
            raise ClerkUnavailable(
                "Clerk returned a body that is not JSON", status_code=response.status_code
            ) from exc


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait, from a Retry-After header given as seconds or as an HTTP-date."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if seconds >= 0 and seconds != float("inf") else None

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive one is just malformed
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)
