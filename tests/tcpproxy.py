"""A small TCP proxy that tests can cut or blackhole, to simulate a database outage for real.

The app under test connects to the proxy as if it were PostgreSQL; `cut()` kills
every live connection (both directions) and resets new ones on arrival until
`restore()`. `blackhole()` is the silent kind of partition (a dead NAT, a
failed-over compute): every connection stays open but no byte gets through, in
either direction, and neither side learns when the other closes; new connections
are accepted and go nowhere. After `restore()` new connections work again, while
the blackholed ones stay dead, as they would behind a NAT that lost its state. No
client library is patched: the driver sees genuine sockets.

    with TcpProxy(("127.0.0.1", 5432)) as proxy:
        url = f"postgresql://postgres@127.0.0.1:{proxy.port}/db"
        proxy.cut()
        proxy.restore()
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from urllib.parse import urlsplit, urlunsplit

__all__ = ["TcpProxy", "via_local_port"]

_CHUNK = 64 * 1024


def via_local_port(database_url: str, port: int, extra_query: str = "") -> str:
    """`database_url` reached through 127.0.0.1:`port` (a proxy, a pooler), same user and
    database, with `extra_query` parameters added."""
    parts = urlsplit(database_url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    query = "&".join(filter(None, [parts.query, extra_query]))
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _abort(sock: socket.socket) -> None:
    """Close with a TCP reset, so the peer fails at once instead of waiting for a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class _Link:
    """One proxied connection: the client's socket and ours to the target (None if never connected)."""

    def __init__(self, client: socket.socket, upstream: socket.socket | None, *, dark: bool = False) -> None:
        self.client = client
        self.upstream = upstream
        self.dark = dark
        """Blackholed: bytes are dropped and a close on one side is not passed to the other."""
        self.ended = 0
        self._closed = threading.Event()

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            _abort(self.client)
            if self.upstream is not None:
                _abort(self.upstream)


class TcpProxy:
    """Forwards 127.0.0.1:<port> to `target`, one pair of threads per connection."""

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5432)) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._cut = False
        self._dark = False
        self._stopping = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name="tcpproxy-accept", daemon=True)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> TcpProxy:
        self._thread.start()
        return self

    @property
    def live_connections(self) -> int:
        with self._lock:
            return len(self._links)

    def cut(self) -> None:
        """Drop every live connection and reset new ones until `restore()`."""
        with self._lock:
            self._cut = True
            links, self._links = self._links, set()
        for link in links:
            link.close()

    def blackhole(self) -> None:
        """Drop every byte of every connection, live or new, without closing any, until `restore()`."""
        with self._lock:
            self._dark = True
            for link in self._links:
                link.dark = True

    def restore(self) -> None:
        """Forward new connections again (blackholed ones stay dead)."""
        with self._lock:
            self._cut = False
            self._dark = False

    def close(self) -> None:
        self._stopping.set()
        self.cut()
        if self._thread.is_alive():
            self._thread.join()
        self._listener.close()

    # -- serving ------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            with self._lock:
                refuse, dark = self._cut, self._dark
            if refuse:
                _abort(client)
                continue
            if dark:  # accepted, and then nothing: the way a dead path looks to a connecting client
                link = _Link(client, None, dark=True)
                with self._lock:
                    self._links.add(link)
                threading.Thread(target=self._pump, args=(link, client, None), daemon=True).start()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _abort(client)
                continue
            link = _Link(client, upstream)
            with self._lock:
                if self._cut:  # cut while we were connecting
                    link.close()
                    continue
                self._links.add(link)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(link, source, sink), daemon=True).start()

    def _pump(self, link: _Link, source: socket.socket, sink: socket.socket | None) -> None:
        try:
            while data := source.recv(_CHUNK):
                if not link.dark and sink is not None:
                    sink.sendall(data)
        except OSError:
            pass
        if link.dark and not self._stopping.is_set():
            # The other side never hears of it; its own pump ends when it closes too.
            _abort(source)
            with self._lock:
                link.ended += 1
                if link.upstream is None or link.ended == 2:
                    self._links.discard(link)
            return
        with self._lock:
            self._links.discard(link)
        link.close()
