"""clerk-sync benchmark: webhook ingestion and after-login, against measured ceilings.

Run it (one command; it sets everything up and tears it down):

    .venv/bin/python bench/run.py              # load phases, about 40 s on 2 cores
    .venv/bin/python bench/run.py --profile    # plus the per-stage split of one webhook (~1 min)
    .venv/bin/python bench/run.py --help       # sizes, phases, gunicorn workers/threads

It is a benchmark, not a test. It needs what `scripts/test` needs (a PostgreSQL on
127.0.0.1:5432 or the project-local one from `prisma_engines.localdb`, Node, the
generated Prisma client) and only the pinned packages of requirements-dev.txt.

What one run does, on one machine and one database:

1. Creates a database `clerk_sync_bench_<random>`, applies `migrations/`, starts a
   FakeClerk (tests/fakeclerk.py, in a child process so it doesn't share the load
   generator's GIL) and `gunicorn --config gunicorn.conf.py` as a subprocess. gunicorn
   inherits this environment, so the query engine is whatever PRISMA_QUERY_ENGINE_BINARY
   selects; when it is unset the offline engine (prisma/query-engine.mjs)
   is used. --workers/--threads set WEB_CONCURRENCY/GUNICORN_THREADS (defaults: the
   environment's, else gunicorn.conf.py's 2 x 4).
2. Load phases. Each uses --clients threads, each with its own keep-alive httpx client
   (or psycopg connection), pulling from one shared list of requests that was prepared
   (signed, tokens minted) before timing. The threads first send --warmup requests of the
   same kind (not counted: V8 needs a few hundred queries per engine before the offline
   engine runs at full speed); timing starts when all threads are warm. A phase stops after
   its requests (--requests, --login-requests, --db-ceiling-requests) or --phase-timeout
   seconds, whichever comes first.
     c1  DB ceiling: the engine's own `INSERT INTO "User" ... ON CONFLICT ("clerkId") DO
         UPDATE ... RETURNING` (same columns and values), one statement per user, with
         psycopg (default settings), autocommit, one connection per client thread.
     c2  HTTP + verification ceiling: signed POST /webhooks/clerk whose body is
         `{"type": ""}`. svix verifies the signature, then `_parse_event` rejects the
         payload (400 invalid_payload): the full HTTP + verification path, no DB work.
     a   webhooks: `user.created` / `user.updated` (alternating), one distinct user each.
     a2  webhooks with 50% duplicates: each message sent twice; the copy goes
         --dup-lag positions after the original (so most copies find it committed).
     b   after-login, first login: one distinct user per token (row created).
     b2  after-login, returning users: the same tokens again (row unchanged).
   For each phase it prints throughput, p50/p99/max latency, status/outcome counts,
   the load average, and CPU time per request by process group (this client, gunicorn
   workers, query engines, PostgreSQL backends of the bench database, FakeClerk) and
   what the rest of the machine used meanwhile. Then (a), (a2), (b), (b2) as ratios
   to c1 and c2: throughput ratio (phase req/s / ceiling req/s) and latency ratio
   (phase p50 / ceiling p50, phase p99 / ceiling p99).
3. With --profile, the per-stage split of one webhook (user.created for a new user),
   sequential, so stage times add up:
     - over gunicorn with one client: end-to-end latency of a no-op (c2's request) and
       of a real webhook;
     - in process (`create_app(...)`, `app.test_client()`), with a query engine wrapped by
       bench/engine_timing.mjs (the same engine, timers around it from outside):
       perf_counter wrappers around svix `Webhook.verify`, `QueryBuilder.build`,
       `SyncHTTPEngine.request` (each engine round trip), the engine response's JSON
       decoding, pydantic `model_parse`, and the transaction's `Prisma._copy`; inside
       Node: server time per request, time in the wasm engine, time in node-postgres,
       and the translation layer timed on the same queries; the engine round trips per
       webhook, counted by route;
     - the same webhooks under cProfile: pstats cumulative time of those functions;
     - the same SQL statements the engine issues for one webhook (captured with the
       engine's LOG_QUERIES), replayed with psycopg on one connection: the database time;
     - one engine round trip's floor: GET /status through the client's own HTTP path.
   HTTP client<->gunicorn is the over-gunicorn no-op minus the in-process no-op. The
   in-process part always runs the offline engine (that is what engine_timing.mjs wraps).

Everything is cleaned up at the end, also on errors and Ctrl-C: gunicorn gets SIGTERM
(which stops its engines), the FakeClerk stops, the database is dropped.

The machine may be shared: compare the "others" CPU column and the load average before
trusting a figure, and re-run when another process was busy.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import cProfile
import gc
import itertools
import json
import logging
import math
import multiprocessing
import os
import pstats
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psycopg  # noqa: E402
from svix.webhooks import Webhook  # noqa: E402

from prisma_engines import engines, localdb, migrations  # noqa: E402
from tests.fakeclerk import DEFAULT_AZP, FakeClerk, build_clerk_user  # noqa: E402
from tests.served import gunicorn_server  # noqa: E402

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"clerk-sync bench webhook secret!").decode()
ENGINE_TIMING = ROOT / "bench" / "engine_timing.mjs"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The statement the engine issues for `prisma.user.upsert` (captured with LOG_QUERIES), in psycopg syntax.
USER_COLUMNS = '"id", "clerkId", "email", "firstName", "lastName", "username", "imageUrl", '
USER_COLUMNS += '"clerkUpdatedAt", "deletedAt", "createdAt", "updatedAt"'
USER_RETURNING = ", ".join(f'"public"."User".{c.strip()}' for c in USER_COLUMNS.split(","))
UPSERT_USER_SQL = (
    'INSERT INTO "public"."User" ("id","clerkId","email","firstName","lastName","username","imageUrl",'
    '"clerkUpdatedAt","createdAt","updatedAt") VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) '
    'ON CONFLICT ("clerkId") DO UPDATE SET "email" = %s, "firstName" = %s, "lastName" = %s, '
    '"username" = %s, "imageUrl" = %s, "clerkUpdatedAt" = %s, "updatedAt" = %s '
    'WHERE ("public"."User"."clerkId" = %s AND 1=1) RETURNING ' + USER_RETURNING
)
DELIVERY_RETURNING = ", ".join(
    f'"public"."WebhookDelivery"."{c}"'
    for c in ("svixId", "eventType", "clerkUserId", "outcome", "processedAt")
)
# The engine's statements for one new user's webhook, in order (BEGIN and COMMIT included).
FIND_DELIVERY_SQL = (
    f'SELECT {DELIVERY_RETURNING} FROM "public"."WebhookDelivery" '
    'WHERE ("public"."WebhookDelivery"."svixId" = %s AND 1=1) LIMIT %s OFFSET %s'
)
LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"
FIND_USER_SQL = (
    f'SELECT {USER_RETURNING} FROM "public"."User" '
    'WHERE ("public"."User"."clerkId" = %s AND 1=1) LIMIT %s OFFSET %s'
)
CREATE_DELIVERY_SQL = (
    'INSERT INTO "public"."WebhookDelivery" ("svixId","eventType","clerkUserId","outcome","processedAt") '
    f"VALUES (%s,%s,%s,%s,%s) RETURNING {DELIVERY_RETURNING}"
)

log = logging.getLogger("bench")


# --- small helpers -------------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def fake_user_id() -> str:
    return "user_" + uuid.uuid4().hex[:24]


def cuid_like() -> str:
    return "c" + uuid.uuid4().hex[:24]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


# --- CPU accounting from /proc -------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, str, float]]:
    """pid -> (ppid, comm, cpu seconds) for every process."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        rest = stat.rsplit(")", 1)[1].split()
        table[int(entry.name)] = (int(rest[1]), comm, (int(rest[11]) + int(rest[12])) / CLK_TCK)
    return table


