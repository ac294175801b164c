"""Settings, read once from the environment (and `.env`, through python-dotenv)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_CLERK_API_URL = "https://api.clerk.com"


class ConfigError(RuntimeError):
    """A setting is missing or malformed; raised at start-up, never mid-request."""


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str
    clerk_api_url: str = DEFAULT_CLERK_API_URL
    clerk_secret_key: str | None = None
    clerk_jwt_key: str | None = None
    clerk_authorized_parties: tuple[str, ...] = ()
    clerk_webhook_signing_secret: str | None = None
    clerk_timeout: float = 5.0
    webhook_max_bytes: int = 256 * 1024
    metrics_token: str | None = None
    metrics_enabled: bool = True

    def __repr__(self) -> str:
        # Settings end up in tracebacks and debug output; secrets must not.
        parties = self.clerk_authorized_parties
        return f"Settings(clerk_api_url={self.clerk_api_url!r}, clerk_authorized_parties={parties!r})"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        database_url = env.get("DATABASE_URL", "").strip()
        if not database_url:
            raise ConfigError(
                "DATABASE_URL is not set: point it at the PostgreSQL database to mirror users into"
            )
        parties = tuple(
            p.strip().rstrip("/") for p in env.get("CLERK_AUTHORIZED_PARTIES", "").split(",") if p.strip()
        )
        return cls(
            database_url=database_url,
            clerk_api_url=(env.get("CLERK_API_URL") or DEFAULT_CLERK_API_URL).rstrip("/"),
            clerk_secret_key=env.get("CLERK_SECRET_KEY") or None,
            clerk_jwt_key=env.get("CLERK_JWT_KEY") or None,
            clerk_authorized_parties=parties,
            clerk_webhook_signing_secret=env.get("CLERK_WEBHOOK_SIGNING_SECRET") or None,
            clerk_timeout=_positive_float(env, "CLERK_TIMEOUT", 5.0),
            webhook_max_bytes=int(_positive_float(env, "WEBHOOK_MAX_BYTES", 256 * 1024)),
            metrics_token=env.get("METRICS_TOKEN") or None,
            metrics_enabled=env.get("METRICS_ENABLED", "1").strip().lower() not in _FALSE,
        )


_FALSE = ("0", "false", "no", "off")


def _positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {raw!r}")
    return value
