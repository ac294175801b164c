"""`POST /webhooks/clerk`: Clerk's user events, delivered by Svix.

Svix delivers at least once and in no particular order. So each message is
verified over the raw body, applied through the same sync rules as after-login
(newest snapshot wins, tombstones are final), and its `svix-id` is recorded in
the same transaction: a redelivery runs into that record's primary key and rolls
back, changing nothing, and a failure leaves neither the effect nor the record,
so the retry applies it whole.

Answers: 2xx once applied (or known, or ignored); 400 when the delivery can't be
trusted or used, because retrying won't help; 413 when too large; 503 when the
database fails, so that Svix retries.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from prisma import Prisma
from prisma.errors import RawQueryError, UniqueViolationError
from prisma.types import WebhookDeliveryCreateInput
from svix.webhooks import Webhook, WebhookVerificationError

from .. import metrics
from ..batch import ResultBatch
from ..clerk.users import (
    ClerkUser,
    InvalidClerkUser,
    clip,
    parse_clerk_user,
    parse_deleted_user_id,
    require_storable,
)
from ..config import Settings
from ..db import DATABASE_ERRORS, get_db
from ..db_errors import classify
from ..errors import ApiError
from ..sync import (
    DELETION_OUTCOME_SQL,
    SNAPSHOT_OUTCOME_SQL,
    GuardRefused,
    UserWrite,
    deletion_write,
    lock_user,
    refused_by_guard,
    snapshot_write,
    transaction,
    upsert_user,
)

log = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__)

SNAPSHOT_EVENTS = frozenset({"user.created", "user.updated"})
DELETE_EVENT = "user.deleted"
IGNORED = "ignored"


@bp.post("/webhooks/clerk")
def clerk_webhook() -> ResponseReturnValue:
    settings: Settings = current_app.config["SETTINGS"]
    webhook = _webhook(settings)
    body = _read_body(settings.webhook_max_bytes)
    msg_id = request.headers.get("svix-id", "")
    headers = {name: request.headers.get(name, "") for name in _SVIX_HEADERS}
    try:
        # Svix signs text: a body that is not UTF-8 is no Svix delivery, whoever signed it.
        body.decode("utf-8")
    except UnicodeDecodeError:
        raise _unusable(msg_id, "the body is not UTF-8") from None
    try:
        webhook.verify(body, headers)
    except (WebhookVerificationError, ValueError) as exc:
        # svix raises plain ValueError (and binascii.Error) for some malformed headers.
        log.warning(
            "webhook %s rejected: signature not verified (%s)",
            clip(msg_id, 128),
            _why_unverified(exc, headers),
        )
        raise ApiError(400, "invalid_signature", "The webhook signature could not be verified.") from None

    event_type, plan = _parse_event(body, msg_id)
    try:
        status, outcome = _process(get_db(), msg_id, event_type, plan)
    except DATABASE_ERRORS as exc:
        # Type and code only: database errors can echo connection details; the traceback goes to debug.
        failure = classify(exc)
        metrics.database_failure(exc)
        log.debug("webhook %s not applied", clip(msg_id, 128), exc_info=True)
        if not failure.retryable:
            log.warning(
                "webhook %s (%s) refused by the database: %s", clip(msg_id, 128), event_type, failure.code
            )
            raise ApiError(
                400, "invalid_payload", f"The database refuses this payload (code {failure.code})."
            ) from None
        log.warning(
            "webhook %s (%s) not applied: %s, %s %s",
            clip(msg_id, 128),
            event_type,
            type(exc).__name__,
            failure.verdict,
            failure.code,
        )
        raise ApiError(503, "database_unavailable", "The database is not available; retry later.") from None
    metrics.webhook_applied(event_type, status, outcome)
    # "duplicate, created": a redelivery, answered with what its first delivery did; nothing written.
    log.info("webhook %s %s: %s, %s", clip(msg_id, 128), event_type, status, outcome)
    return jsonify(status=status, type=event_type, outcome=outcome), 200


_SVIX_HEADERS = ("svix-id", "svix-timestamp", "svix-signature")


def _webhook(settings: Settings) -> Webhook:
    if not settings.clerk_webhook_signing_secret:
        raise ApiError(503, "not_configured", "CLERK_WEBHOOK_SIGNING_SECRET is not set on the server.")
    try:
        return Webhook(settings.clerk_webhook_signing_secret)
    except Exception:  # noqa: BLE001 - svix raises several types for a malformed secret; never echo it
        log.error("CLERK_WEBHOOK_SIGNING_SECRET is not a valid Svix secret (whsec_...)")
        raise ApiError(503, "not_configured", "The webhook signing secret is misconfigured.") from None


def _read_body(limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "payload_too_large", f"Webhook bodies are limited to {limit} bytes.")
    body = request.stream.read(limit + 1)  # chunked bodies have no Content-Length to check first
    if len(body) > limit:
        raise ApiError(413, "payload_too_large", f"Webhook bodies are limited to {limit} bytes.")
    return body


def _why_unverified(exc: Exception, headers: dict[str, str]) -> str:
    """Why verification failed, in words an operator can act on; never a secret or a signature."""
    if not isinstance(exc, WebhookVerificationError):
        return "malformed svix-signature header"
    reason = str(exc)[:64]  # svix's own fixed messages
    if "timestamp too" in reason:
        try:
            skew = time.time() - float(headers["svix-timestamp"])
        except ValueError:
            return reason
        minutes = abs(skew) / 60
        side = "past" if skew > 0 else "future"
        return f"timestamp {minutes:.0f} min in the {side}; Svix allows 5 (is this server's clock right?)"
    if reason == "No matching signature found":
        return "no signature matches CLERK_WEBHOOK_SIGNING_SECRET (was the secret rolled?)"
    return reason


def _unusable(msg_id: str, reason: str) -> ApiError:
    log.warning("webhook %s rejected: %s", clip(msg_id, 128), reason)
    return ApiError(400, "invalid_payload", f"The webhook payload is unusable: {reason}.")


def _parse_event(body: bytes, msg_id: str) -> tuple[str, UserWrite | None]:
    """The event type and its write (None: ignored); parsed before any transaction opens."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        raise _unusable(msg_id, "not JSON") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("type"), str) or not payload["type"]:
        raise _unusable(msg_id, "no event type")
    # Everything quoted from here on is bounded by require_storable, so no log line can grow with the input.
    event_type: str = payload["type"]
    data = payload.get("data")
    try:
        require_storable(msg_id, "svix-id")
        require_storable(event_type, "type")
        if event_type in SNAPSHOT_EVENTS:
            user: ClerkUser = parse_clerk_user(data)
            return event_type, snapshot_write(user)
        if event_type == DELETE_EVENT:
            clerk_id = parse_deleted_user_id(data)
            at = _event_time(payload)
            return event_type, deletion_write(clerk_id, at=at)
    except InvalidClerkUser as exc:
        raise _unusable(msg_id, str(exc)) from None
    return event_type, None


