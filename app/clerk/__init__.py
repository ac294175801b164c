"""Everything that talks to Clerk or reads Clerk data: users, session tokens, the Backend API."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Flask, current_app

from ..config import Settings
from ..errors import ApiError
from .api import ClerkAPI, new_http_client
from .tokens import SessionTokenVerifier

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Clerk:
    """The app's Clerk clients; either is None when its settings are missing."""

    api: ClerkAPI | None
    verifier: SessionTokenVerifier | None

    def require_api(self) -> ClerkAPI:
        if self.api is None:
            raise ApiError(503, "not_configured", "CLERK_SECRET_KEY is not set on the server.")
        return self.api

    def require_verifier(self) -> SessionTokenVerifier:
        if self.verifier is None:
            raise ApiError(503, "not_configured", "Set CLERK_JWT_KEY or CLERK_SECRET_KEY on the server.")
        return self.verifier


def init_app(app: Flask, settings: Settings) -> Clerk:
    # One connection pool to Clerk for the user fetches and the JWKS fetches alike.
    http = new_http_client()
    api = None
    if settings.clerk_secret_key:
        api = ClerkAPI(
            settings.clerk_api_url, settings.clerk_secret_key, timeout=settings.clerk_timeout, http=http
        )
    for warning in settings.warnings():
        log.warning("%s", warning)
    verifier = None
    if settings.clerk_jwt_key or settings.clerk_secret_key:
        verifier = SessionTokenVerifier(
            jwt_key=settings.clerk_jwt_key,
            api_url=settings.clerk_api_url,
            secret_key=settings.clerk_secret_key,
            authorized_parties=settings.clerk_authorized_parties,
            issuer=settings.clerk_issuer,
            timeout=settings.clerk_timeout,
            http=http,
        )
    clerk = Clerk(api=api, verifier=verifier)
    app.extensions["clerk"] = clerk
    return clerk


def current_clerk() -> Clerk:
    clerk: Clerk = current_app.extensions["clerk"]
    return clerk
