from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.clerk.users import ClerkUser, InvalidClerkUser, parse_clerk_user, parse_deleted_user_id
from tests.fakeclerk import build_clerk_user


def test_parses_the_fields_clerk_sync_stores() -> None:
    data = build_clerk_user(
        "user_2abc",
        email="ada@example.com",
        first_name="Ada",
        last_name="Lovelace",
        username="ada",
        image_url="https://img.clerk.com/ada",
        updated_at=1_700_000_000_123,
    )

    assert parse_clerk_user(data) == ClerkUser(
        id="user_2abc",
        email="ada@example.com",
        first_name="Ada",
        last_name="Lovelace",
        username="ada",
        image_url="https://img.clerk.com/ada",
        updated_at=1_700_000_000_123,
    )


def test_primary_email_is_chosen_by_id_not_position() -> None:
    data = build_clerk_user(email="primary@example.com", other_emails=["old@example.com", "work@example.com"])
    assert data["email_addresses"][0]["email_address"] == "old@example.com"

    assert parse_clerk_user(data).email == "primary@example.com"


def test_no_email_addresses_means_no_email() -> None:
    data = build_clerk_user(email=None)
    assert data["email_addresses"] == []

    assert parse_clerk_user(data).email is None


def test_missing_primary_email_id_means_no_email() -> None:
    data = build_clerk_user(other_emails=["a@example.com"], primary_email_address_id=None)
    assert parse_clerk_user(data).email is None

    del data["primary_email_address_id"]
    assert parse_clerk_user(data).email is None


def test_primary_email_id_matching_no_address_means_no_email() -> None:
    data = build_clerk_user(primary_email_address_id="idn_gone")
    assert parse_clerk_user(data).email is None


def test_unknown_fields_are_ignored() -> None:
    data = build_clerk_user("user_1", future_field={"nested": [1, 2]}, another=None)
    assert parse_clerk_user(data).id == "user_1"


def test_missing_optional_fields_become_none_and_version_zero() -> None:
    user = parse_clerk_user({"id": "user_1"})

    assert user == ClerkUser(
        id="user_1",
        email=None,
        first_name=None,
        last_name=None,
        username=None,
        image_url=None,
        updated_at=0,
    )


def test_updated_at_datetime_is_aware_utc_with_milliseconds() -> None:
    user = parse_clerk_user(build_clerk_user(updated_at=1_700_000_000_123))

    assert user.updated_at_datetime == datetime(2023, 11, 14, 22, 13, 20, 123_000, tzinfo=UTC)
    assert user.updated_at_datetime.utcoffset() is not None


def test_clerk_user_is_immutable() -> None:
    user = parse_clerk_user({"id": "user_1"})
    with pytest.raises(AttributeError):
        user.email = "x@example.com"  # type: ignore[misc]


@pytest.mark.parametrize("data", [None, "user_1", 42, ["user_1"], b"{}"])
def test_rejects_non_objects(data: object) -> None:
    with pytest.raises(InvalidClerkUser, match="JSON object"):
        parse_clerk_user(data)


@pytest.mark.parametrize(
    "overrides",
    [
        {"id": None},
        {"id": ""},
        {"id": 123},
        {"id": ["user_1"]},
    ],
)
def test_rejects_missing_or_non_string_id(overrides: dict[str, object]) -> None:
    with pytest.raises(InvalidClerkUser, match="'id'"):
        parse_clerk_user(build_clerk_user(**overrides))


def test_rejects_absent_id() -> None:
    data = build_clerk_user()
    del data["id"]
    with pytest.raises(InvalidClerkUser, match="'id'"):
        parse_clerk_user(data)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"first_name": 7}, "first_name"),
        ({"last_name": ["Lovelace"]}, "last_name"),
        ({"username": False}, "username"),
        ({"image_url": {"url": "x"}}, "image_url"),
        ({"primary_email_address_id": 1}, "primary_email_address_id"),
        ({"email_addresses": "ada@example.com"}, "email_addresses"),
        ({"email_addresses": {"id": "idn_1"}}, "email_addresses"),
        ({"email_addresses": ["ada@example.com"]}, "email_addresses"),
        ({"updated_at": "1700000000000"}, "updated_at"),
        ({"updated_at": 1.7e12}, "updated_at"),
        ({"updated_at": True}, "updated_at"),
        ({"updated_at": -1}, "updated_at"),
        ({"updated_at": 10**20}, "updated_at"),
        ({"object": "email_address"}, "user"),
    ],
)
def test_rejects_wrongly_typed_fields(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidClerkUser, match=field):
        parse_clerk_user(build_clerk_user(**overrides))


def test_rejects_primary_email_without_an_address_string() -> None:
    data = build_clerk_user()
    data["email_addresses"][0]["email_address"] = None
    with pytest.raises(InvalidClerkUser, match="primary email"):
        parse_clerk_user(data)


def test_invalid_clerk_user_is_a_value_error() -> None:
    assert issubclass(InvalidClerkUser, ValueError)


def test_parse_deleted_user_id() -> None:
    assert parse_deleted_user_id({"deleted": True, "id": "user_1", "object": "user"}) == "user_1"


@pytest.mark.parametrize("data", [None, [], {"deleted": True}, {"id": 1}, {"id": ""}])
def test_parse_deleted_user_id_rejects_payloads_without_an_id(data: object) -> None:
    with pytest.raises(InvalidClerkUser):
        parse_deleted_user_id(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
# Mostly the keys the parser reads, so the interesting branches are reached, not just "not a dict".
user_like = st.dictionaries(
    st.sampled_from(
        [
            "id",
            "object",
            "email_addresses",
            "primary_email_address_id",
            "first_name",
            "last_name",
            "username",
            "image_url",
            "updated_at",
        ]
    )
    | st.text(max_size=8),
    json_values,
    max_size=10,
)
email_entries = st.lists(
    st.fixed_dictionaries(
        {"id": st.sampled_from(["idn_1", "idn_2"])}, optional={"email_address": json_values}
    ),
    max_size=3,
)


@given(data=json_values | user_like | user_like.map(lambda d: {**d, "id": "user_1"}))
def test_parse_clerk_user_returns_a_user_or_raises_invalid_clerk_user(data: object) -> None:
    _assert_parses_or_rejects(data)


@given(entries=email_entries, primary=st.sampled_from(["idn_1", "idn_2", None]), updated_at=json_values)
def test_parse_clerk_user_handles_arbitrary_email_lists(
    entries: list[dict[str, object]], primary: str | None, updated_at: object
) -> None:
    data = {
        "id": "user_1",
        "email_addresses": entries,
        "primary_email_address_id": primary,
        "updated_at": updated_at,
    }
    _assert_parses_or_rejects(data)


def _assert_parses_or_rejects(data: object) -> None:
    try:
        user = parse_clerk_user(data)
    except InvalidClerkUser:
        return
    assert isinstance(user.id, str) and user.id
    assert user.email is None or isinstance(user.email, str)
    assert isinstance(user.updated_at, int) and not isinstance(user.updated_at, bool)
    assert user.updated_at_datetime.tzinfo is UTC