def _machine_busy() -> float:
    """CPU seconds the whole machine spent not idle, since boot."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / CLK_TCK


@dataclass
class CpuSnapshot:
    at: float
    machine: float
    groups: dict[str, dict[int, float]]


class CpuMeter:
    """CPU seconds per process group: this client, gunicorn, engines, PostgreSQL backends, FakeClerk."""

    GROUPS = ("client", "gunicorn", "engine", "postgres", "fakeclerk")

    def __init__(self, server_url: str, db_name: str) -> None:
        self.server_url = server_url
        self.db_name = db_name
        self.gunicorn_pid: int | None = None
        self.fakeclerk_pid: int | None = None

    def _backend_pids(self) -> set[int]:
        with psycopg.connect(localdb.database_url(self.server_url, "postgres"), autocommit=True) as conn:
            rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.db_name,))
            return {int(row[0]) for row in rows}

    def snapshot(self) -> CpuSnapshot:
        table = _proc_table()
        children: dict[int, list[int]] = defaultdict(list)
        for pid, (ppid, _, _) in table.items():
            children[ppid].append(pid)
        groups: dict[str, dict[int, float]] = {name: {} for name in self.GROUPS}
        own = os.times()
        groups["client"][os.getpid()] = own.user + own.system
        if self.gunicorn_pid in table:
            groups["gunicorn"][self.gunicorn_pid] = table[self.gunicorn_pid][2]
            for worker in children[self.gunicorn_pid]:
                groups["gunicorn"][worker] = table[worker][2]
                for engine in children[worker]:
                    groups["engine"][engine] = table[engine][2]
        if self.fakeclerk_pid in table:
            groups["fakeclerk"][self.fakeclerk_pid] = table[self.fakeclerk_pid][2]
        for pid in self._backend_pids():
            if pid in table:
                groups["postgres"][pid] = table[pid][2]
        return CpuSnapshot(time.perf_counter(), _machine_busy(), groups)

    @staticmethod
    def delta(start: CpuSnapshot, end: CpuSnapshot) -> dict[str, float]:
        """CPU seconds per group between two snapshots, plus `others` (the rest of the machine)."""
        used = {}
        for name, pids in end.groups.items():
            before = start.groups.get(name, {})
            # A process that appeared during the phase started from zero.
            used[name] = sum(cpu - before.get(pid, 0.0) for pid, cpu in pids.items())
        used["others"] = max(0.0, (end.machine - start.machine) - sum(used.values()))
        used["wall"] = end.at - start.at
        return used


# --- results ------------------------------------------------------------------------------------


@dataclass
class PhaseResult:
    key: str
    title: str
    planned: int
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    wall: float = 0.0
    timed_out: bool = False
    cpu: dict[str, float] = field(default_factory=dict)
    load_before: str = ""
    load_after: str = ""
    workers: Counter[int] = field(default_factory=Counter)

    @property
    def done(self) -> int:
        return len(self.latencies)

    @property
    def rps(self) -> float:
        return self.done / self.wall if self.wall > 0 else math.nan

    def p(self, q: float) -> float:
        return percentile(sorted(self.latencies), q)


# --- the load generator ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Req:
    path: str
    content: bytes
    headers: dict[str, str]


def run_http_phase(
    result: PhaseResult,
    base_url: str,
    requests: list[Req],
    warmup: list[Req],
    *,
    clients: int,
    time_limit: float,
    meter: CpuMeter,
    classify: Callable[[int, bytes, httpx.Headers], str],
) -> PhaseResult:
    """Send `requests` from `clients` keep-alive clients; fills `result`."""
    counter = itertools.count()
    records: list[tuple[float, float, str, str] | None] = [None] * len(requests)
    barrier, deadline, start = _start_line(clients, time_limit, meter)
    failures: list[BaseException] = []

    def client_thread(index: int) -> None:
        try:
            with httpx.Client(base_url=base_url, timeout=30) as client:
                for req in warmup[index::clients]:
                    with contextlib.suppress(httpx.HTTPError):
                        client.post(req.path, content=req.content, headers=req.headers)
                barrier.wait()
                while True:
                    i = next(counter)
                    if i >= len(requests) or time.perf_counter() > deadline[0]:
                        return
                    req = requests[i]
                    t0 = time.perf_counter()
                    try:
                        response = client.post(req.path, content=req.content, headers=req.headers)
                        t1 = time.perf_counter()
                        records[i] = (t0, t1, str(response.status_code), classify(*_parts(response)))
                    except httpx.HTTPError as exc:
                        records[i] = (t0, time.perf_counter(), type(exc).__name__, "")
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.abort()

    threads = [threading.Thread(target=client_thread, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    result.load_before = loadavg()
    _wait_for(threads, barrier, deadline)
    end = meter.snapshot()
    result.load_after = loadavg()
    if failures:
        raise RuntimeError(f"{result.key}: a client thread failed: {failures[0]!r}") from failures[0]
    done = [r for r in records if r is not None]
    result.timed_out = len(done) < len(requests)
    result.latencies = [t1 - t0 for t0, t1, _, _ in done]
    result.statuses = Counter(status for _, _, status, _ in done)
    result.outcomes = Counter(outcome for _, _, _, outcome in done if outcome)
    result.wall = (max(t1 for _, t1, _, _ in done) - min(t0 for t0, _, _, _ in done)) if done else 0.0
    result.cpu = CpuMeter.delta(start[0], end)
    return result


def _start_line(
    clients: int, time_limit: float, meter: CpuMeter
) -> tuple[threading.Barrier, list[float], list[CpuSnapshot]]:
    """A barrier for the client threads and this one; when all are warm, CPU is sampled, the clock starts."""
    deadline = [math.inf]
    start: list[CpuSnapshot] = []

    def go() -> None:
        start.append(meter.snapshot())
        deadline[0] = time.perf_counter() + time_limit

    return threading.Barrier(clients + 1, action=go), deadline, start


def _wait_for(threads: list[threading.Thread], barrier: threading.Barrier, deadline: list[float]) -> None:
    """Join the client threads; on Ctrl-C or SIGTERM, stop them after their current request."""
    try:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait()
        for thread in threads:
            thread.join()
    except BaseException:
        deadline[0] = -math.inf
        barrier.abort()
        raise


def _parts(response: httpx.Response) -> tuple[int, bytes, httpx.Headers]:
    return response.status_code, response.content, response.headers


def webhook_outcome(status: int, content: bytes, headers: httpx.Headers) -> str:
    # Classified after the response is read; cheap compared with the request.
    try:
        body = json.loads(content)
    except ValueError:
        return "not-json"
    if status == 200:
        return f"{body.get('status')}:{body.get('outcome')}"
    return str(body.get("error", {}).get("code"))


def login_outcome(status: int, content: bytes, headers: httpx.Headers) -> str:
    if status == 200:
        return headers.get("X-Clerk-Sync-Outcome", "?")
    try:
        return str(json.loads(content).get("error", {}).get("code"))
    except ValueError:
        return "not-json"


def run_db_ceiling(
    result: PhaseResult, url: str, n: int, *, clients: int, time_limit: float, meter: CpuMeter
) -> PhaseResult:
    """c1: the engine's upsert statement for the same table and values, as fast as psycopg sends it."""
    now = datetime.now(UTC)

    def params(clerk_id: str) -> tuple[Any, ...]:
        fields = (
            f"{clerk_id}@example.com",
            "Ada",
            "Lovelace",
            clerk_id[-12:],
            "https://img.clerk.com/x",
            now,
        )
        return (cuid_like(), clerk_id, *fields, now, now, *fields, now, clerk_id)

    rows = [params(fake_user_id()) for _ in range(n)]
    warmup = [params(fake_user_id()) for _ in range(clients * 4)]
    counter = itertools.count()
    records: list[tuple[float, float] | None] = [None] * n
    barrier, deadline, start = _start_line(clients, time_limit, meter)
    # CPU is sampled again while the connections are still open: their backends exit with them.
    ends: list[CpuSnapshot] = []
    finish_line = threading.Barrier(clients, action=lambda: ends.append(meter.snapshot()))
    failures: list[BaseException] = []

    def client_thread(index: int) -> None:
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                for row in warmup[index::clients]:
                    conn.execute(UPSERT_USER_SQL, row).fetchall()
                barrier.wait()
                while True:
                    i = next(counter)
                    if i >= n or time.perf_counter() > deadline[0]:
                        break
                    t0 = time.perf_counter()
                    conn.execute(UPSERT_USER_SQL, rows[i]).fetchall()
                    records[i] = (t0, time.perf_counter())
                finish_line.wait()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)
            barrier.abort()
            finish_line.abort()

    threads = [threading.Thread(target=client_thread, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    result.load_before = loadavg()
    _wait_for(threads, barrier, deadline)
    end = ends[0] if ends else meter.snapshot()
    result.load_after = loadavg()
    if failures:
        raise RuntimeError(f"{result.key}: a client thread failed: {failures[0]!r}") from failures[0]
    done = [r for r in records if r is not None]
    result.timed_out = len(done) < n
    result.latencies = [t1 - t0 for t0, t1 in done]
    result.statuses = Counter({"ok": len(done)})
    result.wall = (max(t1 for _, t1 in done) - min(t0 for t0, _ in done)) if done else 0.0
    result.cpu = CpuMeter.delta(start[0], end)
    return result


# --- requests, prepared before timing ---------------------------------------------------------


def webhook_request(event_type: str, data: Any, *, msg_id: str | None = None) -> Req:
    body = json.dumps(
        {"data": data, "object": "event", "type": event_type, "timestamp": int(time.time() * 1000)}
    )
    return signed_request(body, msg_id=msg_id)


def signed_request(body: str, *, msg_id: str | None = None) -> Req:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    now = datetime.now(UTC)
    headers = {
        "svix-id": msg_id,
        "svix-timestamp": str(int(now.timestamp())),
        "svix-signature": Webhook(WEBHOOK_SECRET).sign(msg_id, now, body),
        "content-type": "application/json",
    }
    return Req("/webhooks/clerk", body.encode(), headers)


def user_events(n: int) -> list[Req]:
    """`user.created` / `user.updated` alternating, each for a new, distinct user."""
    types = ("user.created", "user.updated")
    return [webhook_request(types[i % 2], build_clerk_user(fake_user_id())) for i in range(n)]


def with_duplicates(messages: list[Req], lag: int) -> list[Req]:
    """Each message twice; the copy `lag` positions after its original (interleaved)."""
    order: list[Req] = []
    pending: list[Req] = []
    for message in messages:
        order.append(message)
        pending.append(message)
        if len(pending) > lag:
            order.append(pending.pop(0))
    order.extend(pending)
    return order


def noop_requests(n: int) -> list[Req]:
    return [signed_request(json.dumps({"type": ""})) for _ in range(n)]


def login_requests(tokens: list[str]) -> list[Req]:
    return [Req("/after-login", b"", {"Authorization": f"Bearer {token}"}) for token in tokens]


# --- the fake Clerk, in its own process ---------------------------------------------------------


def _fake_clerk_main(conn: Any, n_users: int, token_ttl: int) -> None:
    with FakeClerk() as fake:
        ids = [fake_user_id() for _ in range(n_users)]
        for user_id in ids:
            fake.add_user(user_id, email=f"{user_id}@example.com")
        tokens = [fake.mint_token(user_id, exp_in=token_ttl) for user_id in ids]
        conn.send({"url": fake.url, "secret_key": fake.secret_key, "tokens": tokens})
        with contextlib.suppress(EOFError, KeyboardInterrupt):
            conn.recv()  # until told to stop, or the parent is gone


@contextlib.contextmanager
def fake_clerk_process(n_users: int, token_ttl: int) -> Iterator[tuple[dict[str, Any], int]]:
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_fake_clerk_main, args=(child, n_users, token_ttl), daemon=True)
    process.start()
    try:
        if not parent.poll(120):
            raise RuntimeError("the FakeClerk process did not start")
        yield parent.recv(), process.pid  # type: ignore[misc]
    finally:
        with contextlib.suppress(OSError):
            parent.send("stop")
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join()


# --- gunicorn ----------------------------------------------------------------------------------


@dataclass
class Gunicorn:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def worker_counts(self, since: int) -> tuple[Counter[int], int]:
        """Requests per worker pid in the request log after byte offset `since`."""
        counts: Counter[int] = Counter()
        with self.log_path.open("rb") as handle:
            handle.seek(since)
            data = handle.read()
        for line in data.splitlines():
            if line.startswith(b"{") and b'"event": "request"' in line:
                with contextlib.suppress(ValueError):
                    counts[json.loads(line)["pid"]] += 1
        return counts, since + len(data)

    def log_size(self) -> int:
        return self.log_path.stat().st_size


@contextlib.contextmanager
def bench_gunicorn(env: dict[str, str], log_path: Path) -> Iterator[Gunicorn]:
    with gunicorn_server(env, log_path) as served:
        yield Gunicorn(served.process, served.url, served.log_path)


@contextlib.contextmanager
def bench_database(server_url: str) -> Iterator[tuple[str, str]]:
    name = f"clerk_sync_bench_{uuid.uuid4().hex[:10]}"
    localdb.create_database(server_url, name)
    try:
        url = localdb.database_url(server_url, name)
        migrations.apply_migrations(url, migrations.MIGRATIONS_DIR)
        yield name, url
    finally:
        localdb.drop_database(server_url, name)


# --- printing -----------------------------------------------------------------------------------


def print_phase_table(phases: list[PhaseResult], expected_workers: int) -> None:
    print()
    header = f"{'phase':<48} {'done/planned':>13} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    print(header + "  load1 before/after")
    print("-" * (len(header) + 21))
    for r in phases:
        flag = " (time limit hit)" if r.timed_out else ""
        print(
            f"{r.key + '  ' + r.title:<48} {f'{r.done}/{r.planned}':>13} {r.rps:>8.1f} {ms(r.p(0.5)):>8} "
            f"{ms(r.p(0.99)):>8} {ms(max(r.latencies, default=math.nan)):>8}  "
            f"{r.load_before.split()[0]}/{r.load_after.split()[0]}{flag}"
        )
    print()
    print("Statuses and outcomes:")
    for r in phases:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r.statuses.items()))
        outcomes = ", ".join(f"{k}: {v}" for k, v in r.outcomes.most_common())
        workers = ""
        if r.workers:
            workers = "; requests per gunicorn worker (incl. warm-up): " + "/".join(
                str(v) for _, v in sorted(r.workers.items())
            )
            busiest = max(r.workers.values()) / sum(r.workers.values())
            if expected_workers > 1 and (len(r.workers) < expected_workers or busiest > 0.7):
                workers += " (uneven: keep-alive connections stay on the worker that accepted them)"
        print(f"  {r.key:<3} {statuses}" + (f"; {outcomes}" if outcomes else "") + workers)


