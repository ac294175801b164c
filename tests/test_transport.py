"""The keep-alive engine transport (prisma_engines/transport.py), over real sockets."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest
from prisma import Prisma

from prisma_engines import auth, transport
from prisma_engines.transport import KeepAliveHTTP


def _read_request(conn: socket.socket) -> tuple[str, dict[str, str], bytes] | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        body += conn.recv(65536)
    return lines[0], headers, body


@contextmanager
def engine_like(handle: Callable[[socket.socket, int], bool]) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A loopback server: `handle(conn, n)` answers the n-th request; False closes the connection."""
    server = socket.create_server(("127.0.0.1", 0))
    seen: list[dict[str, str]] = []
    counter = iter(range(10**6))

    def serve_connection(conn: socket.socket) -> None:
        with conn:
            while True:
                request = _read_request(conn)
                if request is None:
                    return
                seen.append(request[1])
                if not handle(conn, next(counter)):
                    return

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve_connection, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}", seen
    finally:
        server.close()


def ok(conn: socket.socket, n: int) -> bool:
    body = json.dumps({"n": n}).encode()
    conn.sendall(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
        % (len(body), body)
    )
    return True


def test_requests_share_one_connection_and_carry_the_headers() -> None:
    with engine_like(ok) as (url, seen):
        session = KeepAliveHTTP(timeout=5)
        first = session.request("POST", url + "/", headers={"x-engine-token": "t1"}, content='{"a":1}')
        second = session.request("GET", url + "/status", headers={"x-engine-token": "t1"})
        session.close()
    assert (first.status, first.json(), second.json()) == (200, {"n": 0}, {"n": 1})
    assert [h["x-engine-token"] for h in seen] == ["t1", "t1"]
    assert len(session._idle) == 0  # closed


def test_a_connection_the_engine_closed_is_retried_once_on_a_new_one() -> None:
    # Answers with keep-alive, then silently closes: the next request on that connection fails.
    def answer_then_close(conn: socket.socket, n: int) -> bool:
        ok(conn, n)
        return False

    with engine_like(answer_then_close) as (url, seen):
        session = KeepAliveHTTP(timeout=5)
        answers = [session.request("POST", url + "/", content="{}").json()["n"] for _ in range(3)]
        session.close()
    assert answers == [0, 1, 2]
    assert len(seen) == 3  # each request reached the server exactly once


def test_a_fresh_connection_that_fails_is_not_retried() -> None:
    def close_without_answer(conn: socket.socket, n: int) -> bool:
        return False

    with engine_like(close_without_answer) as (url, seen):
        session = KeepAliveHTTP(timeout=5)
        with pytest.raises(httpx.TransportError):
            session.request("POST", url + "/", content="{}")
    assert len(seen) == 1


def test_an_engine_that_does_not_answer_times_out() -> None:
    def hang(conn: socket.socket, n: int) -> bool:
        threading.Event().wait(5)
        return False

    with engine_like(hang) as (url, _), pytest.raises(httpx.TimeoutException):
        KeepAliveHTTP(timeout=0.3).request("POST", url + "/", content="{}")


def test_no_engine_listening_is_a_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(httpx.ConnectError):
        KeepAliveHTTP(timeout=2).request("GET", f"http://127.0.0.1:{port}/status")


def test_a_prisma_client_works_through_it(app_database_url: str) -> None:
    # The engine refuses requests without the client's token header: they must be forwarded.
    client = Prisma(datasource={"url": app_database_url}, http=auth.http_options(timeout=7.0))
    client.connect()
    try:
        transport.install(client)
        session = client._engine.session  # type: ignore[attr-defined]
        assert isinstance(session, KeepAliveHTTP) and session.timeout == 7.0
        assert client.user.count() >= 0
        with client.tx() as tx:
            assert tx.execute_raw("SELECT 1") == 1
        assert len(session._idle) == 1  # every request above reused one connection
    finally:
        client.disconnect()
