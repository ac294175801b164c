"""`POST /after-login`: the frontend's call right after sign-in.

The session token proves who is calling but carries no profile, so the user is
fetched from Clerk's Backend API and stored before answering: once this returns
200, the row exists. Clerk gets `CLERK_TIMEOUT` seconds in all per login (JWKS and
user fetch together), however slowly it sends; after that the answer is 503.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from prisma.models import User

from .. import metrics
from ..clerk import current_clerk
from ..clerk.api import ClerkAPIError, ClerkUnavailable, ClerkUserNotFound
from ..clerk.deadline import deadline
from ..clerk.tokens import InvalidSessionToken, extract_session_token
from ..clerk.users import InvalidClerkUser, parse_clerk_user
from ..config import Settings
from ..db import DATABASE_ERRORS, get_db
from ..db_errors import classify
from ..errors import ApiError
from ..sync import sync_user_with_database

log = logging.getLogger(__name__)
bp = Blueprint("after_login", __name__)


@bp.post("/after-login")
def after_login() -> ResponseReturnValue:
    clerk = current_clerk()
    settings: Settings = current_app.config["SETTINGS"]
    try:
        token = extract_session_token(request.headers.get("Authorization"), request.cookies.get("__session"))
        with deadline(settings.clerk_timeout):
            claims = clerk.require_verifier().verify(token)
            raw_user = clerk.require_api().get_user(claims.user_id)
    except InvalidSessionToken as exc:
        metrics.token_rejected(exc.code)
        raise ApiError(401, exc.code, exc.message, headers={"WWW-Authenticate": "Bearer"}) from None
    except ClerkUserNotFound:
        raise ApiError(404, "user_not_found", "Clerk has no such user.") from None
    except ClerkUnavailable as exc:
        raise clerk_unavailable(exc) from None
    except ClerkAPIError:
        # Clerk refused us (a wrong secret key, say): the server's fault, not the caller's.
        log.error("Clerk refused the request; check CLERK_SECRET_KEY and CLERK_API_URL")
        raise ApiError(502, "clerk_error", "Clerk refused the server's request.") from None

    try:
        user = parse_clerk_user(raw_user)
    except InvalidClerkUser as exc:
        log.warning("Clerk's user for after-login is unusable: %s", exc)
        raise ApiError(
            503, "clerk_bad_response", "Clerk answered with something that is not a user."
        ) from None
    if user.id != claims.user_id:
        raise ApiError(503, "clerk_bad_response", "Clerk answered with another user.")

    try:
        result = sync_user_with_database(user, get_db())
    except DATABASE_ERRORS as exc:
        failure = classify(exc)
        metrics.database_failure(exc)
        if not failure.retryable:
            # Clerk's data that the database won't take: a retry can't help, and it isn't the caller's fault.
            log.error("after-login for %s refused by the database: %s", user.id[:128], failure.code)
            raise ApiError(500, "database_error", "The database refused this user's data.") from None
        log.warning("after-login not stored: %s, %s %s", type(exc).__name__, failure.verdict, failure.code)
        raise ApiError(503, "database_unavailable", "The database is not available; try again.") from None
    metrics.user_synced("after_login", result.outcome)
    if result.user.deletedAt is not None:
        raise ApiError(410, "user_deleted", "This user was deleted.")
    return jsonify(user_json(result.user)), 200, {"X-Clerk-Sync-Outcome": result.outcome.value}


def clerk_unavailable(exc: ClerkUnavailable) -> ApiError:
    headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if exc.retry_after else None
    return ApiError(503, "clerk_unavailable", "Clerk is not available; try again.", headers=headers)


def user_json(user: User) -> dict[str, Any]:
    """The stored row as the frontend sees it; the internal `id` stays internal."""

    def iso(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "clerkId": user.clerkId,
        "email": user.email,
        "firstName": user.firstName,
        "lastName": user.lastName,
        "username": user.username,
        "imageUrl": user.imageUrl,
        "clerkUpdatedAt": iso(user.clerkUpdatedAt),
        "deletedAt": iso(user.deletedAt),
        "createdAt": iso(user.createdAt),
        "updatedAt": iso(user.updatedAt),
    }