def print_cpu_table(phases: list[PhaseResult], cores: int) -> None:
    print()
    print("CPU per request (ms of CPU time; whole-phase totals / requests done) and machine use:")
    cols = ("client", "gunicorn", "engine", "postgres", "fakeclerk")
    print(
        f"  {'phase':<5}"
        + "".join(f"{c:>10}" for c in cols)
        + f"{'ours':>9}  {'cores busy: ours + others':>26}"
    )
    for r in phases:
        if not r.cpu or not r.done:
            continue
        ours = sum(r.cpu[c] for c in cols)
        per = [r.cpu[c] / r.done * 1000 for c in cols]
        wall = r.cpu["wall"]
        print(
            f"  {r.key:<5}"
            + "".join(f"{v:>10.2f}" for v in per)
            + f"{ours / r.done * 1000:>9.2f}  {ours / wall:>12.2f} + {r.cpu['others'] / wall:.2f} of {cores}"
        )
    print("  (client = this process: the load generator, also psycopg for c1; engine = the query engines,")
    print("   children of the gunicorn workers; postgres = backends connected to the bench database;")
    print("   others = every other process on the machine during the phase)")


def print_ratios(phases: dict[str, PhaseResult]) -> None:
    c1, c2 = phases.get("c1"), phases.get("c2")
    print()
    print("Ratios to the ceilings (throughput: phase req/s / ceiling req/s; latency: phase / ceiling):")
    print(
        f"  {'phase':<5} {'vs c1 DB ceiling: thr, p50x, p99x':>36}"
        f"   {'vs c2 HTTP+verify: thr, p50x, p99x':>36}"
    )
    for key in ("a", "a2", "b", "b2"):
        r = phases.get(key)
        if r is None or not r.done:
            continue
        cells = []
        for ceiling in (c1, c2):
            if ceiling is None or not ceiling.done:
                cells.append(f"{'n/a':>36}")
                continue
            thr = r.rps / ceiling.rps
            p50 = r.p(0.5) / ceiling.p(0.5)
            p99 = r.p(0.99) / ceiling.p(0.99)
            cells.append(f"{f'{thr * 100:.1f}%, {p50:.1f}x, {p99:.1f}x':>36}")
        print(f"  {key:<5} {cells[0]}   {cells[1]}")


