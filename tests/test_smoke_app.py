from __future__ import annotations

import json

from tests.conftest import FRONTEND_ORIGIN, sign_webhook


def test_healthz(http, db):
    r = http.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "database": "ok"}


def test_after_login_then_webhook(http, db, fake_clerk):
    fake_clerk.add_user("user_smoke", email="s@example.com", first_name="Smo")
    r = http.post(
        "/after-login",
        headers={"Authorization": "Bearer " + fake_clerk.mint_token("user_smoke"), "Origin": FRONTEND_ORIGIN},
    )
    assert r.status_code == 200, r.text
    assert r.json()["email"] == "s@example.com"
    assert r.headers["access-control-allow-origin"] == FRONTEND_ORIGIN
    body = json.dumps(
        {
            "type": "user.deleted",
            "data": {"id": "user_smoke", "deleted": True, "object": "user"},
            "timestamp": 1700000000000,
        }
    )
    r = http.post("/webhooks/clerk", content=body, headers=sign_webhook(body))
    assert r.status_code == 200, r.text
    assert r.json()["outcome"] == "deleted"
    assert db.user.find_unique(where={"clerkId": "user_smoke"}).email is None
