"""Parse Clerk user objects into the small snapshot that clerk-sync mirrors.

The Backend API (`GET /v1/users/{id}`) and the `user.created` / `user.updated`
webhooks carry the same user object, so one parser serves both. Parsing is
strict about the fields we store and indifferent to everything else: Clerk adds
fields over time, and an unknown field must never break the sync.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "MAX_LENGTHS",
    "ClerkUser",
    "InvalidClerkUser",
    "clip",
    "is_plausible_user_id",
    "parse_clerk_user",
    "parse_deleted_user_id",
    "require_storable",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The last millisecond a datetime can hold; a larger "timestamp" is garbage, not a date.
_MAX_UPDATED_AT = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // timedelta(milliseconds=1)


# The longest value Clerk can send for each field we store or key on, with headroom.
# Clerk ids are a prefix and 27 base62 characters; an email address is at most 320
# characters (RFC 3696); usernames at most 64; image URLs are Clerk CDN links of a few
# hundred. Longer means the data is not Clerk's, and storing it could exceed
# PostgreSQL's btree index row size (about 2.7 KB), a permanent failure.
MAX_LENGTHS: Mapping[str, int] = {
    "id": 64,
    "email_address": 320,
    "first_name": 256,
    "last_name": 256,
    "username": 256,
    "image_url": 2048,
    "svix-id": 128,
    "type": 128,
}
_USER_ID = re.compile(r"user_[0-9A-Za-z_]+")


def is_plausible_user_id(value: object) -> bool:
    """Whether `value` could be a Clerk user id: `user_` and base62, within the id length bound.

    Ids end up in Backend API paths, so anything else ("." or "..", which survive
    URL quoting as dot-segments) must be refused before any request is made.
    """
    return isinstance(value, str) and len(value) <= MAX_LENGTHS["id"] and bool(_USER_ID.fullmatch(value))


class InvalidClerkUser(ValueError):
    """The data is not a Clerk user object we can trust enough to store."""


@dataclass(frozen=True, slots=True)
class ClerkUser:
    id: str
    email: str | None
    first_name: str | None
    last_name: str | None
    username: str | None
    image_url: str | None
    updated_at: int
    """Clerk's `updated_at`, in milliseconds since the epoch; the row's version."""

    @property
    def updated_at_datetime(self) -> datetime:
        """`updated_at` as an aware UTC datetime, keeping the millisecond precision."""
        return _EPOCH + timedelta(milliseconds=self.updated_at)


def parse_clerk_user(data: object) -> ClerkUser:
    """Build a `ClerkUser` from a Clerk user object, or raise `InvalidClerkUser`.

    Missing (or null) optional fields become None. A missing or null `updated_at`
    becomes 0: Clerk always sends it, and version 0 means an object without a
    version can never overwrite a row that has one. A *present* `updated_at` that
    is not an integer in datetime's range (and not negative) is rejected, because guessing a version would
    let stale data win.

    The email is the address whose `id` is `primary_email_address_id`, never
    simply the first one: Clerk does not keep the primary address first.
    """
    user = _require_object(data, "user")
    kind = user.get("object")
    if kind is not None and kind != "user":
        raise InvalidClerkUser(f"expected a Clerk object of type 'user', got {clip(repr(kind))}")
    return ClerkUser(
        id=_require_id(user),
        email=_primary_email(user),
        first_name=_optional_str(user, "first_name"),
        last_name=_optional_str(user, "last_name"),
        username=_optional_str(user, "username"),
        image_url=_optional_str(user, "image_url"),
        updated_at=_version(user),
    )


def parse_deleted_user_id(data: object) -> str:
    """The user id from a `user.deleted` webhook's `data`.

    Clerk sends only `{"deleted": true, "id": "user_...", "object": "user"}` there,
    so this is all a deletion can be keyed on.
    """
    return _require_id(_require_object(data, "deleted user"))


def _require_object(data: object, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise InvalidClerkUser(f"a Clerk {what} must be a JSON object, got {type(data).__name__}")
    return data


def _require_id(user: Mapping[str, Any]) -> str:
    user_id = user.get("id")
    if not isinstance(user_id, str) or not user_id:
        raise InvalidClerkUser(f"a Clerk user needs a non-empty string 'id', got {type(user_id).__name__}")
    return require_storable(user_id, "id")


def _optional_str(data: Mapping[str, Any], field: str) -> str | None:
    value = data.get(field)
    if value is not None and not isinstance(value, str):
        raise InvalidClerkUser(f"'{field}' must be a string or null, got {type(value).__name__}")
    return value if value is None else require_storable(value, field)


def require_storable(value: str, field: str) -> str:
    """`value`, if PostgreSQL can store it as text: no NUL character, valid UTF-8 (no lone
    surrogates), and no longer than Clerk sends for `field` (see `MAX_LENGTHS`).

    JSON allows all three, and each would fail the write itself, too late to answer
    anything but an error the sender would retry forever.
    """
    limit = MAX_LENGTHS.get(field)
    if limit is not None and len(value) > limit:
        raise InvalidClerkUser(f"'{field}' is {len(value)} characters long, over the {limit} Clerk sends")
    if "\x00" in value:
        raise InvalidClerkUser(f"'{field}' contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidClerkUser(f"'{field}' is not valid Unicode text") from None
    return value


def _version(user: Mapping[str, Any]) -> int:
    updated_at = user.get("updated_at")
    if updated_at is None:
        return 0
    # bool is an int subclass; `true` is not a timestamp.
    if isinstance(updated_at, bool) or not isinstance(updated_at, int):
        raise InvalidClerkUser(
            f"'updated_at' must be an integer of milliseconds, got {type(updated_at).__name__}"
        )
    if not 0 <= updated_at <= _MAX_UPDATED_AT:
        raise InvalidClerkUser("'updated_at' is out of range")
    return updated_at


def _primary_email(user: Mapping[str, Any]) -> str | None:
    primary_id = _optional_str(user, "primary_email_address_id")
    addresses = user.get("email_addresses")
    if addresses is None:
        addresses = []
    if not isinstance(addresses, list):
        raise InvalidClerkUser(f"'email_addresses' must be a list, got {type(addresses).__name__}")

    for address in addresses:
        if not isinstance(address, Mapping):
            raise InvalidClerkUser(
                f"each of 'email_addresses' must be an object, got {type(address).__name__}"
            )
        if primary_id is not None and address.get("id") == primary_id:
            email = address.get("email_address")
            if not isinstance(email, str):
                raise InvalidClerkUser("the primary email address has no string 'email_address'")
            return require_storable(email, "email_address")
    return None


def clip(value: object, limit: int = 64) -> str:
    """`value` (a string as is, anything else as its repr), cut to about `limit` characters,
    for messages that quote untrusted data.

    Unbounded quotes made log lines of 250 KB; the length is kept so the cut is visible.
    """
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} chars)"