# --- profile: the per-stage split of one webhook --------------------------------------------------


class StageTimers:
    """perf_counter wrappers around functions, accumulating wall time per stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        self._patches: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, attr: str, stage: str, detail: Callable[..., str] | None = None) -> None:
        """Time `owner.attr` as `stage`; `detail(*args, **kwargs)` also times it as `stage:<detail>`."""
        original = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
        function = original.__func__ if isinstance(original, staticmethod | classmethod) else original
        seconds, calls = self.seconds, self.calls

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - t0
                seconds[stage] += elapsed
                calls[stage] += 1
                if detail is not None:
                    key = f"{stage}:{detail(*args, **kwargs)}"
                    seconds[key] += elapsed
                    calls[key] += 1

        replacement = type(original)(timed) if isinstance(original, staticmethod | classmethod) else timed
        setattr(owner, attr, replacement)
        self._patches.append((owner, attr, original))

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def restore(self) -> None:
        for owner, attr, original in reversed(self._patches):
            setattr(owner, attr, original)
        self._patches.clear()


_ROOT_FIELD = re.compile(r"result:\s*(\w+)")


def _engine_operation(engine: Any, method: str, path: str, *, content: Any = None, **_: Any) -> str:
    """What an engine request does: the query's root field (`upsertOneUser`), or the route."""
    if path == "/" and isinstance(content, str):
        match = _ROOT_FIELD.search(content)
        return match.group(1) if match else "query"
    return f"{method} {re.sub(r'/transaction/[^/]+/', '/transaction/:id/', path)}"


