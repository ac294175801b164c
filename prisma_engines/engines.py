"""Choosing between Prisma's native query engine and the offline one.

Prisma's CLI downloads native engines from Prisma's CDN on first use. Where that
works, the native engines stay the default. Where it cannot (no internet, as in
prisma-client-py issue #989), ``PRISMA_QUERY_ENGINE_BINARY`` points the client at
``node/query-engine.mjs``: Prisma's official WebAssembly build of the same engine
commit, served behind the native binary's HTTP interface.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

NODE_DIR = Path(__file__).resolve().parent.parent / "prisma"
OFFLINE_QUERY_ENGINE = NODE_DIR / "query-engine.mjs"

# The CLI refuses to start without these engine files, even for commands that
# never run them (generate uses the schema wasm bundled in the CLI itself).
_PLACEHOLDER_ENGINE_VARS = ("PRISMA_SCHEMA_ENGINE_BINARY", "PRISMA_QUERY_ENGINE_LIBRARY")


def offline_env() -> dict[str, str]:
    """Environment that runs the client on the offline engine and the CLI without downloads."""
    env = {
        "PRISMA_QUERY_ENGINE_BINARY": str(OFFLINE_QUERY_ENGINE),
        "PRISMA_ENGINES_CHECKSUM_IGNORE_MISSING": "1",
    }
    for name in _PLACEHOLDER_ENGINE_VARS:
        env[name] = os.environ.get(name) or str(OFFLINE_QUERY_ENGINE)
    return env


def cli_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` plus what the Prisma CLI needs to run here, leaving explicit choices alone."""
    env = dict(os.environ if base is None else base)
    # The CLI runs the generator as `prisma-client-py`, installed beside this interpreter.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)])
    env.setdefault("PRISMA_HIDE_UPDATE_MESSAGE", "1")
    env.setdefault("CHECKPOINT_DISABLE", "1")
    if env.get("PRISMA_QUERY_ENGINE_BINARY") == str(OFFLINE_QUERY_ENGINE):
        for name, value in offline_env().items():
            env.setdefault(name, value)
    return env


def native_engines_available(timeout: float = 60) -> bool:
    """Whether the Prisma CLI can fetch (or already has) the native engines.

    ``prisma version`` downloads them as a side effect; offline it fails within
    seconds on the DNS lookup of Prisma's CDN.
    """
    env = cli_env({k: v for k, v in os.environ.items() if not k.startswith("PRISMA_QUERY_ENGINE")})
    try:
        result = subprocess.run(
            [sys.executable, "-m", "prisma", "version"],
            env=env,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


def engine_env() -> dict[str, str]:
    """The engine variables to export: none for native engines, the offline set otherwise.

    An explicit ``PRISMA_QUERY_ENGINE_BINARY`` always wins; ``PRISMA_ENGINE=offline``
    or ``native`` skips the probe.
    """
    explicit = os.environ.get("PRISMA_QUERY_ENGINE_BINARY")
    if explicit:
        return offline_env() if Path(explicit).resolve() == OFFLINE_QUERY_ENGINE else {}
    choice = os.environ.get("PRISMA_ENGINE", "auto")
    if choice == "native" or (choice == "auto" and native_engines_available()):
        return {}
    return offline_env()


class GenerateError(RuntimeError):
    """`prisma generate` failed; the message carries the CLI's own output."""


def generate(schema: Path, *, env: Mapping[str, str] | None = None) -> None:
    """Run ``prisma generate`` for ``schema``, raising with the CLI's own output on failure."""
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
