"""`GET /healthz`: what a load balancer sees."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from flask import Flask
from prisma import Prisma

from app import create_app
from app.config import Settings


def test_healthy_when_the_database_answers(http: httpx.Client, db: Prisma) -> None:
    response = http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


@pytest.fixture
def app_without_database() -> Iterator[Flask]:
    # Nothing listens on port 1; connect_timeout keeps the failing check quick.
    app = create_app(Settings(database_url="postgresql://postgres@127.0.0.1:1/none?connect_timeout=2"))
    yield app
    app.extensions["database"].close()


def test_unavailable_when_the_database_does_not_answer(app_without_database: Flask) -> None:
    response = app_without_database.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.get_json() == {"status": "unavailable", "database": "unreachable"}


def test_unknown_paths_and_methods_are_json_errors(http: httpx.Client) -> None:
    missing = http.get("/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong_method = http.delete("/healthz")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == "method_not_allowed"
    assert "GET" in wrong_method.headers["allow"]
