"""Generates a client from the conformance schema and connects it to a fresh database.

The client runs on whatever engine the environment selects (see prisma_engines.engines):
on machines without Prisma's CDN, that is the offline WebAssembly engine.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest

from prisma_engines import auth, builder, engines, migrations

HERE = Path(__file__).resolve().parent
SCHEMA = HERE / "schema.prisma"
TABLES = ('"Author"', '"Profile"', '"Post"', '"Category"', '"_CategoryToPost"')


@pytest.fixture(scope="session")
def client_module() -> ModuleType:
    engines.generate(SCHEMA)
    sys.path.insert(0, str(HERE / "generated"))
    module = importlib.import_module("conformance_client")
    builder.patch(importlib.import_module("conformance_client._builder"))
    return module


@pytest.fixture(scope="session")
def conformance_url(
    database_factory: Any, postgres_server: str, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """A database with the conformance schema, built by Prisma's own `migrate diff --from-empty`."""
    ddl = migrations.diff_script(
        schema=SCHEMA, migrations_dir=tmp_path_factory.mktemp("no-migrations"), server_url=postgres_server
    )
    assert ddl is not None
    url = database_factory("conformance")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(ddl)  # type: ignore[arg-type]
    return url


@pytest.fixture(scope="session")
def session_client(client_module: ModuleType, conformance_url: str) -> Iterator[Any]:
    client = client_module.Prisma(datasource={"url": conformance_url}, http=auth.http_options())
    client.connect()
    yield client
    client.disconnect()


@pytest.fixture
def db(session_client: Any, conformance_url: str) -> Any:
    """The connected client, on empty tables."""
    with psycopg.connect(conformance_url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
    return session_client


@pytest.fixture
def fresh_client(client_module: ModuleType, conformance_url: str) -> Iterator[Any]:
    """A client of its own, for tests that break its engine."""
    client = client_module.Prisma(datasource={"url": conformance_url}, http=auth.http_options())
    yield client
    if client.is_connected():
        client.disconnect()