def _engine_shim(directory: Path) -> Path:
    shim = directory / "query-engine-timed"
    shim.write_text(f'#!/bin/sh\nexec node {ENGINE_TIMING} "$@"\n')
    shim.chmod(0o755)
    return shim


def _sequential(client: httpx.Client, requests: list[Req]) -> list[float]:
    times = []
    for req in requests:
        t0 = time.perf_counter()
        response = client.post(req.path, content=req.content, headers=req.headers)
        times.append(time.perf_counter() - t0)
        if response.status_code not in (200, 400):
            raise RuntimeError(f"unexpected {response.status_code}: {response.text[:300]}")
    return times


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def run_profile(db_url: str, server: Gunicorn, k: int, tmp: Path, meter: CpuMeter) -> None:
    print()
    print(f"=== Profile: where one webhook's time goes (sequential, {k} webhooks per pass) ===")
    print(f"load average at start: {loadavg()}")

    # 1. Over gunicorn, one client: the no-op and a real webhook, end to end.
    with httpx.Client(base_url=server.url, timeout=30) as client:
        _sequential(client, noop_requests(50) + user_events(100))
        e2e_noop = _sequential(client, noop_requests(k))
        e2e_webhook = _sequential(client, user_events(k))

    # 2. In process, with the timed engine.
    from app import create_app
    from app.config import Settings

    previous_engine = os.environ.get("PRISMA_QUERY_ENGINE_BINARY")
    os.environ["PRISMA_QUERY_ENGINE_BINARY"] = str(_engine_shim(tmp))
    try:
        settings = Settings(
            database_url=db_url,
            clerk_webhook_signing_secret=WEBHOOK_SECRET,
            clerk_secret_key="sk_test_unused_by_the_profile",
        )
        app = create_app(settings)
        database = app.extensions["database"]
        prisma_client = database.client()
    finally:
        if previous_engine is None:
            os.environ.pop("PRISMA_QUERY_ENGINE_BINARY", None)
        else:
            os.environ["PRISMA_QUERY_ENGINE_BINARY"] = previous_engine
    devnull = open(os.devnull, "w")  # noqa: SIM115 - closed below
    for handler in logging.getLogger("app").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(devnull)  # keep formatting the log lines (a real cost), drop the output
    engine_url = prisma_client._engine.url
    engine_pid = prisma_client._engine.process.pid
    test_client = app.test_client()

    def post_all(requests: list[Req]) -> list[float]:
        times = []
        for req in requests:
            t0 = time.perf_counter()
            response = test_client.post(req.path, data=req.content, headers=req.headers)
            times.append(time.perf_counter() - t0)
            if response.status_code not in (200, 400):
                raise RuntimeError(
                    f"unexpected {response.status_code}: {response.get_data(as_text=True)[:300]}"
                )
        return times

    try:
        import prisma._compat
        import prisma._sync_http
        import prisma.actions
        import prisma.engine._http
        import svix.webhooks
        from prisma._base_client import BasePrisma
        from prisma._builder import QueryBuilder

        # Warm-up: V8 and the wasm engine reach full speed only after a few hundred queries.
        post_all(user_events(300) + noop_requests(50))
        gc.collect()
        gc.freeze()  # the load phases' leftovers shouldn't make this process's collections slower

        timers = StageTimers()
        timers.wrap(svix.webhooks.Webhook, "verify", "verify")
        timers.wrap(QueryBuilder, "build", "build")
        timers.wrap(prisma.engine._http.SyncHTTPEngine, "request", "engine", _engine_operation)
        timers.wrap(prisma._sync_http.Response, "json", "engine_json")
        timers.wrap(prisma.actions, "model_parse", "model_parse")
        timers.wrap(BasePrisma, "_copy", "tx_copy")
        try:
            inproc_noop = post_all(noop_requests(k))
            noop_verify = timers.seconds["verify"]
            timers.reset()
            httpx.post(f"{engine_url}/__bench/reset", timeout=10)
            events = user_events(k)
            cpu_before = _profile_cpu(meter, engine_pid)
            inproc_webhook = post_all(events)
            cpu = {
                name: (after - cpu_before[name]) / k
                for name, after in _profile_cpu(meter, engine_pid).items()
            }
            node = httpx.get(f"{engine_url}/__bench/stats", timeout=60).json()
            stage = dict(timers.seconds)
            calls = dict(timers.calls)
            # The floor of one engine round trip: GET /status through the client's own HTTP path.
            timers.reset()
            httpx.post(f"{engine_url}/__bench/reset", timeout=10)
            floor_cpu = _profile_cpu(meter, engine_pid)
            for _ in range(k):
                prisma_client._engine.request("GET", "/status")
            floor_cpu = {
                name: (v - floor_cpu[name]) / k for name, v in _profile_cpu(meter, engine_pid).items()
            }
            status_node = httpx.get(f"{engine_url}/__bench/stats", timeout=60).json()
            floor = (
                timers.seconds["engine"] / k,
                status_node["requests"]["GET /status"]["ms"] / 1000 / k,
                floor_cpu["python"],
                floor_cpu["engine"],
            )
            # Redeliveries of the same messages: the duplicate path.
            timers.reset()
            httpx.post(f"{engine_url}/__bench/reset", timeout=10)
            inproc_dup = post_all(events)
            dup_node = httpx.get(f"{engine_url}/__bench/stats", timeout=60).json()
            dup_engine_calls = timers.calls["engine"]
        finally:
            timers.restore()

        # 3. cProfile over the same path.
        events = user_events(k)
        profiler = cProfile.Profile()
        profiler.enable()
        post_all(events)
        profiler.disable()
    finally:
        database.close()
        devnull.close()

    # 4. The engine's SQL for one webhook, replayed with psycopg.
    replay = _replay_sql(db_url, k)

    _print_split(
        k=k,
        e2e_noop=e2e_noop,
        e2e_webhook=e2e_webhook,
        inproc_noop=inproc_noop,
        noop_verify=noop_verify,
        inproc_webhook=inproc_webhook,
        stage=stage,
        calls=calls,
        node=node,
        replay=replay,
        cpu=cpu,
        floor=floor,
    )
    print()
    dup_routes = ", ".join(
        f"{route} x{v['calls'] / k:.2f}" for route, v in sorted(dup_node["requests"].items())
    )
    print(
        f"Duplicate delivery (same messages again, in process): {ms(_mean(inproc_dup))} ms mean, "
        f"{dup_engine_calls / k:.2f} engine round trips ({dup_routes})"
    )
    _print_cprofile(profiler, k)


