"""Which database failures are worth a retry: by Prisma and PostgreSQL error code, not by class.

Prisma raises `DataError` both for "too many connections" and for a value the
database will never accept, so the exception's class says little. The codes do:

- transient (answer 503, the sender retries): the database or engine unreachable,
  connections lost or exhausted, timeouts (statement, lock, pool, transaction),
  serialization failures and deadlocks;
- rejected (permanent for this input; a retry fails the same way): data exceptions
  (SQLSTATE class 22), integrity violations (23), program limits such as an index
  row too large (54), and Prisma's codes for values the column can't hold;
- anything else is unclassified and treated as transient: a failure that can't be
  shown to be permanent is retried, because a retried event costs less than a lost one.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

import httpx
from prisma import errors as prisma_errors
from prisma.engine import errors as engine_errors


class Verdict(enum.StrEnum):
    TRANSIENT = "transient"
    REJECTED = "rejected"
    UNCLASSIFIED = "unclassified"


@dataclass(frozen=True, slots=True)
class DatabaseFailure:
    verdict: Verdict
    code: str
    """The SQLSTATE if known, else Prisma's error code, else the exception's class name."""

    @property
    def retryable(self) -> bool:
        return self.verdict is not Verdict.REJECTED


# Prisma: can't reach / timed out / closed (P1001, P1002, P1008, P1017), pool timeout (P2024),
# transaction API (P2028: couldn't start in time, expired), write conflict or deadlock (P2034),
# a driver-adapter error, i.e. the network (P2036), too many connections (P2037).
_TRANSIENT_PRISMA = frozenset(
    {"P1001", "P1002", "P1008", "P1011", "P1017", "P2024", "P2028", "P2034", "P2036", "P2037"}
)
# Prisma: value too long, unique/foreign-key/constraint violations, invalid or out-of-range values.
_REJECTED_PRISMA = frozenset(
    {"P2000", "P2002", "P2003", "P2004", "P2005", "P2006", "P2007", "P2011", "P2020", "P2023"}
)
# SQLSTATE classes: connection (08), transaction rollback: serialization, deadlock (40),
# insufficient resources: too many connections (53), operator intervention: statement
# timeout, shutdown (57), system error (58); and lock_timeout, idle-in-transaction timeout.
_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
_TRANSIENT_SQLSTATES = frozenset({"55P03", "25P03"})
_REJECTED_SQLSTATE_CLASSES = frozenset({"22", "23", "54"})

# Without a structured code, the engine's message carries PostgreSQL's: `PostgresError { code: "54000"`.
_SQLSTATE_IN_MESSAGE = re.compile(r'PostgresError \{ code: \\?"([0-9A-Z]{5})\\?"')
_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    httpx.TransportError,  # the engine is unreachable or answered too late
    engine_errors.EngineError,  # not connected, failed to start, or a non-2xx answer
    prisma_errors.ClientNotConnectedError,
    prisma_errors.HTTPClientClosedError,
    prisma_errors.TransactionError,
)


def classify(exc: BaseException) -> DatabaseFailure:
    """What `exc`, raised by the Prisma client, means for the request that met it."""
    if isinstance(exc, prisma_errors.DataError):
        return _classify_codes(_prisma_code(exc), _sqlstate(exc))
    if isinstance(exc, _TRANSIENT_TYPES):
        return DatabaseFailure(Verdict.TRANSIENT, type(exc).__name__)
    return DatabaseFailure(Verdict.UNCLASSIFIED, type(exc).__name__)


def _classify_codes(prisma_code: str | None, sqlstate: str | None) -> DatabaseFailure:
    if sqlstate is not None:
        if sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES or sqlstate in _TRANSIENT_SQLSTATES:
            return DatabaseFailure(Verdict.TRANSIENT, sqlstate)
        if sqlstate[:2] in _REJECTED_SQLSTATE_CLASSES:
            return DatabaseFailure(Verdict.REJECTED, sqlstate)
    if prisma_code in _TRANSIENT_PRISMA:
        return DatabaseFailure(Verdict.TRANSIENT, prisma_code)
    if prisma_code in _REJECTED_PRISMA:
        return DatabaseFailure(Verdict.REJECTED, prisma_code)
    return DatabaseFailure(Verdict.UNCLASSIFIED, sqlstate or prisma_code or "no code")


def _prisma_code(exc: prisma_errors.DataError) -> str | None:
    code = exc.code
    return code if isinstance(code, str) else None


def _sqlstate(exc: prisma_errors.DataError) -> str | None:
    meta = exc.meta if isinstance(exc.meta, dict) else {}
    code = meta.get("code")
    if isinstance(code, str) and re.fullmatch(r"[0-9A-Z]{5}", code):
        return code
    data = exc.data if isinstance(exc.data, dict) else {}
    match = _SQLSTATE_IN_MESSAGE.search(str(data.get("error", "")))
    return match.group(1) if match else None
