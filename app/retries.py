"""Retrying what may succeed later: Clerk's 429/5xx/unreachable and an unavailable database.

Shared by every operator command, so backfill, reconcile and sync-user honour
Clerk's rate limit (its `Retry-After` included) the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from .clerk.api import ClerkAPIError, ClerkUnavailable
from .db import DATABASE_ERRORS
from .db_errors import classify
from .progress import warn

T = TypeVar("T")

# Retried when `may_succeed_later` says so; the rest propagate at once.
RETRIABLE_ERRORS: tuple[type[BaseException], ...] = (ClerkUnavailable, *DATABASE_ERRORS)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to retry a transient failure (Clerk or the database)."""

    max_retries: int = 5
    base_delay: float = 0.5
    max_wait: float = 60.0

    def wait_before(self, retry: int, exc: BaseException) -> float:
        """Seconds before retry number `retry` (from 1): Clerk's Retry-After if it sent one,
        else exponential backoff; either capped by `max_wait` so a bogus header can't stall us."""
        retry_after = exc.retry_after if isinstance(exc, ClerkUnavailable) else None
        if retry_after is not None:
            return min(retry_after, self.max_wait)
        return min(self.base_delay * 2 ** (retry - 1), self.max_wait)


def call_with_retries(action: Callable[[], T], policy: RetryPolicy, what: str) -> T:
    """Run `action`, retrying transient errors; the last one propagates once retries run out."""
    retry = 0
    while True:
        try:
            return action()
        except RETRIABLE_ERRORS as exc:
            if retry >= policy.max_retries or not may_succeed_later(exc):
                raise
            retry += 1
            wait = policy.wait_before(retry, exc)
            hint = " (Retry-After)" if isinstance(exc, ClerkUnavailable) and exc.retry_after else ""
            warn(f"{what}: {describe_error(exc)}; retry {retry}/{policy.max_retries} in {wait:.2f}s{hint}")
            time.sleep(wait)


def may_succeed_later(exc: BaseException) -> bool:
    """Clerk's transient failures, and database failures not shown to be permanent for this input
    (a constraint or a value the column can't hold fails the same way on every retry)."""
    return isinstance(exc, ClerkUnavailable) or classify(exc).retryable


def describe_error(exc: BaseException) -> str:
    """A printable reason. ClerkAPI's messages are built by us and safe; the database's are not."""
    if isinstance(exc, ClerkAPIError):
        return str(exc)
    failure = classify(exc)
    if not failure.retryable:
        return f"database refused the data ({failure.code})"
    return f"database unavailable ({type(exc).__name__})"