def _profile_cpu(meter: CpuMeter, engine_pid: int) -> dict[str, float]:
    table = _proc_table()
    own = os.times()
    backends = meter._backend_pids()
    return {
        "python": own.user + own.system,
        "engine": table[engine_pid][2] if engine_pid in table else 0.0,
        "postgres": sum(table[pid][2] for pid in backends if pid in table),
    }


def _replay_sql(db_url: str, k: int) -> list[float]:
    """The 7 statements the engine sends for a new user's webhook; one connection, no prepared statements."""
    times = []
    with psycopg.connect(db_url, autocommit=True, prepare_threshold=None) as conn:
        for i in range(k + 20):
            clerk_id, msg_id, now = fake_user_id(), f"msg_{uuid.uuid4().hex}", datetime.now(UTC)
            fields = (f"{clerk_id}@example.com", "Ada", "Lovelace", "ada", "https://img.clerk.com/x", now)
            t0 = time.perf_counter()
            conn.execute("BEGIN")
            conn.execute(FIND_DELIVERY_SQL, (msg_id, 1, 0)).fetchall()
            conn.execute(LOCK_SQL, (clerk_id,)).fetchall()
            conn.execute(FIND_USER_SQL, (clerk_id, 1, 0)).fetchall()
            conn.execute(UPSERT_USER_SQL, (cuid_like(), clerk_id, *fields, now, now, *fields, now, clerk_id))
            conn.execute(CREATE_DELIVERY_SQL, (msg_id, "user.created", clerk_id, "created", now)).fetchall()
            conn.execute("COMMIT")
            if i >= 20:  # the first ones warm up
                times.append(time.perf_counter() - t0)
    return times


