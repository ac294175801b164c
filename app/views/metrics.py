"""`GET /metrics`: the Prometheus scrape, for holders of METRICS_TOKEN only.

Counts say how much traffic the service gets and from where, so the endpoint is
not public: without METRICS_TOKEN set it answers 404 like any unknown path, and
with it set a scrape must send `Authorization: Bearer <METRICS_TOKEN>`.
"""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, abort, current_app, request

from .. import metrics_store
from ..config import Settings
from ..errors import ApiError

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def scrape() -> Response:
    settings: Settings = current_app.config["SETTINGS"]
    if not settings.metrics_enabled or not settings.metrics_token:
        abort(404)
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    # compare_digest: how long the comparison takes says nothing about the token.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        credentials.strip().encode(), settings.metrics_token.encode()
    ):
        message = "Send Authorization: Bearer <METRICS_TOKEN>."
        raise ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})
    body, content_type = metrics_store.exposition()
    return Response(body, content_type=content_type, headers={"Cache-Control": "no-store"})
