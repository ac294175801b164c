"""The Node engine's CPU for one webhook, split by what runs it (node --cpu-prof).

The app runs in process against an engine started as `node --cpu-prof
prisma/query-engine.mjs`. After a warm-up, k webhooks (`user.created`, new
users) are sent one at a time; the profile V8 writes when the engine exits is
cut to that window (V8's clock and `time.monotonic()` are both CLOCK_MONOTONIC)
and each sample is charged to the innermost frame that belongs to a part:

- node-postgres: pg, pg-protocol, @prisma/adapter-pg, @prisma/driver-adapter-utils;
- wasm engine: the WebAssembly module and its wasm-bindgen glue (query_engine_bg.js);
- GraphQL parsing: prisma/src/graphql.mjs;
- translation: prisma/src/translate.mjs (incl. our JSON stringify);
- engine glue: prisma/src/server.mjs and engine.mjs (routing, JSON.parse/stringify of bodies);
- HTTP server: Node's http internals (and the socket work they call);
- GC, and the rest (V8 and Node internals with no JavaScript caller of ours).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from prisma_engines import engines

from .inprocess import app_on_engine
from .workload import Req, user_events

PARTS = (
    ("node-postgres", ("/node_modules/pg/", "/node_modules/pg-", "/adapter-pg/", "/driver-adapter-utils/")),
    ("wasm engine", ("wasm://", "query_engine_bg")),
    ("GraphQL parsing", ("/src/graphql.mjs",)),
    ("translation", ("/src/translate.mjs",)),
    ("engine glue (server.mjs, engine.mjs)", ("/src/server.mjs", "/src/engine.mjs", "query-engine.mjs")),
    ("HTTP server (node:http)", ("node:_http", "node:http", "node:internal/http")),
)
OTHER = "other (V8/Node internals, timers, streams)"
GC = "garbage collection"


def _shim(directory: Path, profile_dir: Path) -> Path:
    shim = directory / "query-engine-cpu-prof"
    shim.write_text(
        "#!/bin/sh\n"
        f'exec node --cpu-prof --cpu-prof-dir="{profile_dir}" --cpu-prof-interval 200 '
        f'"{engines.OFFLINE_QUERY_ENGINE}" "$@"\n'
    )
    shim.chmod(0o755)
    return shim


def _part_of(url: str, name: str) -> str | None:
    if name == "(garbage collector)":
        return GC
    if url.startswith("wasm://") or name.startswith("wasm-function") or name.startswith("$"):
        return "wasm engine"
    for part, markers in PARTS:
        if any(marker in url for marker in markers):
            return part
    return None


def split_profile(profile: dict[str, Any], start_us: float, end_us: float) -> Counter[str]:
    """Microseconds per part for the samples taken between `start_us` and `end_us` (monotonic clock)."""
    nodes = {node["id"]: node for node in profile["nodes"]}
    parent = {child: node["id"] for node in profile["nodes"] for child in node.get("children", [])}
    cache: dict[int, str | None] = {}

    def owner(node_id: int) -> str | None:
        if node_id in cache:
            return cache[node_id]
        frame = nodes[node_id]["callFrame"]
        part = _part_of(frame.get("url", ""), frame.get("functionName", ""))
        if part is None and node_id in parent:
            part = owner(parent[node_id])
        cache[node_id] = part
        return part

    totals: Counter[str] = Counter()
    frames: Counter[str] = Counter()
    at = float(profile["startTime"])
    for node_id, delta in zip(profile["samples"], profile["timeDeltas"], strict=False):
        at += delta
        if not start_us <= at <= end_us:
            continue
        name = nodes[node_id]["callFrame"].get("functionName", "")
        if name == "(idle)":
            continue
        part = owner(node_id) or OTHER
        totals[part] += delta
        frame = nodes[node_id]["callFrame"]
        where = frame.get("url", "").rsplit("/", 1)[-1] or "native"
        frames[f"{part}: {name or '(anonymous)'} ({where}:{frame.get('lineNumber', -1) + 1})"] += delta
    totals_frames.clear()
    totals_frames.update(frames)
    return totals


totals_frames: Counter[str] = Counter()
"""Self time per frame of the last `split_profile`, for the top list."""


def run_engine_profile(db_url: str, k: int, tmp: Path) -> dict[str, float]:
    """ms of engine CPU per webhook, per part (and "total"); also printed."""
    profile_dir = tmp / "cpu-prof"
    profile_dir.mkdir(exist_ok=True)
    # The engine exits when the block ends, and V8 writes its profile then.
    with app_on_engine(db_url, _shim(tmp, profile_dir)) as app:
        client = app.test_client()

        def post_all(requests: list[Req]) -> None:
            for req in requests:
                response = client.post(req.path, data=req.content, headers=req.headers)
                if response.status_code != 200:
                    raise RuntimeError(
                        f"unexpected {response.status_code}: {response.get_data(as_text=True)[:300]}"
                    )

        post_all(user_events(300))  # V8 and the wasm engine reach full speed after a few hundred queries
        events = user_events(k)
        start = time.monotonic()
        post_all(events)
        end = time.monotonic()
    files = sorted(profile_dir.glob("*.cpuprofile"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise RuntimeError("node --cpu-prof wrote no profile (did the engine exit cleanly?)")
    profile = json.loads(files[-1].read_text())
    totals = split_profile(profile, start * 1e6, end * 1e6)
    per = {part: us / k / 1000 for part, us in totals.items()}
    per["total"] = sum(totals.values()) / k / 1000
    _print(per, k, end - start)
    return per


def _print(per: dict[str, float], k: int, wall: float) -> None:
    total = per["total"]
    print()
    print(f"Node engine CPU per webhook (node --cpu-prof, {k} sequential new-user webhooks, in process,")
    print(f"{wall / k * 1000:.2f} ms wall each): {total:.2f} ms")
    order = [part for part, _ in PARTS] + [GC, OTHER]
    for part in order:
        value = per.get(part, 0.0)
        print(f"  {part:<44} {value:>6.2f} ms {value / total * 100 if total else 0:>5.1f}%")
    print("  top self time (part: function (file:line)), ms per webhook:")
    for frame, us in totals_frames.most_common(15):
        print(f"    {us / k / 1000:>6.3f}  {frame}")
