"""Server options side by side: throughput, and what 50 slow clients do to everyone else.

    source scripts/setup.sh && python bench/servers.py     # every option, one round
    python bench/servers.py --rounds 2 --only gevent,gthread

It is a benchmark, not a test: it prints figures. Each option serves the same app on
the same database and FakeClerk, one after another (interleaved over --rounds):

- throughput: --clients keep-alive connections (raw sockets from one asyncio loop,
  so the load generator costs little CPU) send for --seconds each:
  `GET /healthz` (one database round trip), then signed no-op webhooks (`{"type": ""}`,
  verified then answered 400: HTTP + verification), then signed `user.created` webhooks;
- slow clients: 50 connections send a request head (or, for slow-body, a body)
  one byte a second for --slow-seconds, while a probe opens a fresh connection every
  0.5 s for `/healthz` or a signed webhook, alternately; a probe fails when it has no
  2xx answer within 1 s.

Options (the app itself is the same in all):
  gevent   gunicorn.conf.py as shipped (gunicorn, gevent workers, body buffered first)
  gthread  gunicorn.conf.py with -k gthread (2 workers x 4 threads), the old default
  nginx    nginx (Debian's, request buffering on) in front of gthread
  granian  granian --interface wsgi, 2 workers x 4 blocking threads
  waitress waitress, one process, 8 threads
Only gunicorn and gevent are project dependencies: an option whose server is not
installed (`pip install granian waitress`, `apt-get install nginx-light`) is skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from prisma_engines import localdb, migrations  # noqa: E402
from tests.attacks import SlowKind, healthz, raw_request, read_answer, under_slow_clients, user_webhook  # noqa: E402
from tests.conftest import WEBHOOK_SECRET, sign_webhook  # noqa: E402
from tests.fakeclerk import FakeClerk  # noqa: E402
from tests.served import free_port  # noqa: E402

OPTIONS = ("gevent", "gthread", "nginx", "granian", "waitress")
NGINX_CONF = """
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  client_header_timeout 5s;
  client_body_timeout 5s;
  client_max_body_size 1m;
  upstream app {{ server 127.0.0.1:{upstream}; keepalive 16; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_request_buffering on;
    }}
  }}
}}
"""


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Server:
    name: str
    url: str
    port: int
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]


def _wait_up(url: str, processes: list[subprocess.Popen[bytes]], log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        if any(p.poll() is not None for p in processes):
            break
        time.sleep(0.2)
    raise RuntimeError(f"server did not come up:\n{log.read_text()[-3000:]}")


def _spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


@contextlib.contextmanager
def serve(option: str, env: dict[str, str], tmp: Path) -> Iterator[Server]:
    port = free_port()
    log = tmp / f"{option}.log"
    py = sys.executable
    gunicorn = [py, "-m", "gunicorn", "--config", "gunicorn.conf.py"]
    host = {"HOST": "127.0.0.1"}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        if option == "gevent":
            processes.append(_spawn(gunicorn, {**env, **host, "PORT": str(port)}, log))
        elif option == "gthread":
            argv = [*gunicorn, "-k", "gthread"]
            processes.append(_spawn(argv, {**env, **host, "PORT": str(port)}, log))
        elif option == "nginx":
            upstream = free_port()
            argv = [*gunicorn, "-k", "gthread"]
            processes.append(_spawn(argv, {**env, **host, "PORT": str(upstream)}, log))
            _wait_up(f"http://127.0.0.1:{upstream}", processes, log)
            conf = tmp / "nginx.conf"
            conf.write_text(NGINX_CONF.format(tmp=tmp, upstream=upstream, port=port))
            nginx = shutil.which("nginx") or "/usr/sbin/nginx"
            processes.append(_spawn([nginx, "-c", str(conf), "-p", str(tmp)], env, log))
        elif option == "granian":
            argv = [py, "-m", "granian", "--interface", "wsgi", "--workers", "2", "--blocking-threads", "4"]
            argv += ["--host", "127.0.0.1", "--port", str(port), "--factory", "app:create_app"]
            processes.append(_spawn(argv, env, log))
        elif option == "waitress":
            argv = [py, "-m", "waitress", "--threads=8", "--host=127.0.0.1", f"--port={port}"]
            argv += ["--call", "app:create_app"]
            processes.append(_spawn(argv, env, log))
        else:
            raise ValueError(option)
        url = f"http://127.0.0.1:{port}"
        _wait_up(url, processes, log)
        yield Server(option, url, port, processes)
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM if "nginx" not in str(process.args) else signal.SIGQUIT)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def noop_webhook() -> bytes:
    body = json.dumps({"type": ""})
    return raw_request("POST", "/webhooks/clerk", body.encode(), sign_webhook(body))


# --- throughput ---------------------------------------------------------------------------------


async def _throughput(port: int, requests: list[bytes], clients: int, seconds: float) -> dict[str, object]:
    statuses: Counter[int | str] = Counter()
    latencies: list[float] = []
    queue = iter(requests)
    stop = time.monotonic() + seconds

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for request in queue:
                if time.monotonic() > stop:
                    return
                started = time.perf_counter()
                writer.write(request)
                try:
                    status = (await asyncio.wait_for(read_answer(reader), 30)).status
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
                    statuses[type(exc).__name__] += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    continue
                latencies.append(time.perf_counter() - started)
                statuses[status] += 1
        finally:
            writer.close()

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.monotonic() - started
    return {
        "rps": len(latencies) / elapsed,
        "p50": percentile(latencies, 0.5) * 1000,
        "p99": percentile(latencies, 0.99) * 1000,
        "statuses": dict(statuses),
    }


def _tree_cpu(roots: list[int]) -> float:
    """CPU seconds used so far by `roots` and all their descendants (workers, engines)."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)] = int(fields[1])
                cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    tree, frontier = set(roots), list(roots)
    while frontier:
        pid = frontier.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        tree.update(children)
        frontier.extend(children)
    return sum(cpu.get(pid, 0.0) for pid in tree)