def _print_split(
    *,
    k: int,
    e2e_noop: list[float],
    e2e_webhook: list[float],
    inproc_noop: list[float],
    noop_verify: float,
    inproc_webhook: list[float],
    stage: dict[str, float],
    calls: dict[str, int],
    node: dict[str, Any],
    replay: list[float],
    cpu: dict[str, float],
    floor: tuple[float, float, float, float],
) -> None:
    per = 1000.0 / k  # seconds summed over k webhooks -> ms per webhook
    total_inproc = sum(inproc_webhook) * per
    http = (_mean(e2e_noop) - _mean(inproc_noop)) * 1000
    verify = stage.get("verify", 0.0) * per
    build = stage.get("build", 0.0) * per
    parse = stage.get("model_parse", 0.0) * per
    engine = stage.get("engine", 0.0) * per
    engine_json = stage.get("engine_json", 0.0) * per
    tx_copy = stage.get("tx_copy", 0.0) * per
    server_ms = sum(v["ms"] for v in node["requests"].values()) / k
    wasm_ms = node["wasm"]["ms"] / k
    pg_ms = node["pg"]["ms"] / k
    translation = node["translation"]
    queries_per = sum(v["calls"] for route, v in node["requests"].items() if route == "POST /") / k
    translate_ms = queries_per * (translation["requestMsPerQuery"] + translation["resultMsPerAnswer"])
    node_other = server_ms - wasm_ms - translate_ms
    py_node_http = engine - server_ms
    rest = total_inproc - verify - build - parse - engine - tx_copy
    total = total_inproc + http

    print()
    print("Sequential latency, mean (p50) ms:")
    print(
        f"  over gunicorn, 1 client: no-op {ms(_mean(e2e_noop))} ({ms(percentile(sorted(e2e_noop), 0.5))}),",
        end="",
    )
    print(f" webhook {ms(_mean(e2e_webhook))} ({ms(percentile(sorted(e2e_webhook), 0.5))})")
    print(f"  in process (test_client): no-op {ms(_mean(inproc_noop))}, webhook {ms(_mean(inproc_webhook))}")
    print()
    routes = ", ".join(f"{route} x{v['calls'] / k:.2f}" for route, v in sorted(node["requests"].items()))
    print(f"Engine round trips per webhook: {calls.get('engine', 0) / k:.2f} ({routes})")
    print(
        f"  per webhook: {calls.get('build', 0) / k:.2f} QueryBuilder.build, "
        f"{calls.get('model_parse', 0) / k:.2f} model_parse, {node['pg']['calls'] / k:.2f} SQL statements, "
        f"{calls.get('tx_copy', 0) / k:.2f} Prisma._copy"
    )
    operations = sorted(
        (key.split(":", 1)[1], seconds) for key, seconds in stage.items() if key.startswith("engine:")
    )
    print("  each round trip, mean ms behind SyncHTTPEngine.request (Python-side, in order of the code):")
    order = [
        "POST /transaction/start",
        "findUniqueWebhookDelivery",
        "executeRaw",
        "findUniqueUser",
        "upsertOneUser",
        "createOneWebhookDelivery",
        "POST /transaction/:id/commit",
    ]
    operations.sort(key=lambda item: order.index(item[0]) if item[0] in order else len(order))
    for name, seconds in operations:
        n = calls.get(f"engine:{name}", 1)
        print(f"    {name:<32} x{n / k:.2f}  {seconds / n * 1000:>6.2f} ms")
    server = ", ".join(
        f"{route} {v['ms'] / v['calls']:.2f} ms"
        for route, v in sorted(node["requests"].items())
        if v["calls"]
    )
    print(f"  Node server time per request: {server}")
    print()
    print("Per-stage split of one webhook (user.created, new user), ms per webhook and share of the total:")
    rows = [
        ("HTTP client<->gunicorn (e2e no-op - in-process no-op)", http, 0),
        ("Signature check (svix Webhook.verify)", verify, 0),
        (f"Prisma query building (QueryBuilder.build x{calls.get('build', 0) / k:.0f})", build, 0),
        (f"Pydantic model parsing (model_parse x{calls.get('model_parse', 0) / k:.0f})", parse, 0),
        ("Prisma tx client copy (Prisma._copy in db.tx)", tx_copy, 0),
        (
            f"Engine round trips (SyncHTTPEngine.request x{calls.get('engine', 0) / k:.0f}), of which:",
            engine,
            0,
        ),
        ("Python<->Node HTTP (httpx, sockets; request - Node server time)", py_node_http, 1),
        ("  incl. JSON decoding of the answers in Python", engine_json, 2),
        ("Node: GraphQL<->JSON translation (translate.mjs, timed on the same queries)", translate_ms, 1),
        ("Node: HTTP server, JSON, glue (server time - wasm - translation)", node_other, 1),
        ("wasm query engine (excl. node-postgres)", wasm_ms - pg_ms, 1),
        (f"Database: node-postgres + PostgreSQL ({node['pg']['calls'] / k:.0f} statements)", pg_ms, 1),
        ("Flask, app code, logging, rest of Python (in-process total - the above)", rest, 0),
    ]
    for label, value, depth in rows:
        print(f"  {'   ' * depth}{label:<{78 - 3 * depth}} {value:>7.2f} ms {value / total * 100:>5.1f}%")
    print(f"  {'Total (in-process + HTTP)':<78} {total:>7.2f} ms")
    print(
        f"  {'Measured end to end over gunicorn (1 client), for comparison':<78} "
        f"{_mean(e2e_webhook) * 1000:>7.2f} ms"
    )
    print(
        f"  Database reference: the same {node['pg']['calls'] / k:.0f} statements replayed with psycopg "
        "on one "
        f"connection: {ms(_mean(replay))} ms mean, {ms(percentile(sorted(replay), 0.5))} p50"
    )
    print(
        f"  One engine round trip's floor (GET /status through SyncHTTPEngine.request): {ms(floor[0])} ms, "
        f"of which Node server time {ms(floor[1])} ms; CPU {ms(floor[2])} ms Python + {ms(floor[3])} ms Node"
    )
    print(
        f"  CPU per webhook in this pass: Python (this process) {ms(cpu['python'])} ms, query engine (Node) "
        f"{ms(cpu['engine'])} ms, PostgreSQL backends {ms(cpu['postgres'])} ms"
    )
    print(
        f"  (no-op in process: {ms(_mean(inproc_noop))} ms, of which verify {noop_verify / k * 1000:.2f} ms; "
        "translation "
        f"per query {translation['requestMsPerQuery'] * 1000:.0f} us + per answer "
        f"{translation['resultMsPerAnswer'] * 1000:.0f} us)"
    )


CPROFILE_FUNCTIONS = [
    ("whole loop (test_client.post x k)", "werkzeug/test.py", "open"),
    ("flask full_dispatch_request", "flask/app.py", "full_dispatch_request"),
    ("svix Webhook.verify", "svix/webhooks.py", "verify"),
    ("prisma QueryBuilder.build", "prisma/_builder.py", "build"),
    ("prisma SyncHTTPEngine.request (engine round trip)", "prisma/engine/_http.py", "request"),
    ("  httpx Client.send", "httpx/_client.py", "send"),
    ("  engine response JSON decode", "prisma/_sync_http.py", "json"),
    ("pydantic model_parse", "prisma/_compat.py", "model_parse"),
    ("Prisma._copy (per transaction)", "prisma/_base_client.py", "_copy"),
    ("logging callHandlers", "logging/__init__.py", "callHandlers"),
    ("new TCP connections (socket.create_connection)", "/socket.py", "create_connection"),
]


