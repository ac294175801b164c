"""The requests each phase sends, prepared (signed, tokens minted) before any timing starts."""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from svix.webhooks import Webhook

from tests.fakeclerk import build_clerk_user

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"clerk-sync bench webhook secret!").decode()


@dataclass(frozen=True, slots=True)
class Req:
    method: str
    path: str
    content: bytes
    headers: dict[str, str]


def fake_user_id() -> str:
    return "user_" + uuid.uuid4().hex[:24]


def signed_request(body: str, *, msg_id: str | None = None) -> Req:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    now = datetime.now(UTC)
    headers = {
        "svix-id": msg_id,
        "svix-timestamp": str(int(now.timestamp())),
        "svix-signature": Webhook(WEBHOOK_SECRET).sign(msg_id, now, body),
        "content-type": "application/json",
    }
    return Req("POST", "/webhooks/clerk", body.encode(), headers)


def webhook_request(event_type: str, data: Any) -> Req:
    body = json.dumps(
        {"data": data, "object": "event", "type": event_type, "timestamp": int(time.time() * 1000)}
    )
    return signed_request(body)


def noop_requests(n: int) -> list[Req]:
    """The HTTP + verification ceiling's request: correctly signed, then refused as unusable (400)."""
    return [signed_request(json.dumps({"type": ""})) for _ in range(n)]


def user_events(n: int) -> list[Req]:
    """`user.created` / `user.updated` alternating, each for a new, distinct user."""
    types = ("user.created", "user.updated")
    return [webhook_request(types[i % 2], build_clerk_user(fake_user_id())) for i in range(n)]


def deletion_events(n: int) -> list[Req]:
    """`user.deleted` for distinct users never seen (each stores a tombstone)."""
    return [
        webhook_request("user.deleted", {"id": fake_user_id(), "deleted": True, "object": "user"})
        for _ in range(n)
    ]


def with_duplicates(messages: list[Req], lag: int) -> list[Req]:
    """Each message twice; the copy `lag` positions after its original (so most copies find it committed)."""
    order: list[Req] = []
    pending: list[Req] = []
    for message in messages:
        order.append(message)
        pending.append(message)
        if len(pending) > lag:
            order.append(pending.pop(0))
    order.extend(pending)
    return order


def login_requests(tokens: list[str]) -> list[Req]:
    return [Req("POST", "/after-login", b"", {"Authorization": f"Bearer {token}"}) for token in tokens]
