"""Where metric values live: prometheus_client's multiprocess directory, scrapes and folding.

Under gunicorn each worker is its own process. prometheus_client's multiprocess
mode keeps each process's values in files in `PROMETHEUS_MULTIPROC_DIR` (one
fresh directory per server run, or METRICS_DIR, set up by gunicorn.conf.py and
app.metrics), and a scrape adds them up. When a worker exits, the master folds
its counter and histogram files into one archive file per type, so a restarted
or killed worker loses no counts and the directory does not grow. A scrape and a
fold take the same file lock, so a scrape never counts a dead worker twice or
not at all.
"""

from __future__ import annotations

import fcntl
import glob
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROC_DIR_VAR = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir(env: Mapping[str, str] | None = None) -> str | None:
    return (os.environ if env is None else env).get(MULTIPROC_DIR_VAR) or None


def exposition() -> tuple[bytes, str]:
    """The scrape body and its content type: all workers' values when served by gunicorn."""
    directory = multiprocess_dir()
    if directory is None:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    with _locked(directory, fcntl.LOCK_SH):
        return generate_latest(registry), CONTENT_TYPE_LATEST


# Per-process files whose values only grow: folded into `<type>_archive.db` when their process ends.
_FOLDED_TYPES = ("counter", "histogram", "summary")


def fold_dead_process(pid: int, directory: str | None = None) -> None:
    """Move an exited process's counts into the archive files and drop its files.

    Runs in gunicorn's master (child_exit). Live gauges (in-flight) are dropped,
    since a dead process has nothing in flight.
    """
    directory = directory or multiprocess_dir()
    if directory is None:
        return
    with _locked(directory, fcntl.LOCK_EX):
        for kind in _FOLDED_TYPES:
            dead = os.path.join(directory, f"{kind}_{pid}.db")
            if not os.path.exists(dead):
                continue
            archive = MmapedDict(os.path.join(directory, f"{kind}_archive.db"))
            try:
                for key, value, _timestamp, _pos in MmapedDict.read_all_values_from_file(dead):
                    current, _ = archive.read_value(key)
                    archive.write_value(key, current + value, 0.0)
            finally:
                archive.close()
            os.remove(dead)
        mark_process_dead(pid, directory)


def fold_dead_processes(directory: str | None = None) -> None:
    """Fold the files of every process that is gone, e.g. left by a server killed outright."""
    directory = directory or multiprocess_dir()
    if directory is None:
        return
    os.makedirs(directory, exist_ok=True)
    for name in files(directory):
        owner = name.removesuffix(".db").rsplit("_", 1)[-1]
        if owner.isdigit() and not _alive(int(owner)):
            fold_dead_process(int(owner), directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    try:  # killed but not yet reaped (a zombie): gone, for its files
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def files(directory: str) -> list[str]:
    """The value files in a multiprocess directory (for tests and operators)."""
    return sorted(os.path.basename(path) for path in glob.glob(os.path.join(directory, "*.db")))


@contextmanager
def _locked(directory: str, operation: int) -> Iterator[None]:
    with open(os.path.join(directory, "fold.lock"), "a") as lock_file:
        fcntl.flock(lock_file, operation)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