def _event_time(payload: dict[str, Any]) -> datetime | None:
    # Clerk's event `timestamp` (ms) makes the tombstone's deletedAt the same whichever delivery lands.
    stamp = payload.get("timestamp")
    if isinstance(stamp, int) and not isinstance(stamp, bool) and 0 < stamp < 253402300800000:
        return datetime.fromtimestamp(stamp / 1000, tz=UTC)
    return None


def _process(db: Prisma, msg_id: str, event_type: str, write: UserWrite | None) -> tuple[str, str]:
    """Apply once: returns ("processed", outcome) or ("duplicate", outcome of the first delivery).

    A new event costs one engine round trip: the batch [user lock, delivery
    record, upsert] (`_record_and_write`). A redelivery runs into the record's
    primary key and the whole batch rolls back. An event the stored row makes
    stale (or a tombstone refuses) is refused by the record's judgement, rolls
    back, and is then recorded as such under the lock, writing nothing.

    A redelivery of an applied event is refused by the judgement too (PostgreSQL
    checks NOT NULL before the primary key), so a refusal looks for the record
    first: a duplicate then costs two round trips, not a transaction.
    """
    try:
        if write is None:
            db.webhookdelivery.create(data=_delivery(msg_id, event_type, None, IGNORED))
            return "processed", IGNORED
        try:
            return "processed", _record_and_write(db, msg_id, event_type, write)
        except GuardRefused:
            seen = db.webhookdelivery.find_unique(where={"svixId": msg_id})
            if seen is not None:
                return "duplicate", seen.outcome
            with transaction(db) as tx:
                decided = write.plan(tx)
                outcome = decided.outcome.value
                with tx.batch_() as batch:
                    decided.write(batch)
                    record = _delivery(msg_id, event_type, decided.clerk_id, outcome)
                    batch.webhookdelivery.create(data=record)
                return "processed", outcome
    except (UniqueViolationError, RawQueryError) as exc:
        if not _redelivered(exc):
            raise
        # Delivered before (or twice at once, and the other copy committed first).
        seen = db.webhookdelivery.find_unique(where={"svixId": msg_id})
        return "duplicate", seen.outcome if seen is not None else IGNORED


