"""A real PgBouncer (Debian's, installed by scripts/test) in transaction mode, as Neon's pooled endpoint runs.

It runs as a child process on a free port, in front of the tests' PostgreSQL, and logs
in to it as the tests' user whatever name a client gives (`auth_type = any`).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from tests.served import free_port


def pgbouncer_binary() -> str:
    debian = "/usr/sbin/pgbouncer"  # not on a non-root PATH
    found = shutil.which("pgbouncer") or (debian if os.access(debian, os.X_OK) else None)
    if found is None:
        raise RuntimeError("pgbouncer is not installed: scripts/test installs Debian's package (as root)")
    return found


@contextmanager
def pgbouncer(server_url: str, *, pool_size: int = 10) -> Iterator[int]:
    """PgBouncer in front of the PostgreSQL server of `server_url`; yields its port."""
    server = urlsplit(server_url)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="clerk-sync-pgbouncer-") as tmp:
        os.chmod(tmp, 0o755)  # noqa: S103 - readable by the unprivileged user it runs as; holds no secret
        config = Path(tmp) / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"* = host={server.hostname or '127.0.0.1'} port={server.port or 5432} "
            f"user={server.username or 'postgres'}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
            "auth_type = any\npool_mode = transaction\n"
            f"max_client_conn = 500\ndefault_pool_size = {pool_size}\n"
        )
        config.chmod(0o644)
        # PgBouncer refuses to run as root; -u drops to another user.
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        log = Path(tmp) / "pgbouncer.log"  # a file, not a pipe: it logs every connection
        with log.open("w") as log_file:
            process = subprocess.Popen(
                [pgbouncer_binary(), *user, str(config)], stdout=log_file, stderr=subprocess.STDOUT
            )
        try:
            _wait_listening(port, process, log)
            yield port
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("pgbouncer did not start listening within 15 s")