def throughput(port: int, kind: str, clients: int, seconds: float, roots: list[int]) -> dict[str, object]:
    make = {"healthz": healthz, "noop": noop_webhook, "webhook": user_webhook}[kind]
    # Enough prepared requests that the phase ends by time, not by running out.
    budget = {"healthz": 1500, "noop": 1500, "webhook": 400}[kind]
    requests = [make() for _ in range(int(budget * seconds))]
    warm = [make() for _ in range(clients * 5)]
    asyncio.run(_throughput(port, warm, clients, 30))
    cpu = _tree_cpu(roots)
    result = asyncio.run(_throughput(port, requests, clients, seconds))
    done = sum(n for status, n in result["statuses"].items() if isinstance(status, int))  # type: ignore[attr-defined]
    # CPU per request doesn't depend on the share of a busy machine each server got.
    result["cpu_ms"] = (_tree_cpu(roots) - cpu) * 1000 / max(done, 1)
    return result


# --- slow clients -------------------------------------------------------------------------------


def slow(port: int, kind: SlowKind, n: int, seconds: float) -> dict[str, object]:
    results, stats = asyncio.run(under_slow_clients(port, kind, n, seconds))
    failed = [r for r in results if not (isinstance(r[0], int) and 200 <= r[0] < 300 and r[1] <= 1.0)]
    return {"tried": len(results), "failed": len(failed), "cut_off": stats.cut_off}


def _installed(option: str) -> bool:
    found = (
        bool(shutil.which("nginx") or Path("/usr/sbin/nginx").exists())
        if option == "nginx"
        else importlib.util.find_spec(option) is not None
        if option in ("granian", "waitress")
        else True
    )
    if not found:
        print(f"{option}: not installed, skipped", file=sys.stderr)
    return found


def main(argv: list[str] | None = None) -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--only", default=",".join(OPTIONS))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--slow-seconds", type=float, default=15)
    args = parser.parse_args(argv)
    options = [option for option in args.only.split(",") if _installed(option)]

    server_url = os.environ.get("TEST_POSTGRES_URL") or localdb.server_url()
    name = f"clerk_sync_servers_{uuid.uuid4().hex[:10]}"
    localdb.create_database(server_url, name)
    results: dict[str, list[dict[str, object]]] = {o: [] for o in options}
    try:
        url = localdb.database_url(server_url, name)
        migrations.apply_migrations(url, migrations.MIGRATIONS_DIR)
        with FakeClerk() as clerk, tempfile.TemporaryDirectory() as tmp_dir:
            env = {
                **os.environ,
                "DATABASE_URL": url,
                "CLERK_API_URL": clerk.url,
                "CLERK_SECRET_KEY": clerk.secret_key,
                "CLERK_WEBHOOK_SIGNING_SECRET": WEBHOOK_SECRET,
                "LOG_LEVEL": "WARNING",
            }
            for _ in range(args.rounds):
                for option in options:
                    with serve(option, env, Path(tmp_dir)) as server:
                        row: dict[str, object] = {"load": os.getloadavg()[0]}
                        for kind in ("healthz", "noop", "webhook"):
                            row[kind] = throughput(server.port, kind, args.clients, args.seconds, server.pids)
                        for slow_kind in ("header", "body"):
                            row[f"slow_{slow_kind}"] = slow(server.port, slow_kind, 50, args.slow_seconds)
                        results[option].append(row)
                        print(option, json.dumps(row), flush=True)
    finally:
        localdb.drop_database(server_url, name)

    base = results.get("gthread") or results[options[0]]
    print(
        "\n| server | /healthz req/s | no-op webhook req/s | webhook req/s (p99 ms) | vs gthread "
        "(healthz / no-op / webhook) | server CPU ms per request (healthz / no-op / webhook) "
        "| slow-header probes failed | slow-body probes failed |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for option in options:
        for i, row in enumerate(results[option]):
            ref = base[i]

            def r(kind: str, row: dict[str, object] = row, ref: dict[str, object] = ref) -> float:
                return row[kind]["rps"] / ref[kind]["rps"]  # type: ignore[index]

            h, n, w = (row[k] for k in ("healthz", "noop", "webhook"))
            sh, sb = row["slow_header"], row["slow_body"]
            print(
                f"| {option} | {h['rps']:.0f} | {n['rps']:.0f} | {w['rps']:.0f} ({w['p99']:.0f}) | "  # type: ignore[index]
                f"{r('healthz'):.2f} / {r('noop'):.2f} / {r('webhook'):.2f} | "
                f"{h['cpu_ms']:.1f} / {n['cpu_ms']:.1f} / {w['cpu_ms']:.1f} | "  # type: ignore[index]
                f"{sh['failed']} of {sh['tried']} | {sb['failed']} of {sb['tried']} |"  # type: ignore[index]
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