# The delivery record is written by raw SQL because its outcome depends on the user row
# as it stands under the lock: one statement judges the row (the sync rules, in SQL) and
# records the label, in the same round trip as the write; Prisma's `create` would need the
# label up front. When the event must not be written, the label is NULL, which the NOT NULL
# `outcome` column refuses (23502): the batch rolls back before its upsert runs. So the
# upsert needs no guard of its own and is keyed on `clerkId` alone, which Prisma runs as
# one native `INSERT ... ON CONFLICT` instead of a read, a write and a read-back.
_RECORD_SELECT = (
    'INSERT INTO "WebhookDelivery" ("svixId", "eventType", "clerkUserId", "outcome") SELECT $1, $2, $3, '
)
_RECORD_FROM = ' FROM (SELECT 1) AS one LEFT JOIN "User" AS u ON u."clerkId" = $3 RETURNING "outcome"'
RECORD_SNAPSHOT_SQL = _RECORD_SELECT + SNAPSHOT_OUTCOME_SQL + _RECORD_FROM
RECORD_DELETION_SQL = _RECORD_SELECT + DELETION_OUTCOME_SQL + _RECORD_FROM
_NOT_NULL_VIOLATION = "23502"
_UNIQUE_VIOLATION = "23505"


def _record_and_write(db: Prisma, msg_id: str, event_type: str, write: UserWrite) -> str:
    """One round trip: lock the user, record the delivery with its judged outcome, upsert.

    Raises `GuardRefused` when the judgement refused the write (nothing was written).
    """
    batch = ResultBatch(db)
    lock_user(batch, write.clerk_id)
    if write.kind == "snapshot":
        batch.query_raw(RECORD_SNAPSHOT_SQL, msg_id, event_type, write.clerk_id, write.version)
    else:
        batch.query_raw(RECORD_DELETION_SQL, msg_id, event_type, write.clerk_id)
    upsert_user(batch, write.clerk_id, write.fields)
    try:
        _, recorded, _ = batch.commit_with_results()
    except RawQueryError as exc:
        meta = exc.meta if isinstance(exc.meta, dict) else {}
        if meta.get("code") == _NOT_NULL_VIOLATION:
            raise GuardRefused from None
        raise
    return str(recorded["rows"][0][0])


def _redelivered(exc: UniqueViolationError | RawQueryError) -> bool:
    """Whether an error is the delivery record's primary key refusing a known svix-id.

    The raw INSERT's violation comes back as SQLSTATE 23505 (it writes no other unique
    column); Prisma's own create reports the field.
    """
    meta = exc.meta if isinstance(exc.meta, dict) else {}
    if isinstance(exc, RawQueryError):
        return meta.get("code") == _UNIQUE_VIOLATION
    return not refused_by_guard(exc)


def _delivery(msg_id: str, event_type: str, clerk_id: str | None, outcome: str) -> WebhookDeliveryCreateInput:
    return {"svixId": msg_id, "eventType": event_type, "clerkUserId": clerk_id, "outcome": outcome}
