"""The app in this process, on a wrapped query engine: what the profiles time.

Both profiles (bench/profile.py, bench/engine_profile.py) run the real app through
Flask's test client, with `PRISMA_QUERY_ENGINE_BINARY` pointing at a shim that
wraps the same engine (timers, or `node --cpu-prof`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from flask import Flask

from .workload import WEBHOOK_SECRET


@contextlib.contextmanager
def app_on_engine(db_url: str, engine_binary: Path) -> Iterator[Flask]:
    """An app whose client is connected through `engine_binary`; the engine stops on exit.

    The variable is set only while the client starts its engine, so the servers the
    bench runs alongside keep theirs. Log lines are still formatted (a real cost per
    request) but written to /dev/null.
    """
    from app import create_app
    from app.config import Settings

    previous = os.environ.get("PRISMA_QUERY_ENGINE_BINARY")
    os.environ["PRISMA_QUERY_ENGINE_BINARY"] = str(engine_binary)
    try:
        settings = Settings(
            database_url=db_url,
            clerk_webhook_signing_secret=WEBHOOK_SECRET,
            clerk_secret_key="sk_test_unused_by_the_profile",
        )
        app = create_app(settings)
        database = app.extensions["database"]
        database.client()
    finally:
        if previous is None:
            os.environ.pop("PRISMA_QUERY_ENGINE_BINARY", None)
        else:
            os.environ["PRISMA_QUERY_ENGINE_BINARY"] = previous
    with open(os.devnull, "w") as devnull:
        for handler in logging.getLogger("app").handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.stream = devnull
        try:
            yield app
        finally:
            database.close()  # the engine exits (and a profiling engine writes its profile)
