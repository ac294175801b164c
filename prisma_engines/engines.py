"""The engines Prisma runs here, and Prisma Client Python's `generate` with them.

By default every engine is WebAssembly, so what CI tests is what production runs: the
client's query engine is `prisma/query-engine.mjs` (Prisma's WebAssembly build behind the
native binary's HTTP interface) and schema commands run Prisma 6.19's WebAssembly schema
engine (see `scripts/prisma`). `PRISMA_ENGINE=native` opts into Prisma's native engines,
which its CLI downloads from Prisma's CDN; CI here does not exercise that.
`scripts/setup.sh` exports the same variables as `offline_env()`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

NODE_DIR = Path(__file__).resolve().parent.parent / "prisma"
OFFLINE_QUERY_ENGINE = NODE_DIR / "query-engine.mjs"
#: Answers `migrate resolve`'s one native call (a connection check); nothing else runs it.
SCHEMA_ENGINE_STUB = NODE_DIR / "cli" / "schema-engine-stub.mjs"


def offline_env() -> dict[str, str]:
    """The variables that select the WebAssembly engines and stop the CLIs' downloads."""
    return {
        "PRISMA_QUERY_ENGINE_BINARY": str(OFFLINE_QUERY_ENGINE),
        # Any existing file stops the start-up download; no command loads it.
        "PRISMA_QUERY_ENGINE_LIBRARY": str(OFFLINE_QUERY_ENGINE),
        "PRISMA_SCHEMA_ENGINE_BINARY": str(SCHEMA_ENGINE_STUB),
        "PRISMA_ENGINES_CHECKSUM_IGNORE_MISSING": "1",
    }


def cli_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` plus what the Prisma CLI needs to run here, leaving explicit choices alone."""
    env = dict(os.environ if base is None else base)
    # The CLI runs the generator as `prisma-client-py`, installed beside this interpreter.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)])
    env.setdefault("PRISMA_HIDE_UPDATE_MESSAGE", "1")
    env.setdefault("CHECKPOINT_DISABLE", "1")
    if env.get("PRISMA_ENGINE", "wasm") != "native":
        for name, value in offline_env().items():
            env.setdefault(name, value)
    return env


class GenerateError(RuntimeError):
    """`prisma generate` failed; the message carries the CLI's own output."""


def generate(schema: Path, *, env: Mapping[str, str] | None = None) -> None:
    """Prisma Client Python's ``prisma generate`` for ``schema`` (its own Prisma 5.17 CLI)."""
    result = subprocess.run(
        [sys.executable, "-m", "prisma", "generate", "--schema", str(schema)],
        env=cli_env(env),
        cwd=NODE_DIR.parent,
        check=False,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise GenerateError(f"prisma generate failed for {schema}:\n{result.stdout}{result.stderr}")
