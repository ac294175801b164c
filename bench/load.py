"""Load generators: wrk with pre-signed requests (default), or Python threads with httpx.

Both send a fixed list of prepared requests over keep-alive connections, each
request once, after a warm-up that is not counted, and fill a `PhaseResult`.
wrk (Debian's, installed by scripts/bench) runs one thread driving all the
connections from a Lua script (bench/wrk_requests.lua) that replays raw request
bytes, so the load generator costs a few percent of a core instead of a core.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .cpu import CpuMeter, CpuSnapshot
from .workload import Req

WRK_SCRIPT = Path(__file__).with_name("wrk_requests.lua")


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


@dataclass
class PhaseResult:
    key: str
    title: str
    variant: str = ""
    planned: int = 0
    done: int = 0
    wall: float = 0.0
    p50: float = math.nan
    p99: float = math.nan
    max: float = math.nan
    statuses: Counter[str] = field(default_factory=Counter)
    timed_out: bool = False
    cpu: dict[str, float] = field(default_factory=dict)
    load_before: str = ""
    load_after: str = ""

    @property
    def rps(self) -> float:
        return self.done / self.wall if self.wall > 0 else math.nan

    def cpu_ms(self, group: str) -> float:
        return self.cpu.get(group, math.nan) / self.done * 1000 if self.done else math.nan

    def set_latencies(self, latencies: list[float]) -> None:
        ordered = sorted(latencies)
        self.done = len(ordered)
        self.p50, self.p99 = percentile(ordered, 0.5), percentile(ordered, 0.99)
        self.max = ordered[-1] if ordered else math.nan


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


# --- wrk ------------------------------------------------------------------------------------------


def _lua_string(data: bytes) -> str:
    return '"' + "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\{b:03d}" for b in data) + '"'


def _raw_request(req: Req, host: str) -> bytes:
    headers = {"Host": host, **req.headers, "Content-Length": str(len(req.content))}
    head = f"{req.method} {req.path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode() + b"\r\n" + req.content


def _write_requests(path: Path, requests: list[Req], host: str) -> None:
    with path.open("w") as out:
        out.write("return {\n")
        for req in requests:
            out.write(_lua_string(_raw_request(req, host)) + ",\n")
        out.write("}\n")


def _run_wrk(base_url: str, requests: list[Req], connections: int, time_limit: float) -> tuple[dict, float]:
    """One wrk run over `requests`; returns its summary and its own CPU seconds."""
    host = base_url.split("://", 1)[1]
    with tempfile.TemporaryDirectory(prefix="clerk-sync-wrk-") as tmp:
        requests_file = Path(tmp) / "requests.lua"
        _write_requests(requests_file, requests, host)
        duration = max(1, math.ceil(time_limit))
        command = [
            "wrk", "-t1", f"-c{min(connections, len(requests))}", f"-d{duration}s", "--timeout", "30s",
            "-s", str(WRK_SCRIPT), base_url, "--", str(requests_file), str(len(requests)),
        ]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.strip() == b"DONE":
                # wrk would sleep out its -d; SIGINT makes it stop now and print its summary.
                process.send_signal(signal.SIGINT)
                break
        stdout, stderr = process.communicate()  # reaps it; its CPU shows in our children's times
    text = b"".join(lines).decode() + stdout.decode()
    summary = next((json.loads(line) for line in text.splitlines() if line.startswith("{")), None)
    if summary is None:
        raise RuntimeError(f"wrk failed ({process.returncode}): {stderr.decode()[-2000:]}")
    return summary, summary.get("cpu", 0.0)


def run_wrk_phase(
    result: PhaseResult, base_url: str, requests: list[Req], warmup: list[Req], *,
    connections: int, time_limit: float, meter: CpuMeter,
) -> PhaseResult:  # fmt: skip
    """Send `requests` with wrk over `connections` keep-alive connections; fills `result`."""
    if warmup:
        _run_wrk(base_url, warmup, connections, time_limit)
    result.load_before = loadavg()
    children_before = os.times()
    start = meter.snapshot()
    summary, _ = _run_wrk(base_url, requests, connections, time_limit)
    end = meter.snapshot()
    children_after = os.times()
    result.load_after = loadavg()
    # wrk has exited and been reaped: its CPU is in this process's children times.
    wrk_cpu = (children_after.children_user - children_before.children_user) + (
        children_after.children_system - children_before.children_system
    )
    result.done = int(summary["counted"])
    result.wall = summary["duration_us"] / 1e6
    result.p50, result.p99, result.max = (summary[k] / 1e6 for k in ("p50_us", "p99_us", "max_us"))
    result.statuses = Counter({str(k): int(v) for k, v in summary["statuses"].items()})
    if summary.get("errors"):
        result.statuses.update({f"socket:{k}": v for k, v in summary["errors"].items() if v})
    result.timed_out = result.done < len(requests)
    result.cpu = CpuMeter.delta(start, end, extra_client=wrk_cpu)
    return result


# --- Python threads -------------------------------------------------------------------------------


def start_line(
    clients: int, time_limit: float, meter: CpuMeter
) -> tuple[threading.Barrier, list[float], list[CpuSnapshot]]:
    """A barrier for the client threads and this one; when all are warm, CPU is sampled, the clock starts."""
    deadline = [math.inf]
    start: list[CpuSnapshot] = []

    def go() -> None:
        start.append(meter.snapshot())
        deadline[0] = time.perf_counter() + time_limit

    return threading.Barrier(clients + 1, action=go), deadline, start


def wait_for(threads: list[threading.Thread], barrier: threading.Barrier, deadline: list[float]) -> None:
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


def run_python_phase(
    result: PhaseResult, base_url: str, requests: list[Req], warmup: list[Req], *,
    connections: int, time_limit: float, meter: CpuMeter,
) -> PhaseResult:  # fmt: skip
    """Send `requests` from `connections` threads, each with a keep-alive httpx client; fills `result`."""
    counter = itertools.count()
    records: list[tuple[float, float, str] | None] = [None] * len(requests)
    barrier, deadline, start = start_line(connections, time_limit, meter)
    failures: list[BaseException] = []

    def client_thread(index: int) -> None:
        try:
            with httpx.Client(base_url=base_url, timeout=30) as client:
                for req in warmup[index::connections]:
                    with contextlib.suppress(httpx.HTTPError):
                        client.request(req.method, req.path, content=req.content, headers=req.headers)
                barrier.wait()
                while True:
                    i = next(counter)
                    if i >= len(requests) or time.perf_counter() > deadline[0]:
                        return
                    req = requests[i]
                    t0 = time.perf_counter()
                    try:
                        response = client.request(
                            req.method, req.path, content=req.content, headers=req.headers
                        )
                        records[i] = (t0, time.perf_counter(), str(response.status_code))
                    except httpx.HTTPError as exc:
                        records[i] = (t0, time.perf_counter(), type(exc).__name__)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.abort()

    threads = [threading.Thread(target=client_thread, args=(i,), daemon=True) for i in range(connections)]
    for thread in threads:
        thread.start()
    result.load_before = loadavg()
    wait_for(threads, barrier, deadline)
    end = meter.snapshot()
    result.load_after = loadavg()
    if failures:
        raise RuntimeError(f"{result.key}: a client thread failed: {failures[0]!r}") from failures[0]
    done = [r for r in records if r is not None]
    result.set_latencies([t1 - t0 for t0, t1, _ in done])
    result.statuses = Counter(status for _, _, status in done)
    result.wall = (max(t1 for _, t1, _ in done) - min(t0 for t0, _, _ in done)) if done else 0.0
    result.timed_out = len(done) < len(requests)
    result.cpu = CpuMeter.delta(start[0], end)
    return result


PhaseRunner = Callable[..., PhaseResult]


def runner(name: str) -> PhaseRunner:
    """The load generator by name: "wrk" or "python"."""
    return {"wrk": run_wrk_phase, "python": run_python_phase}[name]
