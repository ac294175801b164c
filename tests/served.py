"""The production server as a subprocess: gunicorn with gunicorn.conf.py, for tests and the benchmark."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from tests.fakeclerk import FakeClerk

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def server_env(
    app_database_url: str, fake_clerk: FakeClerk, *, exclude: Collection[str] = (), **extra: str
) -> dict[str, str]:
    """This process's environment (less the names in `exclude`) with the app pointed at the
    test database and `fake_clerk`, then `extra` on top."""
    # Here, not at the top: bench/ imports this module, and tests.conftest brings in pytest and the app.
    from tests.conftest import FRONTEND_ORIGIN, WEBHOOK_SECRET

    return {
        **{name: setting for name, setting in os.environ.items() if name not in exclude},
        "DATABASE_URL": app_database_url,
        "CLERK_API_URL": fake_clerk.url,
        "CLERK_SECRET_KEY": fake_clerk.secret_key,
        "CLERK_AUTHORIZED_PARTIES": FRONTEND_ORIGIN,
        "CLERK_WEBHOOK_SIGNING_SECRET": WEBHOOK_SECRET,
        **extra,
    }


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


@contextlib.contextmanager
def gunicorn_server(
    env: Mapping[str, str], log_path: Path, *, startup_timeout: float = 90
) -> Iterator[Served]:
    """gunicorn on a free loopback port, once /healthz answers 200; stopped with SIGTERM on exit.

    stdout and stderr go to `log_path`. A test may stop the server itself first. gunicorn
    leads its own process group, as under a service manager, so a test may signal the group.
    """
    port = free_port()
    env = {**env, "PORT": str(port), "HOST": "127.0.0.1"}
    env.pop("BIND", None)
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py"],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    served = Served(process, f"http://127.0.0.1:{port}", log_path)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{served.url}/healthz", timeout=5).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not come up:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.2)
        yield served
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
