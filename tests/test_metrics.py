"""Prometheus metrics: exact counts over gunicorn workers that come and go, hooks, and access."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from flask import Flask
from prisma import errors as prisma_errors
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from app import metrics, metrics_store
from app.clerk.api import ClerkAPI, ClerkAPIError
from app.clerk.tokens import InvalidSessionToken, SessionTokenVerifier
from tests.conftest import sign_webhook
from tests.fakeclerk import FakeClerk, build_clerk_user
from tests.served import ROOT, Served, free_port, gunicorn_server, server_env
from tests.test_cli import add_users, clerk, clerk_app, invoke

__all__ = ["clerk", "clerk_app"]  # fixtures of test_cli, used by name

METRICS_TOKEN = "metrics-test-token-0123456789"
Labels = dict[str, str]


# --- Helpers -----------------------------------------------------------------------------------


def scrape(url: str, token: str = METRICS_TOKEN) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of one scrape, keyed by (name, sorted labels)."""
    response = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def local(name: str, **labels: str) -> float:
    """A sample of this test process's own registry (the in-process app's hooks)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def webhook(
    event_type: str, data: dict[str, object], msg_id: str | None = None
) -> tuple[str, dict[str, str]]:
    body = json.dumps({"type": event_type, "data": data, "object": "event"})
    return body, sign_webhook(body, msg_id=msg_id)


def send_webhooks(url: str, messages: list[tuple[str, dict[str, str]]], clients: int = 6) -> list[int]:
    """Send from `clients` threads, a new connection each time, so that every worker gets some."""

    def run(chunk: list[tuple[str, dict[str, str]]]) -> list[int]:
        endpoint = f"{url}/webhooks/clerk"
        return [httpx.post(endpoint, content=b, headers=h, timeout=60).status_code for b, h in chunk]

    chunks = [messages[i::clients] for i in range(clients)]
    with ThreadPoolExecutor(clients) as pool:
        return [status for statuses in pool.map(run, chunks) for status in statuses]


def children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def request_pids(log_path: Path, path: str) -> set[int]:
    """The worker pids that logged a request for `path`."""
    pids = set()
    for line in log_path.read_text().splitlines():
        if line.startswith("{") and '"event": "request"' in line:
            record = json.loads(line)
            if record.get("path") == path:
                pids.add(record["pid"])
    return pids


def metrics_dir(tmp_path: Path) -> Path:
    (found,) = (tmp_path / "tmp").glob("clerk-sync-metrics-*")
    return found


def assert_no_dead_files(directory: Path, live: set[int]) -> None:
    """Only archive files and files of live processes: dead workers leave nothing behind."""
    for name in metrics_store.files(str(directory)):
        owner = name.removesuffix(".db").rsplit("_", 1)[1]
        assert owner == "archive" or int(owner) in live, (name, live)


def serve(
    app_database_url: str, fake_clerk: FakeClerk, tmp_path: Path, **extra: str
) -> contextlib.AbstractContextManager[Served]:
    """gunicorn with 3 workers and METRICS_TOKEN set; its temporary files go under tmp_path/tmp."""
    (tmp_path / "tmp").mkdir(parents=True)
    inherited = ("PROMETHEUS_MULTIPROC_DIR", "CLERK_SYNC_METRICS_MASTER", "METRICS_ENABLED", "METRICS_DIR")
    env = server_env(
        app_database_url,
        fake_clerk,
        exclude=inherited,
        WEB_CONCURRENCY="3",
        METRICS_TOKEN=METRICS_TOKEN,
        TMPDIR=str(tmp_path / "tmp"),
        **extra,
    )
    return gunicorn_server(env, tmp_path / "server.log", startup_timeout=90)


@pytest.fixture
def served(app_database_url: str, fake_clerk: FakeClerk, tmp_path: Path) -> Iterator[Served]:
    with serve(app_database_url, fake_clerk, tmp_path) as server:
        yield server


@pytest.fixture
def restarting(app_database_url: str, fake_clerk: FakeClerk, tmp_path: Path) -> Iterator[Served]:
    """As `served`, but each worker exits after 4 requests and gunicorn starts a new one."""
    with serve(app_database_url, fake_clerk, tmp_path, GUNICORN_CMD_ARGS="--max-requests 4") as server:
        yield server


def assert_scrape_needs_the_token(url: str) -> None:
    with httpx.Client(base_url=url, timeout=30) as http:
        missing = http.get("/metrics")
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "unauthorized"
        assert missing.headers["WWW-Authenticate"] == "Bearer"
        assert http.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert http.get("/metrics", headers={"Authorization": METRICS_TOKEN}).status_code == 401
        ok = http.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert ok.status_code == 200
        assert "clerk_sync_http_requests_in_flight" in ok.text


# --- Exact counts over several workers ---------------------------------------------------------


def test_counts_are_exact_across_workers_and_survive_a_killed_worker(
    served: Served, db: object, tmp_path: Path
) -> None:
    assert_scrape_needs_the_token(served.url)
    n = 48
    messages = [
        webhook("user.created", build_clerk_user(f"user_m{i}_{uuid.uuid4().hex[:6]}")) for i in range(n)
    ]
    assert send_webhooks(served.url, messages) == [200] * n
    served_by = request_pids(served.log_path, "/webhooks/clerk")
    assert len(served_by) >= 2, "the load was spread over several workers"

    def check(total: int) -> None:
        samples = scrape(served.url)
        assert value(samples, "clerk_sync_user_syncs_total", source="webhook", outcome="created") == total
        assert value(samples, "clerk_sync_webhook_events_total", event_type="user.created") == total
        duration = "clerk_sync_http_request_duration_seconds_count"
        assert value(samples, duration, route="/webhooks/clerk", method="POST", status_class="2xx") == total
        assert value(samples, "clerk_sync_engine_request_duration_seconds_count", operation="query") > 0
        # Only the scrape itself is in flight while it runs.
        assert value(samples, "clerk_sync_http_requests_in_flight") == 1

    check(n)

    # A worker dies without any chance to clean up; the master folds its files into the archive.
    directory = metrics_dir(tmp_path)
    victim = min(served_by)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        workers = children(served.process.pid)
        if victim not in workers and len(workers) == 3 and not list(directory.glob(f"*_{victim}.db")):
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the killed worker was not replaced and folded: {metrics_store.files(str(directory))}")
    check(n)

    more = [webhook("user.created", build_clerk_user(f"user_k{i}_{uuid.uuid4().hex[:6]}")) for i in range(12)]
    assert send_webhooks(served.url, more) == [200] * 12
    check(n + 12)
    assert "counter_archive.db" in metrics_store.files(str(directory))
    assert_no_dead_files(directory, children(served.process.pid) | {served.process.pid})

    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(timeout=40) == 0
    assert not directory.exists(), "the run's metrics directory is removed on exit"


def test_restarting_workers_lose_no_counts_and_leave_no_pile_of_files(
    restarting: Served, db: object, tmp_path: Path
) -> None:
    served = restarting
    n = 30
    forged = [(json.dumps({"type": "user.created"}), {"svix-id": f"msg_{i}"}) for i in range(n)]
    assert send_webhooks(served.url, forged, clients=4) == [400] * n
    # A worker may finish the requests it already took past its 4th, but not 30 over 3 workers.
    assert len(request_pids(served.log_path, "/webhooks/clerk")) > 3, "workers were restarted"

    samples = scrape(served.url)
    duration = "clerk_sync_http_request_duration_seconds_count"
    assert value(samples, duration, route="/webhooks/clerk", method="POST", status_class="4xx") == n
    directory = metrics_dir(tmp_path)
    deadline = time.monotonic() + 30
    while len(metrics_store.files(str(directory))) > 2 + 3 * 3 + 1 and time.monotonic() < deadline:
        time.sleep(0.2)  # the last restarted worker may still be on its way out
    assert len(metrics_store.files(str(directory))) <= 2 + 3 * 3 + 1, metrics_store.files(str(directory))
    assert_no_dead_files(directory, children(served.process.pid) | {served.process.pid})


def test_a_shared_metrics_dir_takes_cli_jobs_and_outlives_a_killed_server(
    app_database_url: str, fake_clerk: FakeClerk, db: object, tmp_path: Path
) -> None:
    shared = tmp_path / "metrics"
    fake_clerk.add_user("user_metrics_cli")
    get_user = {"operation": "get_user", "result": "ok"}
    with serve(app_database_url, fake_clerk, tmp_path, METRICS_DIR=str(shared)) as server:
        body, headers = webhook("user.updated", build_clerk_user("user_metrics_cli"))
        assert httpx.post(f"{server.url}/webhooks/clerk", content=body, headers=headers).status_code == 200

        # A `flask clerk` job with the same METRICS_DIR adds its counts to the server's.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CLERK_", "PROMETHEUS_"))}
        env.update(
            DATABASE_URL=app_database_url,
            CLERK_API_URL=fake_clerk.url,
            CLERK_SECRET_KEY=fake_clerk.secret_key,
            METRICS_DIR=str(shared),
        )
        job = subprocess.run(
            [sys.executable, "-m", "flask", "clerk", "sync-user", "user_metrics_cli"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert job.returncode == 0, job.stdout + job.stderr
        samples = scrape(server.url)
        assert value(samples, "clerk_sync_clerk_api_request_duration_seconds_count", **get_user) == 1
        assert value(samples, "clerk_sync_webhook_events_total", event_type="user.updated") == 1
        syncs = "clerk_sync_user_syncs_total"
        by_job = {k: v for k, v in samples.items() if k[0] == syncs and ("source", "backfill") in k[1]}
        assert sum(by_job.values()) == 1, by_job
        processes = children(server.process.pid) | {server.process.pid}
        assert_no_dead_files(shared, processes)  # the job folded itself on exit

        # The whole server dies without a chance to fold anything.
        for pid in processes:
            os.kill(pid, signal.SIGKILL)
        server.process.wait(timeout=30)

    with serve(app_database_url, fake_clerk, tmp_path / "again", METRICS_DIR=str(shared)) as server:
        samples = scrape(server.url)
        assert value(samples, "clerk_sync_clerk_api_request_duration_seconds_count", **get_user) == 1
        assert value(samples, "clerk_sync_webhook_events_total", event_type="user.updated") == 1
        assert value(samples, "clerk_sync_http_requests_in_flight") == 1
        assert_no_dead_files(shared, children(server.process.pid) | {server.process.pid})
    assert shared.is_dir(), "METRICS_DIR is the operator's: it stays"


# --- Access ------------------------------------------------------------------------------------


def test_without_a_token_there_is_no_metrics_endpoint(http: httpx.Client) -> None:
    # The session app (tests/conftest.py) sets no METRICS_TOKEN.
    response = http.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


# --- Hooks, through the in-process app on a real socket ----------------------------------------


def test_after_login_counts_its_outcome_its_clerk_call_and_token_rejections(
    http: httpx.Client, fake_clerk: FakeClerk, db: object
) -> None:
    created = local("clerk_sync_user_syncs_total", source="after_login", outcome="created")
    unchanged = local("clerk_sync_user_syncs_total", source="after_login", outcome="unchanged")
    fetched = local("clerk_sync_clerk_api_request_duration_seconds_count", operation="get_user", result="ok")
    malformed = local("clerk_sync_session_token_rejections_total", code="token_malformed")
    missing = local("clerk_sync_session_token_rejections_total", code="token_missing")

    fake_clerk.add_user("user_metrics_login")
    token = fake_clerk.mint_token("user_metrics_login")
    for _ in range(2):
        assert http.post("/after-login", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert http.post("/after-login", headers={"Authorization": "Bearer not-a-jwt"}).status_code == 401
    assert http.post("/after-login").status_code == 401

    assert local("clerk_sync_user_syncs_total", source="after_login", outcome="created") == created + 1
    assert local("clerk_sync_user_syncs_total", source="after_login", outcome="unchanged") == unchanged + 1
    assert (
        local("clerk_sync_clerk_api_request_duration_seconds_count", operation="get_user", result="ok")
        == fetched + 2
    )
    assert local("clerk_sync_session_token_rejections_total", code="token_malformed") == malformed + 1
    assert local("clerk_sync_session_token_rejections_total", code="token_missing") == missing + 1
    route = {"route": "/after-login", "method": "POST"}
    assert local("clerk_sync_http_request_duration_seconds_count", **route, status_class="4xx") >= 2


def test_webhook_labels_are_bounded_unknown_types_count_as_other(http: httpx.Client, db: object) -> None:
    other = local("clerk_sync_webhook_events_total", event_type="other")
    ignored = local("clerk_sync_user_syncs_total", source="webhook", outcome="ignored")
    duplicate = local("clerk_sync_user_syncs_total", source="webhook", outcome="duplicate")
    deleted = local("clerk_sync_user_syncs_total", source="webhook", outcome="deleted")
    queries = local("clerk_sync_engine_request_duration_seconds_count", operation="query")

    body, headers = webhook("user.evil_" + uuid.uuid4().hex, {"id": "user_x"})
    assert http.post("/webhooks/clerk", content=body, headers=headers).status_code == 200
    body, headers = webhook("user.deleted", {"id": "user_gone", "deleted": True})
    for _ in range(2):  # the second copy is a duplicate delivery
        assert http.post("/webhooks/clerk", content=body, headers=headers).status_code == 200
    unmatched = local(
        "clerk_sync_http_request_duration_seconds_count", route="unmatched", method="GET", status_class="4xx"
    )
    assert http.get(f"/users/{uuid.uuid4().hex}").status_code == 404

    assert local("clerk_sync_webhook_events_total", event_type="other") == other + 1
    assert local("clerk_sync_user_syncs_total", source="webhook", outcome="ignored") == ignored + 1
    assert local("clerk_sync_user_syncs_total", source="webhook", outcome="deleted") == deleted + 1
    assert local("clerk_sync_user_syncs_total", source="webhook", outcome="duplicate") == duplicate + 1
    # A write is one batched engine round trip (no interactive transaction to commit): the new deletion
    # and its duplicate each made at least one.
    assert local("clerk_sync_engine_request_duration_seconds_count", operation="query") >= queries + 2
    route = {"route": "unmatched", "method": "GET", "status_class": "4xx"}
    assert local("clerk_sync_http_request_duration_seconds_count", **route) == unmatched + 1
    exposed = metrics_store.exposition()[0].decode()
    assert "user.evil" not in exposed and "/users/" not in exposed


def test_backfill_and_reconcile_count_what_they_write_and_dry_runs_nothing(
    clerk_app: Flask, clerk: FakeClerk, db: object
) -> None:
    def syncs(source: str) -> dict[str, float]:
        name = "clerk_sync_user_syncs_total"
        return {outcome: local(name, source=source, outcome=outcome) for outcome in metrics.OUTCOMES}

    def change(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {o: after[o] - before[o] for o in before if after[o] != before[o]}

    backfill, reconcile = syncs("backfill"), syncs("reconcile")
    ids = add_users(clerk, 5)
    assert invoke(clerk_app, "backfill", "--page-size", "2").exit_code == 0
    assert change(backfill, syncs("backfill")) == {"created": 5}

    clerk.remove_user(ids[0])  # deleted in Clerk, no webhook
    assert invoke(clerk_app, "reconcile", "--dry-run").exit_code == 0
    assert change(reconcile, syncs("reconcile")) == {}
    assert invoke(clerk_app, "reconcile").exit_code == 0
    assert change(reconcile, syncs("reconcile")) == {"unchanged": 4, "deleted": 1}
    assert change(backfill, syncs("backfill")) == {"created": 5}


def test_clerk_calls_are_labelled_by_result(fake_clerk: FakeClerk) -> None:
    fake_clerk.heal()
    api = ClerkAPI(fake_clerk.url, fake_clerk.secret_key, timeout=0.5)
    dead = ClerkAPI(f"http://127.0.0.1:{free_port()}", fake_clerk.secret_key, timeout=0.5)
    cases = [("404", lambda: api.get_user("user_nobody"))]
    for status, result in ((401, "401"), (429, "429"), (503, "5xx"), (403, "4xx")):
        cases.append(
            (result, lambda status=status: (fake_clerk.fail_with(status, times=1), api.get_user("u")))
        )
    cases.append(("timeout", lambda: (fake_clerk.delay(2, times=1), api.get_user("u"))))
    cases.append(("unreachable", lambda: dead.get_user("u")))
    try:
        for result, call in cases:
            before = local(
                "clerk_sync_clerk_api_request_duration_seconds_count", operation="get_user", result=result
            )
            with pytest.raises(ClerkAPIError):
                call()
            after = local(
                "clerk_sync_clerk_api_request_duration_seconds_count", operation="get_user", result=result
            )
            assert after == before + 1, result
        listed = local(
            "clerk_sync_clerk_api_request_duration_seconds_count", operation="list_users", result="ok"
        )
        api.list_users()
        assert (
            local("clerk_sync_clerk_api_request_duration_seconds_count", operation="list_users", result="ok")
            == listed + 1
        )
    finally:
        fake_clerk.heal()
        api.close()
        dead.close()


def test_jwks_fetches_are_counted_by_result(fake_clerk: FakeClerk) -> None:
    fake_clerk.heal()
    ok, unavailable = (
        local("clerk_sync_jwks_fetches_total", result="ok"),
        local("clerk_sync_jwks_fetches_total", result="unavailable"),
    )
    verifier = SessionTokenVerifier(
        jwt_key=None,
        api_url=fake_clerk.url,
        secret_key=fake_clerk.secret_key,
        authorized_parties=(),
        jwks_refetch_interval=0,
    )
    try:
        fake_clerk.fail_with(503, times=1, on="jwks")
        with pytest.raises(ClerkAPIError):
            verifier.verify(fake_clerk.mint_token("user_jwks"))
        verifier.verify(fake_clerk.mint_token("user_jwks"))
        with pytest.raises(InvalidSessionToken):
            verifier.verify("not-a-jwt")
    finally:
        fake_clerk.heal()
        verifier.close()
    assert local("clerk_sync_jwks_fetches_total", result="unavailable") == unavailable + 1
    assert local("clerk_sync_jwks_fetches_total", result="ok") == ok + 1


def test_database_failures_are_classed_transient_or_permanent() -> None:
    unreachable = {"user_facing_error": {"error_code": "P1001", "message": "Can't reach database server"}}
    assert metrics.database_failure_class(httpx.ConnectError("refused")) == "transient"
    assert metrics.database_failure_class(prisma_errors.ClientNotConnectedError()) == "transient"
    assert metrics.database_failure_class(prisma_errors.DataError(unreachable)) == "transient"
    unique = {"user_facing_error": {"error_code": "P2002", "message": "Unique constraint failed"}}
    assert metrics.database_failure_class(prisma_errors.UniqueViolationError(unique)) == "permanent"
