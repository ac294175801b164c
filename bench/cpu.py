"""CPU seconds per process group, read from /proc: what each request costs, and who paid.

Groups: the load generator (this process, or wrk), each server under test
(gunicorn master and workers), their query engines (the workers' children), the
PostgreSQL backends of the bench database, and the fake Clerk. `others` is the
rest of the machine, so a figure taken while a neighbour was busy shows it.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from dataclasses import dataclass, field

import psycopg

from prisma_engines import localdb

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_table() -> dict[int, tuple[int, str, float]]:
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


def process_cpu(pid: int) -> float:
    """CPU seconds of one process (0 if it is gone)."""
    entry = proc_table().get(pid)
    return entry[2] if entry else 0.0


def machine_busy() -> float:
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


GROUPS = ("client", "gunicorn", "engine", "postgres", "fakeclerk")


@dataclass
class CpuMeter:
    """Snapshots of CPU per group; `delta` turns two into seconds per group."""

    server_url: str
    db_name: str
    servers: list[int] = field(default_factory=list)
    """gunicorn master pids; their children are workers, grandchildren engines."""
    fakeclerk_pid: int | None = None
    client_pids: set[int] = field(default_factory=set)
    """Load generators other than this process (wrk), while they run."""

    def backend_pids(self) -> set[int]:
        with psycopg.connect(localdb.database_url(self.server_url, "postgres"), autocommit=True) as conn:
            rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.db_name,))
            return {int(row[0]) for row in rows}

    def snapshot(self) -> CpuSnapshot:
        table = proc_table()
        children: dict[int, list[int]] = defaultdict(list)
        for pid, (ppid, _, _) in table.items():
            children[ppid].append(pid)
        groups: dict[str, dict[int, float]] = {name: {} for name in GROUPS}
        own = os.times()
        groups["client"][os.getpid()] = own.user + own.system
        for pid in self.client_pids:
            if pid in table:
                groups["client"][pid] = table[pid][2]
        for master in self.servers:
            if master not in table:
                continue
            groups["gunicorn"][master] = table[master][2]
            for worker in children[master]:
                groups["gunicorn"][worker] = table[worker][2]
                for engine in children[worker]:
                    groups["engine"][engine] = table[engine][2]
        if self.fakeclerk_pid in table:
            groups["fakeclerk"][self.fakeclerk_pid] = table[self.fakeclerk_pid][2]
        for pid in self.backend_pids():
            if pid in table:
                groups["postgres"][pid] = table[pid][2]
        return CpuSnapshot(time.perf_counter(), machine_busy(), groups)

    @staticmethod
    def delta(start: CpuSnapshot, end: CpuSnapshot, *, extra_client: float = 0.0) -> dict[str, float]:
        """CPU seconds per group between two snapshots, plus `others` (the rest of the machine) and `wall`.

        `extra_client` adds load-generator CPU measured apart (a wrk that exited before `end`).
        """
        used = {}
        for name, pids in end.groups.items():
            before = start.groups.get(name, {})
            # A process that appeared during the phase started from zero.
            used[name] = sum(cpu - before.get(pid, 0.0) for pid, cpu in pids.items())
        used["client"] += extra_client
        used["others"] = max(0.0, (end.machine - start.machine) - sum(used.values()))
        used["wall"] = end.at - start.at
        return used
