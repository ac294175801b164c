"""What metrics cost: webhook throughput with METRICS_ENABLED=1 against =0, interleaved.

    .venv/bin/python bench/metrics_ab.py                 # 8 rounds, about 1-2 min on 2 cores
    .venv/bin/python bench/metrics_ab.py --rounds 12 --requests 600

It is a benchmark, not a test; it needs what `scripts/test` needs. One run:

1. creates a database `clerk_sync_bench_<random>` and applies the migrations;
2. starts two gunicorns side by side (gunicorn.conf.py, 2 workers x 4 threads unless
   WEB_CONCURRENCY / GUNICORN_THREADS say otherwise): A records metrics, B has
   METRICS_ENABLED=0 (no hooks, no files). Only one is under load at a time;
3. warms both up (V8 needs a few hundred queries per engine), then runs --rounds rounds.
   Each round sends --requests signed `user.created` webhooks (one new user each, signed
   before timing) from --clients keep-alive clients to A and to B, in alternating order
   (AB, BA, AB, ...), so drift in the machine's load hits both alike;
4. prints each round's req/s and the server's CPU per webhook (gunicorn master, workers and
   their query engines, from /proc), the per-round ratios A/B and their medians, and an
   excerpt of A's /metrics scrape after the load. On a shared machine the CPU per webhook
   is the steadier figure: other processes slow a phase down but don't add to its CPU;
5. stops both servers and drops the database;
6. times, in a child process in multiprocess mode, the hooks one new-user webhook runs
   (requests in flight up and down, its request latency, its outcome and event type, and
   its engine round trips, as many as the run's scrape counts per webhook), which is the
   CPU metrics add to each webhook, free of the noise of the load phases.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from svix.webhooks import Webhook  # noqa: E402

from prisma_engines import engines, localdb, migrations  # noqa: E402
from tests.fakeclerk import build_clerk_user  # noqa: E402
from tests.served import Served, gunicorn_server  # noqa: E402

SECRET = "whsec_" + base64.b64encode(b"clerk-sync metrics A/B secret!!!").decode()
TOKEN = "metrics-ab-token"
Message = tuple[bytes, dict[str, str]]


def signed_webhooks(count: int) -> list[Message]:
    webhook, now = Webhook(SECRET), datetime.now(UTC)
    messages = []
    for _ in range(count):
        user = build_clerk_user(f"user_ab_{uuid.uuid4().hex}")
        body = json.dumps({"type": "user.created", "data": user, "object": "event"})
        msg_id = f"msg_{uuid.uuid4().hex}"
        headers = {
            "svix-id": msg_id,
            "svix-timestamp": str(int(now.timestamp())),
            "svix-signature": webhook.sign(msg_id, now, body),
            "content-type": "application/json",
        }
        messages.append((body.encode(), headers))
    return messages


def tree_cpu(root: int) -> float:
    """CPU seconds used so far by `root` and all its descendants (exited ones excluded)."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
            ticks[int(entry.name)] = int(fields[11]) + int(fields[12])  # utime + stime
    tree, grew = {root}, True
    while grew:
        added = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= added
        grew = bool(added)
    return sum(ticks.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")


def load(url: str, messages: list[Message], clients: int) -> float:
    """Send every message from `clients` keep-alive clients; returns requests per second."""
    chunks = [messages[i::clients] for i in range(clients)]
    failures: list[int] = []
    http = [httpx.Client(base_url=url, timeout=60) for _ in range(clients)]
    for client in http:  # connect before timing
        client.get("/healthz")
    start = threading.Barrier(clients + 1)

    def run(client: httpx.Client, chunk: list[Message]) -> None:
        start.wait()
        for body, headers in chunk:
            status = client.post("/webhooks/clerk", content=body, headers=headers).status_code
            if status != 200:
                failures.append(status)

    threads = [threading.Thread(target=run, args=pair) for pair in zip(http, chunks, strict=True)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    for client in http:
        client.close()
    if failures:
        raise RuntimeError(f"{len(failures)} webhooks failed, e.g. status {failures[0]}")
    return len(messages) / elapsed


@contextlib.contextmanager
def database() -> Iterator[str]:
    server = localdb.server_url()
    name = f"clerk_sync_bench_{uuid.uuid4().hex[:10]}"
    localdb.create_database(server, name)
    try:
        url = localdb.database_url(server, name)
        migrations.apply_migrations(url, migrations.MIGRATIONS_DIR)
        yield url
    finally:
        localdb.drop_database(server, name)


def scrape_excerpt(served: Served) -> str:
    text = httpx.get(f"{served.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).text
    keep = ("_total{", "_count{", "_sum{", "in_flight ")
    return "\n".join(
        line for line in text.splitlines() if line.startswith("clerk_sync_") and any(k in line for k in keep)
    )


def hook_cost(round_trips: int, calls: int = 20000) -> float:
    """Microseconds of the metrics hooks of one webhook, in a process in multiprocess mode."""
    with tempfile.TemporaryDirectory(prefix="clerk-sync-hooks-") as directory:
        child = subprocess.run(
            [sys.executable, __file__, "--hook-cost-child", f"{calls},{round_trips}"],
            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory},
            capture_output=True,
            text=True,
            check=True,
        )
    return float(child.stdout)


def hook_cost_child(calls: int, round_trips: int) -> None:
    from app import metrics

    def one_webhook() -> None:
        metrics.HTTP_IN_FLIGHT.inc()
        for _ in range(round_trips):
            metrics.ENGINE_DURATION.labels("query").observe(0.001)
        metrics.webhook_applied("user.created", "processed", "created")
        metrics.HTTP_REQUEST_DURATION.labels("/webhooks/clerk", "POST", "2xx").observe(0.01)
        metrics.HTTP_IN_FLIGHT.dec()

    for _ in range(1000):
        one_webhook()
    began = time.process_time()
    for _ in range(calls):
        one_webhook()
    print((time.process_time() - began) / calls * 1e6)


def engine_round_trips_per_webhook(scrape: str) -> int:
    """Engine round trips per webhook in the run, from the scrape's counts."""
    counts = {"engine": 0.0, "webhooks": 0.0}
    for line in scrape.splitlines():
        name, _, number = line.rpartition(" ")
        if name.startswith("clerk_sync_engine_request_duration_seconds_count"):
            counts["engine"] += float(number)
        elif name.startswith("clerk_sync_webhook_events_total"):
            counts["webhooks"] += float(number)
    return round(counts["engine"] / max(counts["webhooks"], 1))


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main(argv: list[str] | None = None) -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--rounds", type=int, default=8, help="A/B pairs (default 8)")
    parser.add_argument("--requests", type=int, default=400, help="webhooks per phase (default 400)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--warmup", type=int, default=400, help="webhooks per server before timing")
    parser.add_argument("--hook-cost-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.hook_cost_child:
        calls, round_trips = map(int, args.hook_cost_child.split(","))
        hook_cost_child(calls, round_trips)
        return 0

    env = dict(os.environ)
    if not env.get("PRISMA_QUERY_ENGINE_BINARY"):
        env.update(engines.offline_env())
    env.pop("LOG_QUERIES", None)
    print(f"metrics A/B, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, load {loadavg()}")
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="clerk-sync-ab-")))
        env.update(DATABASE_URL=stack.enter_context(database()), CLERK_WEBHOOK_SIGNING_SECRET=SECRET)
        servers = {
            "A": stack.enter_context(gunicorn_server({**env, "METRICS_TOKEN": TOKEN}, tmp / "a.log")),
            "B": stack.enter_context(gunicorn_server({**env, "METRICS_ENABLED": "0"}, tmp / "b.log")),
        }
        for served in servers.values():
            load(served.url, signed_webhooks(args.warmup), args.clients)

        rates: dict[str, list[float]] = {"A": [], "B": []}
        cpu: dict[str, list[float]] = {"A": [], "B": []}
        print(f"{args.rounds} rounds x {args.requests} webhooks per phase, {args.clients} clients")
        print("round  order   A req/s   B req/s  A/B req/s   A CPU ms/req  B CPU ms/req  A/B CPU")
        for round_no in range(args.rounds):
            order = "AB" if round_no % 2 == 0 else "BA"
            for name in order:
                messages = signed_webhooks(args.requests)
                before = tree_cpu(servers[name].process.pid)
                rates[name].append(load(servers[name].url, messages, args.clients))
                cpu[name].append((tree_cpu(servers[name].process.pid) - before) / args.requests * 1000)
            a, b, ca, cb = rates["A"][-1], rates["B"][-1], cpu["A"][-1], cpu["B"][-1]
            print(
                f"{round_no + 1:>5}  {order:>5}  {a:>8.1f}  {b:>8.1f}  {a / b:>9.3f}"
                f"   {ca:>12.2f}  {cb:>12.2f}  {ca / cb:>7.3f}"
            )
        ratios = [a / b for a, b in zip(rates["A"], rates["B"], strict=True)]
        cpu_ratios = [a / b for a, b in zip(cpu["A"], cpu["B"], strict=True)]
        median = statistics.median
        print(
            f"medians: A {median(rates['A']):.1f} req/s, B {median(rates['B']):.1f} req/s,"
            f" A/B per round {median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f});"
            f" CPU A {median(cpu['A']):.2f} ms/req, B {median(cpu['B']):.2f} ms/req,"
            f" A/B per round {median(cpu_ratios):.3f} (min {min(cpu_ratios):.3f}, max {max(cpu_ratios):.3f});"
            f" load {loadavg()}"
        )
        print("\nA's scrape after the load (excerpt: counters, histogram counts and sums):")
        excerpt = scrape_excerpt(servers["A"])
        print(excerpt)
    round_trips = engine_round_trips_per_webhook(excerpt)
    cost = hook_cost(round_trips)
    print(
        f"\nCPU of one webhook's metrics hooks ({round_trips} engine round trips, as in the run;"
        f" multiprocess mode, in isolation): {cost:.1f} µs"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