def _print_cprofile(profiler: cProfile.Profile, k: int) -> None:
    stats = pstats.Stats(profiler)
    table: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    print()
    print(f"cProfile of the in-process path ({k} webhooks; cumulative time, ms per webhook; the profiler")
    print("inflates Python-heavy stages, so use it for attribution, the split above for figures):")
    total = None
    for label, suffix, name in CPROFILE_FUNCTIONS:
        matches = [v for key, v in table.items() if key[0].endswith(suffix) and key[2] == name]
        ncalls = sum(v[1] for v in matches)
        cumtime = sum(v[3] for v in matches)
        total = total or cumtime or 1.0
        print(
            f"  {label:<52} {ncalls / k:>6.2f} calls {cumtime / k * 1000:>8.2f} ms "
            f"{cumtime / total * 100:>6.1f}%"
        )
    print("  top self time:")
    top = sorted(table.items(), key=lambda item: item[1][2], reverse=True)[:10]
    for (filename, lineno, name), (_, ncalls, tottime, _, _) in top:
        where = "/".join(Path(filename).parts[-2:]) if filename != "~" else "builtin"
        print(f"    {tottime / k * 1000:>7.3f} ms  {ncalls / k:>7.1f} calls  {name} ({where}:{lineno})")


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads (default 8)")
    parser.add_argument("--requests", type=int, default=2000, help="requests per webhook/ceiling phase")
    parser.add_argument("--login-requests", type=int, default=1000, help="requests per after-login phase")
    parser.add_argument(
        "--db-ceiling-requests",
        type=int,
        default=10000,
        help="upserts in c1 (fast, so more of them; default 10000)",
    )
    parser.add_argument("--warmup", type=int, default=300, help="warm-up requests per phase (default 300)")
    parser.add_argument(
        "--phase-timeout", type=float, default=45.0, help="max seconds per phase (default 45)"
    )
    parser.add_argument("--dup-lag", type=int, default=16, help="positions between a message and its copy")
    parser.add_argument("--workers", type=int, help="gunicorn workers (WEB_CONCURRENCY)")
    parser.add_argument("--threads", type=int, help="gunicorn threads per worker (GUNICORN_THREADS)")
    parser.add_argument("--profile", action="store_true", help="also print the per-stage split of a webhook")
    parser.add_argument("--profile-requests", type=int, default=300, help="webhooks per profile pass")
    parser.add_argument(
        "--phases",
        default="c1,c2,a,a2,b,b2",
        help="comma-separated subset of c1,c2,a,a2,b,b2 (default: all)",
    )
    parser.add_argument("--postgres-url", help="PostgreSQL server URL (default: prisma_engines.localdb)")
    args = parser.parse_args(argv)
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(args.phases) - {"c1", "c2", "a", "a2", "b", "b2"}
    if unknown:
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    if args.clients < 1 or args.requests < 1 or args.login_requests < 1:
        parser.error("--clients, --requests and --login-requests must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    # Clean up (gunicorn, FakeClerk, database) on Ctrl-C and on SIGTERM too.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cores = os.cpu_count() or 1
    env = dict(os.environ)
    engine_note = env.get("PRISMA_QUERY_ENGINE_BINARY")
    if not engine_note:
        env.update(engines.offline_env())
        os.environ.update(engines.offline_env())
        engine_note = f"{engines.OFFLINE_QUERY_ENGINE} (offline; PRISMA_QUERY_ENGINE_BINARY was unset)"
    elif args.profile and Path(engine_note).resolve() != engines.OFFLINE_QUERY_ENGINE.resolve():
        print(f"note: the server runs {engine_note}; the --profile split runs the offline engine")
    env.pop("LOG_QUERIES", None)
    if args.workers:
        env["WEB_CONCURRENCY"] = str(args.workers)
    if args.threads:
        env["GUNICORN_THREADS"] = str(args.threads)
    workers = env.get("WEB_CONCURRENCY", "2")
    threads = env.get("GUNICORN_THREADS", "4")

    server_url = args.postgres_url or localdb.server_url()
    warm = max(args.warmup, args.clients)
    login_users = args.login_requests + warm if {"b", "b2"} & set(args.phases) else 1

    print(f"clerk-sync bench, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {cores} CPUs, load average {loadavg()}")
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="clerk-sync-bench-")))
        db_name, db_url = stack.enter_context(bench_database(server_url))
        fake, fake_pid = stack.enter_context(fake_clerk_process(login_users, token_ttl=1800))
        env.update(
            DATABASE_URL=db_url,
            CLERK_API_URL=fake["url"],
            CLERK_SECRET_KEY=fake["secret_key"],
            CLERK_AUTHORIZED_PARTIES=DEFAULT_AZP,
            CLERK_WEBHOOK_SIGNING_SECRET=WEBHOOK_SECRET,
        )
        server = stack.enter_context(bench_gunicorn(env, tmp / "gunicorn.log"))
        meter = CpuMeter(server_url, db_name)
        meter.gunicorn_pid = server.process.pid
        meter.fakeclerk_pid = fake_pid
        print(f"server: gunicorn {workers} workers x {threads} threads (gthread) at {server.url}")
        print(f"engine: {engine_note}")
        print(f"database: {db_name} on {server_url}; FakeClerk at {fake['url']}")
        print(
            f"clients: {args.clients} threads, httpx keep-alive; {args.requests} requests per webhook phase, "
            f"{args.login_requests} per after-login phase; {warm} warm-up requests each; "
            f"time limit {args.phase_timeout:.0f} s per phase"
        )
        print(
            "c2 is the HTTP+verification ceiling: a correctly signed POST /webhooks/clerk with body "
            '{"type": ""}:'
            "\n  svix verifies it, then _parse_event answers 400 invalid_payload. No DB work, no engine call."
        )

        phases: dict[str, PhaseResult] = {}
        common = {"clients": args.clients, "time_limit": args.phase_timeout, "meter": meter}
        tokens: list[str] = fake["tokens"]

        def http_phase(key: str, title: str, requests: list[Req], warmup: list[Req], classify: Any) -> None:
            print(f"  running {key}: {title} ({len(requests)} requests)...", flush=True)
            offset = server.log_size()
            result = PhaseResult(key, title, len(requests))
            run_http_phase(result, server.url, requests, warmup, classify=classify, **common)
            result.workers, _ = server.worker_counts(offset)
            phases[key] = result

        print()
        if "c1" in args.phases:
            n = args.db_ceiling_requests
            print(f"  running c1: DB ceiling ({n} upserts)...", flush=True)
            phases["c1"] = run_db_ceiling(
                PhaseResult("c1", "DB ceiling: psycopg upsert, autocommit", n), db_url, n, **common
            )
        if "c2" in args.phases:
            http_phase(
                "c2",
                "HTTP+verify ceiling: signed no-op -> 400",
                noop_requests(args.requests),
                noop_requests(warm),
                webhook_outcome,
            )
        if "a" in args.phases:
            http_phase(
                "a",
                "webhooks, distinct users",
                user_events(args.requests),
                user_events(warm),
                webhook_outcome,
            )
        if "a2" in args.phases:
            http_phase(
                "a2",
                "webhooks, 50% duplicates",
                with_duplicates(user_events(args.requests // 2), args.dup_lag),
                user_events(warm),
                webhook_outcome,
            )
        login_warm, login_tokens = login_requests(tokens[:warm]), login_requests(tokens[warm:])
        if "b" in args.phases:
            http_phase("b", "after-login, first login", login_tokens, login_warm, login_outcome)
        if "b2" in args.phases:
            http_phase("b2", "after-login, returning users", login_tokens, login_warm, login_outcome)

        ordered = [phases[key] for key in ("c1", "c2", "a", "a2", "b", "b2") if key in phases]
        print_phase_table(ordered, int(workers))
        print_cpu_table(ordered, cores)
        print_ratios(phases)

        if args.profile:
            run_profile(db_url, server, args.profile_requests, tmp, meter)
        print()
        print(
            f"load average at end: {loadavg()}; bench took {time.monotonic() - started:.0f} s (cleaning up)"
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted (gunicorn stopped, database dropped)", file=sys.stderr)
        sys.exit(130)
