"""clerk-sync: mirrors a Clerk application's users into PostgreSQL."""

from __future__ import annotations

import logging

from dotenv import load_dotenv
from flask import Flask
from flask_cors import CORS

from . import clerk, cli, db, errors, metrics, request_log
from .config import ConfigError, Settings

# gunicorn's exit code for "App failed to load": the master stops instead of respawning workers.
CONFIG_ERROR_EXIT = 4


def create_app(settings: Settings | None = None) -> Flask:
    """The application factory, for `flask` and gunicorn's `app:create_app()`."""
    request_log.configure_logging()
    if settings is None:
        load_dotenv()
        settings = _settings_from_env()

    app = Flask(__name__)
    app.config["SETTINGS"] = settings
    app.json.sort_keys = False  # type: ignore[attr-defined]

    errors.init_app(app)
    request_log.init_app(app)
    metrics.init_app(app, settings)
    db.init_app(app, settings.database_url)
    clerk.init_app(app, settings)
    cli.init_app(app)

    from .views import after_login, health, webhooks

    app.register_blueprint(health.bp)
    app.register_blueprint(after_login.bp)
    app.register_blueprint(webhooks.bp)
    if settings.clerk_authorized_parties:
        # Browsers on the frontend's origins may call /after-login with their Bearer token.
        CORS(
            app,
            resources={r"/after-login": {"origins": list(settings.clerk_authorized_parties)}},
            allow_headers=["Authorization", "Content-Type"],
            methods=["POST", "OPTIONS"],
            supports_credentials=True,
            max_age=600,
        )
    return app


def _settings_from_env() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        # One line that names the mistake; a traceback would bury it (and say nothing more).
        logging.getLogger("app.config").error("configuration error: %s", exc)
        raise SystemExit(CONFIG_ERROR_EXIT) from None
