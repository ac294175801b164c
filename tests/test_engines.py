"""Which engines the set-up selects, and that a warm set-up skips every step.

scripts/setup.sh is sourced in a real bash here, on this checkout's real .venv and
prisma/node_modules (scripts/test has just run it, so it is warm).
"""

from __future__ import annotations

import os
import subprocess

import pytest

from prisma_engines import engines
from prisma_engines.migrations import PROJECT_ROOT

ENGINE_VARS = (
    "PRISMA_ENGINE",
    "PRISMA_QUERY_ENGINE_BINARY",
    "PRISMA_QUERY_ENGINE_LIBRARY",
    "PRISMA_SCHEMA_ENGINE_BINARY",
)


def _source_setup(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`source scripts/setup.sh` then `script`, traced (bash -x) so the steps it ran show."""
    base = {key: value for key, value in os.environ.items() if key not in ENGINE_VARS}
    return subprocess.run(
        ["bash", "-xc", f"source scripts/setup.sh && {script}"],
        cwd=PROJECT_ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_the_default_is_the_webassembly_engines_and_a_warm_setup_skips_every_step() -> None:
    result = _source_setup('echo "$PRISMA_ENGINE $PRISMA_QUERY_ENGINE_BINARY $PRISMA_SCHEMA_ENGINE_BINARY"')
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "wasm",
        str(engines.OFFLINE_QUERY_ENGINE),
        str(engines.SCHEMA_ENGINE_STUB),
    ]
    trace = result.stderr
    for step in ("pip install", "npm ci", "prisma generate", "binaries.prisma.sh"):
        assert step not in trace, f"a warm set-up ran {step!r}:\n{trace}"
    assert "prisma_engines" not in trace  # no Python start-up at all (the CDN probe is gone)


def test_native_is_an_opt_in_that_exports_no_engine_paths() -> None:
    result = _source_setup(
        'echo "[${PRISMA_QUERY_ENGINE_BINARY:-}][${PRISMA_SCHEMA_ENGINE_BINARY:-}]"', PRISMA_ENGINE="native"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[][]"


def test_an_unknown_engine_choice_is_refused() -> None:
    result = _source_setup("echo reached", PRISMA_ENGINE="offline")
    assert result.returncode != 0 and "reached" not in result.stdout
    assert "PRISMA_ENGINE must be wasm (default) or native" in result.stderr


def test_an_explicit_query_engine_is_left_alone() -> None:
    result = _source_setup(
        'echo "$PRISMA_QUERY_ENGINE_BINARY"', PRISMA_QUERY_ENGINE_BINARY="/opt/query-engine"
    )
    assert result.stdout.strip() == "/opt/query-engine"


@pytest.mark.parametrize("engine", ["wasm", "native"])
def test_cli_env_matches_the_setup(engine: str) -> None:
    env = engines.cli_env({"PATH": "/usr/bin", "PRISMA_ENGINE": engine})
    if engine == "wasm":
        assert {key: env[key] for key in engines.offline_env()} == engines.offline_env()
    else:
        assert "PRISMA_QUERY_ENGINE_BINARY" not in env
    assert env["PATH"].endswith(os.pathsep + "/usr/bin")
