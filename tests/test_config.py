"""Configuration mistakes surface at start, as one clear line each, never a traceback or a secret.

The unit tests read settings from a dict; the others start the real thing in a
subprocess (the app factory, the migration command, and `scripts/serve`) and
read what an operator would see on the terminal.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from app.config import ConfigError, Settings
from tests.conftest import WEBHOOK_SECRET

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "s3cr3t-pa55word"
GOOD_URL = f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/clerk_sync"


def from_env(**env: str) -> Settings:
    return Settings.from_env({"DATABASE_URL": GOOD_URL, **env})


# --- reading the environment -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (f"mysql://root:{PASSWORD}@db.example.com/app", "must be a postgresql:// URL, got mysql://"),
        (f"host=127.0.0.1 password={PASSWORD}", "must be a postgresql:// URL, got no scheme"),
        (f"postgresql://postgres:{PASSWORD}@/clerk_sync", "names no host"),
        (f"postgresql://postgres:{PASSWORD}@127.0.0.1:99999/db", "not a URL"),
        (f"postgresql://postgres:{PASSWORD}@127.0.0.1:0/db", "port must be between"),
    ],
)
def test_bad_database_url_is_one_line_without_the_password(url: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        from_env(DATABASE_URL=url)
    message = str(caught.value)
    assert says in message and "\n" not in message
    assert PASSWORD not in message


@pytest.mark.parametrize("url", [GOOD_URL, "postgres://u@db.neon.tech/app?sslmode=require"])
def test_postgresql_urls_are_accepted(url: str) -> None:
    assert from_env(DATABASE_URL=url).database_url == url


@pytest.mark.parametrize(
    ("secret", "says"),
    [
        (base64.b64encode(b"a secret without its prefix").decode(), "must start with whsec_"),
        ("whsec_not base64!", "not whsec_ followed by base64"),
        ("whsec_", "holds no key"),
        ("sk_test_" + "a" * 40, "must start with whsec_"),  # the secret key pasted in the wrong place
    ],
)
def test_bad_webhook_secret_is_refused_without_quoting_it(secret: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        from_env(CLERK_WEBHOOK_SIGNING_SECRET=secret)
    assert says in str(caught.value)
    key = secret.removeprefix("whsec_")
    assert not key or key not in str(caught.value)


def test_good_webhook_secrets_are_accepted() -> None:
    unpadded = "whsec_" + base64.b64encode(b"twenty-four bytes of key").decode().rstrip("=")
    for secret in (WEBHOOK_SECRET, unpadded):
        assert from_env(CLERK_WEBHOOK_SIGNING_SECRET=secret).clerk_webhook_signing_secret == secret


def test_unset_secrets_are_warnings() -> None:
    warnings = from_env().warnings()
    assert any(w.startswith("CLERK_WEBHOOK_SIGNING_SECRET is not set") for w in warnings)
    assert any(w.startswith("CLERK_SECRET_KEY is not set") for w in warnings)
    configured = from_env(CLERK_WEBHOOK_SIGNING_SECRET=WEBHOOK_SECRET, CLERK_SECRET_KEY="sk_test_x")
    assert configured.warnings() == []


def test_clerk_issuer() -> None:
    assert from_env().clerk_issuer is None
    assert from_env(CLERK_ISSUER="https://clerk.example.com/").clerk_issuer == "https://clerk.example.com"
    with pytest.raises(ConfigError, match="CLERK_ISSUER must be an https:// URL"):
        from_env(CLERK_ISSUER="clerk.example.com")


# --- what an operator sees at start ----------------------------------------------------------


def clean_env(**overrides: str) -> dict[str, str]:
    """This process's environment without any clerk-sync setting, plus `overrides`."""
    prefixes = ("CLERK_", "DATABASE_URL", "WEBHOOK_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **overrides}


def run(
    args: list[str], env: Mapping[str, str], cwd: Path, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def assert_one_clear_line(output: str, says: str) -> None:
    assert "Traceback" not in output, output
    assert PASSWORD not in output, output
    lines = [line for line in output.splitlines() if says in line]
    assert len(lines) >= 1, output


APP_START = [sys.executable, "-c", "from app import create_app; create_app()"]


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"DATABASE_URL": f"mysql://root:{PASSWORD}@db/app"}, "DATABASE_URL must be a postgresql:// URL"),
        ({"CLERK_WEBHOOK_SIGNING_SECRET": PASSWORD}, "CLERK_WEBHOOK_SIGNING_SECRET must start with whsec_"),
        ({"CLERK_TIMEOUT": "soon"}, "CLERK_TIMEOUT must be a number"),
    ],
    ids=["mysql-url", "secret-without-whsec", "timeout"],
)
def test_app_start_fails_with_one_json_line(tmp_path: Path, env: dict[str, str], says: str) -> None:
    env = {"DATABASE_URL": GOOD_URL, **env}
    result = run(APP_START, clean_env(PYTHONPATH=str(ROOT), **env), cwd=tmp_path)

    assert result.returncode == 4, result.stderr
    assert_one_clear_line(result.stderr, says)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = json.loads(lines[0])
    assert line["level"] == "error" and line["message"].startswith(f"configuration error: {says}")


def test_app_start_warns_about_an_unset_signing_secret(tmp_path: Path) -> None:
    result = run(APP_START, clean_env(PYTHONPATH=str(ROOT), DATABASE_URL=GOOD_URL), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    warnings = [json.loads(line) for line in result.stderr.splitlines()]
    assert any(
        w["level"] == "warning" and w["message"].startswith("CLERK_WEBHOOK_SIGNING_SECRET is not set")
        for w in warnings
    ), result.stderr


SERVE = [str(ROOT / "scripts" / "serve")]


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (f"mysql://root:{PASSWORD}@db/app", "configuration error: DATABASE_URL must be a postgresql:// URL"),
        # Past the shape check, Prisma's migrate deploy is first to connect, and names the cause.
        (f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/db", "ECONNREFUSED 127.0.0.1:1"),
    ],
    ids=["mysql-url", "refused"],
)
def test_serve_names_a_bad_database_url_in_one_line(url: str, says: str) -> None:
    result = run(SERVE, clean_env(DATABASE_URL=url, PORT="0"), cwd=ROOT)
    assert result.returncode != 0
    assert_one_clear_line(result.stdout + result.stderr, says)


def test_serve_stops_at_a_bad_signing_secret(database_factory: Callable[[str], str], tmp_path: Path) -> None:
    """The README's run command, as an operator runs it: it exits, saying why, instead of serving 400s."""
    url = database_factory("config_serve")
    env = clean_env(DATABASE_URL=url, CLERK_WEBHOOK_SIGNING_SECRET=PASSWORD, PORT="0", WEB_CONCURRENCY="1")

    result = run(SERVE, env, cwd=ROOT)

    assert result.returncode != 0
    assert_one_clear_line(
        result.stdout + result.stderr, "CLERK_WEBHOOK_SIGNING_SECRET must start with whsec_"
    )


def test_gunicorn_started_directly_stops_in_one_line(tmp_path: Path) -> None:
    """Outside scripts/serve (README, "Production server"): the master stops before any worker boots."""
    env = clean_env(DATABASE_URL=f"mysql://root:{PASSWORD}@db/app", PORT="0")
    result = run([sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py"], env, cwd=ROOT)

    assert result.returncode == 4, result.stderr
    assert_one_clear_line(result.stderr, "configuration error: DATABASE_URL must be a postgresql:// URL")
    assert "Booting worker" not in result.stderr
