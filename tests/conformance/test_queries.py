"""Reads and writes through the generated client: every action, filter and field type."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

UTC = dt.UTC
BIG = 9_223_372_036_854_775_807  # past 2**53: lost by anything that goes through a float


def make_author(db: Any, email: str = "ada@example.com", **data: Any) -> Any:
    return db.author.create(data={"email": email, **data})


def test_every_scalar_type_round_trips(db: Any, client_module: Any) -> None:
    fields = client_module.fields
    birthday = dt.datetime(1815, 12, 10, 8, 30, 15, 123000, tzinfo=UTC)
    created = db.author.create(
        data={
            "email": "ada@example.com",
            "name": 'Ada "Countess" Lovelace\n\\ünïcødé 🚀',
            "role": client_module.enums.Role.ADMIN,
            "roles": [client_module.enums.Role.USER, client_module.enums.Role.OWNER],
            "tags": ["math", "engines", ""],
            "scores": [1, -2, 2_147_483_647],
            "active": False,
            "rating": 4.75,
            "balance": Decimal("12345678901234567890.123456789"),
            "views": BIG,
            "avatar": fields.Base64.encode(b"\x00\xffbinary"),
            "settings": fields.Json({"theme": "dark", "nested": [1, 2.5, None, {"k": "v"}]}),
            "birthday": birthday,
        }
    )
    found = db.author.find_unique(where={"id": created.id})
    assert found == created
    assert found.name == 'Ada "Countess" Lovelace\n\\ünïcødé 🚀'
    assert found.role == "ADMIN"
    assert found.roles == ["USER", "OWNER"]
    assert found.tags == ["math", "engines", ""]
    assert found.scores == [1, -2, 2_147_483_647]
    assert found.active is False
    assert found.rating == 4.75
    assert found.balance == Decimal("12345678901234567890.123456789")
    assert found.views == BIG
    assert found.avatar.decode() == b"\x00\xffbinary"
    assert found.settings == {"theme": "dark", "nested": [1, 2.5, None, {"k": "v"}]}
    assert found.birthday == birthday
    assert found.createdAt.tzinfo is not None


def test_json_scalars_that_look_like_text(db: Any, client_module: Any) -> None:
    # A JSON string, a number and null must stay what they are, not become strings of JSON text.
    Json = client_module.fields.Json
    for i, value in enumerate(["plain text", '{"not": "an object"}', 42, None, [1, "2"]]):
        author = make_author(db, f"j{i}@example.com", settings=Json(value))
        assert db.author.find_unique(where={"id": author.id}).settings == value


def test_nested_create_and_include_every_relation_kind(db: Any) -> None:
    author = db.author.create(
        data={
            "email": "grace@example.com",
            "profile": {"create": {"bio": "Admiral"}},
            "posts": {
                "create": [
                    {"title": "COBOL", "categories": {"create": [{"name": "languages"}]}},
                    {"title": "Bugs", "likes": 3},
                ]
            },
        },
        include={"profile": True, "posts": {"include": {"categories": True}, "order_by": {"title": "asc"}}},
    )
    assert author.profile is not None and author.profile.bio == "Admiral"
    assert [p.title for p in author.posts] == ["Bugs", "COBOL"]
    assert [c.name for c in author.posts[1].categories] == ["languages"]
    assert author.posts[0].categories == []


def test_find_unique_by_compound_key_and_missing(db: Any, client_module: Any) -> None:
    author = make_author(db, posts={"create": [{"title": "one"}]})
    post = db.post.find_unique(where={"authorId_title": {"authorId": author.id, "title": "one"}})
    assert post is not None and post.title == "one"
    assert db.post.find_unique(where={"id": 999_999}) is None
    with pytest.raises(client_module.errors.RecordNotFoundError):
        db.post.find_unique_or_raise(where={"id": 999_999})
    with pytest.raises(client_module.errors.RecordNotFoundError):
        db.post.find_first_or_raise(where={"title": "nope"})


def test_filters_ordering_and_pagination(db: Any) -> None:
    base = dt.datetime(2024, 1, 1, tzinfo=UTC)
    for i in range(10):
        make_author(
            db,
            f"user{i}@Example.com",
            name=None if i == 9 else f"User {i}",
            rating=i / 2,
            views=BIG - i,
            balance=Decimal(i) / 4,
            birthday=base + dt.timedelta(days=i),
            tags=["even"] if i % 2 == 0 else ["odd", "x"],
            role="ADMIN" if i < 3 else "USER",
        )
    emails = lambda rows: [r.email for r in rows]  # noqa: E731

    assert len(db.author.find_many(where={"email": {"contains": "example", "mode": "insensitive"}})) == 10
    assert db.author.find_many(where={"email": {"contains": "example"}}) == []
    assert emails(db.author.find_many(where={"views": {"gt": BIG - 2}})) == [
        "user0@Example.com",
        "user1@Example.com",
    ]
    assert len(db.author.find_many(where={"balance": {"gte": Decimal("1.5")}})) == 4
    assert len(db.author.find_many(where={"birthday": {"lt": base + dt.timedelta(days=2)}})) == 2
    assert len(db.author.find_many(where={"name": None})) == 1
    assert len(db.author.find_many(where={"NOT": [{"name": None}]})) == 9
    assert len(db.author.find_many(where={"tags": {"has": "odd"}})) == 5
    assert len(db.author.find_many(where={"tags": {"has_some": ["x", "even"]}})) == 10
    assert len(db.author.find_many(where={"role": "ADMIN"})) == 3
    assert len(db.author.find_many(where={"role": {"in": ["ADMIN", "OWNER"]}})) == 3
    assert len(db.author.find_many(where={"OR": [{"rating": {"lt": 1}}, {"rating": {"gte": 4.5}}]})) == 3
    assert len(db.author.find_many(where={"AND": [{"rating": {"gte": 1}}, {"role": "ADMIN"}]})) == 1

    ordered = db.author.find_many(order=[{"role": "desc"}, {"rating": "desc"}], take=3, skip=1)
    assert emails(ordered) == ["user1@Example.com", "user0@Example.com", "user9@Example.com"]
    first = db.author.find_first(where={"role": "USER"}, order={"rating": "asc"})
    assert first.email == "user3@Example.com"
    cursor = db.author.find_many(cursor={"email": "user5@Example.com"}, take=2, order={"id": "asc"})
    assert emails(cursor) == ["user5@Example.com", "user6@Example.com"]
    distinct = db.author.find_many(distinct=["role"], order={"role": "asc"})
    assert [a.role for a in distinct] == ["USER", "ADMIN"]


def test_json_filters(db: Any, client_module: Any) -> None:
    Json = client_module.fields.Json
    make_author(db, "a@example.com", settings=Json({"theme": "dark", "size": 3}))
    make_author(db, "b@example.com", settings=Json({"theme": "light"}))
    match = db.author.find_many(where={"settings": {"equals": Json({"theme": "light"})}})
    assert [a.email for a in match] == ["b@example.com"]
    by_path = db.author.find_many(where={"settings": {"path": ["theme"], "equals": Json("dark")}})
    assert [a.email for a in by_path] == ["a@example.com"]


def test_relation_filters(db: Any) -> None:
    alice = make_author(db, "alice@example.com", profile={"create": {"bio": "likes graphs"}})
    bob = make_author(db, "bob@example.com")
    db.post.create(data={"title": "graphs", "published": True, "authorId": alice.id})
    db.post.create(data={"title": "draft", "authorId": alice.id})
    db.post.create(data={"title": "trees", "published": True, "authorId": bob.id})

    some = db.author.find_many(where={"posts": {"some": {"published": False}}})
    assert [a.email for a in some] == ["alice@example.com"]
    every = db.author.find_many(where={"posts": {"every": {"published": True}}})
    assert [a.email for a in every] == ["bob@example.com"]
    none = db.author.find_many(where={"posts": {"none": {"title": "trees"}}})
    assert [a.email for a in none] == ["alice@example.com"]
    with_profile = db.author.find_many(where={"profile": {"is": {"bio": {"contains": "graph"}}}})
    assert [a.email for a in with_profile] == ["alice@example.com"]
    without = db.author.find_many(where={"profile": {"is_not": {"bio": {"contains": "graph"}}}})
    assert [a.email for a in without] == ["bob@example.com"]
    by_author = db.post.find_many(where={"author": {"is": {"email": "bob@example.com"}}})
    assert [p.title for p in by_author] == ["trees"]
    included = db.author.find_unique(
        where={"id": alice.id},
        include={"posts": {"where": {"published": True}, "take": 1}},
    )
    assert [p.title for p in included.posts] == ["graphs"]


def test_update_operations_and_relations(db: Any) -> None:
    author = make_author(db, tags=["a"], views=10, rating=1.5, posts={"create": [{"title": "p"}]})
    updated = db.author.update(
        where={"id": author.id},
        data={
            "name": "Renamed",
            "tags": {"push": ["b", "c"]},
            "views": {"increment": 5},
            "rating": {"multiply": 2},
            "profile": {"create": {"bio": "new"}},
        },
        include={"profile": True},
    )
    assert updated.name == "Renamed"
    assert updated.tags == ["a", "b", "c"]
    assert updated.views == 15
    assert updated.rating == 3.0
    assert updated.profile.bio == "new"
    category = db.category.create(data={"name": "cat"})
    post = db.post.find_first(where={"authorId": author.id})
    linked = db.post.update(
        where={"id": post.id},
        data={"categories": {"connect": [{"id": category.id}]}, "likes": {"decrement": 1}},
        include={"categories": True},
    )
    assert [c.name for c in linked.categories] == ["cat"] and linked.likes == -1
    unlinked = db.post.update(
        where={"id": post.id},
        data={"categories": {"disconnect": [{"id": category.id}]}},
        include={"categories": True},
    )
    assert unlinked.categories == []
    assert db.author.update(where={"id": 999_999}, data={"name": "ghost"}) is None


def test_update_many_delete_and_delete_many(db: Any) -> None:
    for i in range(5):
        make_author(db, f"u{i}@example.com", role="USER")
    assert db.author.update_many(where={"email": {"startswith": "u"}}, data={"role": "OWNER"}) == 5
    assert db.author.count(where={"role": "OWNER"}) == 5
    deleted = db.author.delete(where={"email": "u0@example.com"})
    assert deleted.email == "u0@example.com"
    assert db.author.delete(where={"email": "u0@example.com"}) is None
    assert db.author.delete_many(where={"email": {"in": ["u1@example.com", "u2@example.com"]}}) == 2
    assert db.author.count() == 2


def test_create_many(db: Any) -> None:
    assert db.author.create_many(data=[{"email": "a@x.io"}, {"email": "b@x.io", "tags": ["t"]}]) == 2
    assert db.author.create_many(data=[{"email": "a@x.io"}, {"email": "c@x.io"}], skip_duplicates=True) == 1
    assert db.author.count() == 3


def test_upsert_creates_then_updates(db: Any) -> None:
    args = {"where": {"email": "up@example.com"}}
    created = db.author.upsert(
        **args, data={"create": {"email": "up@example.com", "name": "v1"}, "update": {"name": "v2"}}
    )
    assert created.name == "v1"
    updated = db.author.upsert(
        **args, data={"create": {"email": "up@example.com", "name": "v1"}, "update": {"name": "v2"}}
    )
    assert updated.name == "v2" and updated.id == created.id
    assert db.author.count() == 1


def test_count_and_group_by(db: Any) -> None:
    for i in range(6):
        make_author(
            db, f"g{i}@example.com", role="ADMIN" if i < 2 else "USER", rating=float(i), views=BIG // 4
        )
    assert db.author.count() == 6
    assert db.author.count(where={"role": "ADMIN"}) == 2
    assert db.author.count(select={"_all": True, "name": True}) == {"_all": 6, "name": 0}
    groups = db.author.group_by(
        ["role"],
        count=True,
        sum={"rating": True, "views": True},
        avg={"rating": True},
        min={"rating": True},
        max={"rating": True},
        order={"role": "asc"},
    )
    assert groups == [
        {
            "role": "USER",
            "_count": {"_all": 4},
            "_sum": {"rating": 14.0, "views": BIG // 4 * 4},
            "_avg": {"rating": 3.5},
            "_min": {"rating": 2.0},
            "_max": {"rating": 5.0},
        },
        {
            "role": "ADMIN",
            "_count": {"_all": 2},
            "_sum": {"rating": 1.0, "views": BIG // 4 * 2},
            "_avg": {"rating": 0.5},
            "_min": {"rating": 0.0},
            "_max": {"rating": 1.0},
        },
    ]
    having = db.author.group_by(["role"], count=True, having={"rating": {"_avg": {"gt": 1}}})
    assert [g["role"] for g in having] == ["USER"]


def test_nested_writes_in_updates(db: Any) -> None:
    # Every nested write Prisma Client Python 0.15 types: create, connect, connect_or_create,
    # set, disconnect, delete (it has no nested update, update_many, delete_many or upsert).
    author = make_author(db, posts={"create": [{"title": "keep"}, {"title": "drop"}]})
    db.category.create(data={"name": "existing"})
    drop = db.post.find_first(where={"title": "drop"})
    updated = db.author.update(
        where={"id": author.id},
        data={
            "posts": {
                "delete": [{"id": drop.id}],
                "create": [
                    {
                        "title": "new",
                        "categories": {
                            "connect_or_create": [
                                {"where": {"name": "existing"}, "create": {"name": "existing"}},
                                {"where": {"name": "fresh"}, "create": {"name": "fresh"}},
                            ]
                        },
                    }
                ],
            },
            "profile": {"create": {"bio": "first"}},
            "tags": {"set": ["x", "y"]},
        },
        include={"posts": {"include": {"categories": True}, "order_by": {"title": "asc"}}, "profile": True},
    )
    assert [p.title for p in updated.posts] == ["keep", "new"]
    assert sorted(c.name for c in updated.posts[1].categories) == ["existing", "fresh"]
    assert db.category.count() == 2  # connect_or_create connected the existing one
    assert updated.profile.bio == "first" and updated.tags == ["x", "y"]
    detached = db.author.update(
        where={"id": author.id},
        data={"profile": {"delete": True}},
        include={"profile": True},
    )
    assert detached.profile is None
    assert db.profile.count() == 0


def test_relation_set_and_list_filters(db: Any) -> None:
    author = make_author(db, posts={"create": [{"title": "p"}]})
    post = db.post.find_first(where={"authorId": author.id})
    a, b = db.category.create(data={"name": "a"}), db.category.create(data={"name": "b"})
    db.post.update(where={"id": post.id}, data={"categories": {"connect": [{"id": a.id}]}})
    reset = db.post.update(
        where={"id": post.id}, data={"categories": {"set": [{"id": b.id}]}}, include={"categories": True}
    )
    assert [c.name for c in reset.categories] == ["b"]
    make_author(db, "empty@example.com", tags=[])
    make_author(db, "both@example.com", tags=["x", "y"], scores=[3, 4])
    assert [x.email for x in db.author.find_many(where={"tags": {"is_empty": True}})] == ["empty@example.com"]
    assert [x.email for x in db.author.find_many(where={"tags": {"has_every": ["x", "y"]}})] == [
        "both@example.com"
    ]
    assert [x.email for x in db.author.find_many(where={"scores": {"equals": [3, 4]}})] == [
        "both@example.com"
    ]


def test_bytes_decimal_and_bigint_filters_and_aggregates(db: Any, client_module: Any) -> None:
    Base64 = client_module.fields.Base64
    make_author(db, "a@example.com", avatar=Base64.encode(b"a"), balance=Decimal("0.1"), views=BIG)
    make_author(db, "b@example.com", avatar=Base64.encode(b"b"), balance=Decimal("0.2"), views=1)
    assert [x.email for x in db.author.find_many(where={"avatar": Base64.encode(b"b")})] == ["b@example.com"]
    assert [x.email for x in db.author.find_many(where={"balance": {"in": [Decimal("0.1")]}})] == [
        "a@example.com"
    ]
    assert [x.email for x in db.author.find_many(where={"views": BIG})] == ["a@example.com"]
    [group] = db.author.group_by(["active"], sum={"balance": True}, max={"views": True})
    assert Decimal(str(group["_sum"]["balance"])) == Decimal("0.3")
    assert group["_max"]["views"] == BIG
