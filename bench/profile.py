"""Where one webhook's time goes: a sequential, per-stage split of `user.created` for a new user.

- Over the served app with one client: end-to-end latency of the ceiling's no-op
  and of a real webhook.
- In process (`create_app(...)`, `app.test_client()`) with the engine wrapped by
  bench/engine_timing.mjs (the same engine, timers around it from outside):
  perf_counter wrappers around svix `Webhook.verify`, `QueryBuilder.build`,
  `SyncHTTPEngine.request` (each engine round trip), the answer's JSON decoding,
  pydantic `model_parse` and the transaction client's `Prisma._copy`; inside
  Node: server time per request, time in the wasm engine and in node-postgres,
  and the translation layer timed on the same queries.
- The same webhooks under cProfile.
- The engine's SQL statements for one webhook, replayed with psycopg on one
  connection: the database's own time.
- One engine round trip's floor: GET /status through the client's HTTP path.

The Node side's CPU, split by what runs it, is bench/engine_profile.py.
"""

from __future__ import annotations

import cProfile
import gc
import math
import os
import pstats
import re
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

from .ceilings import LOCK_SQL, RECORD_DELIVERY_SQL, UPSERT_USER_SQL, cuid_like
from .cpu import CpuMeter, proc_table
from .inprocess import app_on_engine
from .load import loadavg, percentile
from .workload import Req, fake_user_id, noop_requests, user_events

ENGINE_TIMING = Path(__file__).with_name("engine_timing.mjs")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


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
        if content.startswith('{"batch"'):
            return "batch"
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


def run_profile(db_url: str, server_url: str, k: int, tmp: Path, meter: CpuMeter) -> None:
    print()
    print(f"=== Profile: where one webhook's time goes (sequential, {k} webhooks per pass) ===")
    print(f"load average at start: {loadavg()}")

    # 1. Over gunicorn, one client: the no-op and a real webhook, end to end.
    with httpx.Client(base_url=server_url, timeout=30) as client:
        _sequential(client, noop_requests(50) + user_events(100))
        e2e_noop = _sequential(client, noop_requests(k))
        e2e_webhook = _sequential(client, user_events(k))

    # 2. In process, with the timed engine.
    with app_on_engine(db_url, _engine_shim(tmp)) as app:
        prisma_client = app.extensions["database"].client()
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

        import prisma._compat
        import prisma.actions
        import prisma.engine._http
        import svix.webhooks
        from prisma._base_client import BasePrisma
        from prisma._builder import QueryBuilder

        from prisma_engines import transport

        # Warm-up: V8 and the wasm engine reach full speed only after a few hundred queries.
        post_all(user_events(300) + noop_requests(50))
        gc.collect()
        gc.freeze()  # the load phases' leftovers shouldn't make this process's collections slower

        timers = StageTimers()
        timers.wrap(svix.webhooks.Webhook, "verify", "verify")
        timers.wrap(QueryBuilder, "build_query", "build")
        timers.wrap(prisma.engine._http.SyncHTTPEngine, "request", "engine", _engine_operation)
        timers.wrap(transport.EngineResponse, "json", "engine_json")
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
    table = proc_table()
    own = os.times()
    backends = meter.backend_pids()
    return {
        "python": own.user + own.system,
        "engine": table[engine_pid][2] if engine_pid in table else 0.0,
        "postgres": sum(table[pid][2] for pid in backends if pid in table),
    }


def _replay_sql(db_url: str, k: int) -> list[float]:
    """The statements the engine sends for a new user's webhook; one connection, no prepared statements."""
    times = []
    with psycopg.connect(db_url, autocommit=True, prepare_threshold=None) as conn:
        for i in range(k + 20):
            clerk_id, msg_id, now = fake_user_id(), f"msg_{uuid.uuid4().hex}", datetime.now(UTC)
            fields = (f"{clerk_id}@example.com", "Ada", "Lovelace", "ada", "https://img.clerk.com/x", now)
            t0 = time.perf_counter()
            conn.execute("BEGIN")
            conn.execute(LOCK_SQL, (clerk_id,)).fetchall()
            conn.execute(RECORD_DELIVERY_SQL, (msg_id, "user.created", clerk_id, now, clerk_id)).fetchall()
            upsert = (cuid_like(), clerk_id, *fields, now, now, *fields, now, clerk_id)
            conn.execute(UPSERT_USER_SQL, upsert).fetchall()
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
        f"  per webhook: {calls.get('build', 0) / k:.2f} QueryBuilder.build_query, "
        f"{calls.get('model_parse', 0) / k:.2f} model_parse, {node['pg']['calls'] / k:.2f} SQL statements, "
        f"{calls.get('tx_copy', 0) / k:.2f} Prisma._copy"
    )
    operations = sorted(
        (key.split(":", 1)[1], seconds) for key, seconds in stage.items() if key.startswith("engine:")
    )
    print("  each round trip, mean ms behind SyncHTTPEngine.request (Python-side, in order of the code):")
    order = [
        "batch",
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
        (f"Prisma query building (QueryBuilder.build_query x{calls.get('build', 0) / k:.0f})", build, 0),
        (f"Pydantic model parsing (model_parse x{calls.get('model_parse', 0) / k:.0f})", parse, 0),
        ("Prisma tx client copy (Prisma._copy in db.tx)", tx_copy, 0),
        (
            f"Engine round trips (SyncHTTPEngine.request x{calls.get('engine', 0) / k:.0f}), of which:",
            engine,
            0,
        ),
        ("Python<->Node HTTP (transport, sockets; request - Node server time)", py_node_http, 1),
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
    ("prisma QueryBuilder.build_query", "prisma/_builder.py", "build_query"),
    ("prisma SyncHTTPEngine.request (engine round trip)", "prisma/engine/_http.py", "request"),
    ("  engine transport (prisma_engines/transport.py)", "prisma_engines/transport.py", "request"),
    ("  engine response JSON decode", "prisma_engines/transport.py", "json"),
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
