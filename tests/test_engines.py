"""Which query engine the set-up selects (prisma_engines.engines.engine_env)."""

from __future__ import annotations

import pytest

from prisma_engines import engines


@pytest.fixture(autouse=True)
def clean_engine_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PRISMA_QUERY_ENGINE_BINARY", "PRISMA_ENGINE", *engines._PLACEHOLDER_ENGINE_VARS):
        monkeypatch.delenv(name, raising=False)


def test_offline_choice_exports_the_engine_and_cli_placeholders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRISMA_ENGINE", "offline")
    env = engines.engine_env()
    assert env["PRISMA_QUERY_ENGINE_BINARY"] == str(engines.OFFLINE_QUERY_ENGINE)
    assert env["PRISMA_SCHEMA_ENGINE_BINARY"] and env["PRISMA_QUERY_ENGINE_LIBRARY"]
    assert "PATH" not in env


def test_native_choice_exports_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRISMA_ENGINE", "native")
    assert engines.engine_env() == {}


def test_an_explicit_engine_wins_and_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRISMA_QUERY_ENGINE_BINARY", "/opt/prisma/query-engine")
    monkeypatch.setenv("PRISMA_ENGINE", "offline")
    assert engines.engine_env() == {}


def test_an_explicit_offline_engine_gets_the_cli_placeholders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRISMA_QUERY_ENGINE_BINARY", str(engines.OFFLINE_QUERY_ENGINE))
    monkeypatch.setenv("PRISMA_SCHEMA_ENGINE_BINARY", "/opt/prisma/schema-engine")
    env = engines.engine_env()
    assert env["PRISMA_QUERY_ENGINE_BINARY"] == str(engines.OFFLINE_QUERY_ENGINE)
    assert env["PRISMA_SCHEMA_ENGINE_BINARY"] == "/opt/prisma/schema-engine"  # an explicit choice stays
    assert "PATH" not in env  # eval-ed by the set-up script: it must not replace the PATH
