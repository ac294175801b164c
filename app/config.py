"""Settings, read once from the environment (and `.env`, through python-dotenv)."""

from __future__ import annotations

import base64
import binascii
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

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
    clerk_issuer: str | None = None
    """Clerk's Frontend API URL; when set, a session token's `iss` must equal it."""
    clerk_webhook_signing_secret: str | None = None
    clerk_timeout: float = 5.0
    webhook_max_bytes: int = 256 * 1024
    metrics_token: str | None = None
    metrics_enabled: bool = True

    def __repr__(self) -> str:
        # Settings end up in tracebacks and debug output; secrets must not.
        parties = self.clerk_authorized_parties
        return f"Settings(clerk_api_url={self.clerk_api_url!r}, clerk_authorized_parties={parties!r})"

    def warnings(self) -> list[str]:
        """Settings that are valid but leave a part of the service off, one line each, for start-up."""
        found = []
        if not self.clerk_webhook_signing_secret:
            found.append("CLERK_WEBHOOK_SIGNING_SECRET is not set: /webhooks/clerk answers 503 to everything")
        if not self.clerk_secret_key:
            found.append("CLERK_SECRET_KEY is not set: /after-login and the backfill cannot fetch users")
        return found

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        database_url = env.get("DATABASE_URL", "").strip()
        if not database_url:
            raise ConfigError(
                "DATABASE_URL is not set: point it at the PostgreSQL database to mirror users into"
            )
        check_database_url(database_url)
        secret = env.get("CLERK_WEBHOOK_SIGNING_SECRET") or None
        if secret is not None:
            check_webhook_secret(secret)
        parties = tuple(
            p.strip().rstrip("/") for p in env.get("CLERK_AUTHORIZED_PARTIES", "").split(",") if p.strip()
        )
        return cls(
            database_url=database_url,
            clerk_api_url=(env.get("CLERK_API_URL") or DEFAULT_CLERK_API_URL).rstrip("/"),
            clerk_secret_key=env.get("CLERK_SECRET_KEY") or None,
            clerk_jwt_key=env.get("CLERK_JWT_KEY") or None,
            clerk_authorized_parties=parties,
            clerk_issuer=_url(env, "CLERK_ISSUER"),
            clerk_webhook_signing_secret=secret,
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


def check_database_url(url: str) -> None:
    """Raise `ConfigError` unless `url` is a PostgreSQL URL with a host; the message never quotes it.

    Anything else fails much later and obscurely (psycopg reads `mysql://...` as a
    key=value string), and the URL holds the database password.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError("DATABASE_URL is not a URL (a bad port or brackets?)") from None
    if parts.scheme not in ("postgresql", "postgres"):
        scheme = f"{parts.scheme}://" if parts.scheme and len(parts.scheme) <= 16 else "no scheme"
        raise ConfigError(f"DATABASE_URL must be a postgresql:// URL, got {scheme}")
    if not parts.hostname:
        raise ConfigError("DATABASE_URL names no host: expected postgresql://user:password@host:port/db")
    if port == 0:
        raise ConfigError("DATABASE_URL's port must be between 1 and 65535")


def check_webhook_secret(secret: str) -> None:
    """Raise `ConfigError` unless `secret` is `whsec_` and base64, as Clerk's dashboard shows it.

    Svix would accept other strings and then reject every genuine delivery with 400.
    """
    if not secret.startswith("whsec_"):
        raise ConfigError("CLERK_WEBHOOK_SIGNING_SECRET must start with whsec_ (copy it from the endpoint)")
    body = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("CLERK_WEBHOOK_SIGNING_SECRET is not whsec_ followed by base64") from None
    if not key:
        raise ConfigError("CLERK_WEBHOOK_SIGNING_SECRET holds no key after whsec_")


def _url(env: Mapping[str, str], name: str) -> str | None:
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ConfigError(f"{name} must be an https:// URL such as https://clerk.example.com")
    return raw.rstrip("/")


def check_environment() -> int:
    """Check the environment (and `.env`) as the app will read it; scripts/serve runs this first.

    Prints one line per problem and exits 4 on an error, so scripts/serve stops
    before migrating or serving; warnings are printed and do not stop it.
    """
    from dotenv import load_dotenv

    load_dotenv()
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 4
    for warning in settings.warnings():
        print(f"warning: {warning}", file=sys.stderr)
    return 0
