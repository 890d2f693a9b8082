"""The agent client over a real socket: a dropped keep-alive connection is retried once for a GET (aiohttp
does it, RFC 9112 9.3.1) and, if it stays dropped, named `peer_agent_down`, never the catch-all `sync_error`."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Iterator

import msgpack
import pytest

from hasync.errors import Cause, PeerError
from hasync.peer.client import AgentClient


class ResettingServer:
    """HTTP/1.1 with keep-alive on 127.0.0.1. For each request, in order, the next action: "ok" answers
    (msgpack {"ok": n}), "rst" aborts the connection with a TCP reset (SO_LINGER 0)."""

    def __init__(self, actions: list[str]) -> None:
        self.actions = iter(actions)
        self.requests: list[tuple[int, str]] = []  # (connection number, request line)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                n = self.connections
            threading.Thread(target=self._serve, args=(conn, n), daemon=True).start()

    def _serve(self, conn: socket.socket, n: int) -> None:
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                length = next(
                    (int(v) for k, _, v in (h.partition(":") for h in lines[1:]) if k.lower() == "content-length"), 0
                )
                while len(buf) < length:
                    buf += conn.recv(65536)
                buf = buf[length:]
                with self._lock:
                    self.requests.append((n, lines[0]))
                    action = next(self.actions, "ok")
                if action == "rst":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                body = msgpack.packb({"ok": len(self.requests)})
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/msgpack\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[ResettingServer]:
    srv = ResettingServer(request.param)
    yield srv
    srv.close()


async def two_requests(port: int, method: str) -> tuple[object, object]:
    async with AgentClient(f"http://127.0.0.1:{port}", "t0ken", 5.0, name="peer") as client:
        first = await client.request("GET", "/v1/info")
        try:
            second: object = await client.request(method, "/v1/info", body={"x": 1} if method == "POST" else None)
        except PeerError as exc:
            second = exc
        return first, second


@pytest.mark.parametrize("server", [["ok", "rst"]], indirect=True)
def test_a_dropped_keepalive_connection_is_retried_once_for_a_get(server: ResettingServer) -> None:
    first, second = asyncio.run(two_requests(server.port, "GET"))
    assert first == {"ok": 1} and second == {"ok": 3}
    # The second request went out on the kept-alive connection, was reset, and was sent again on a new one.
    assert [n for n, _ in server.requests] == [1, 1, 2]


@pytest.mark.parametrize("server", [["ok", "rst"]], indirect=True)
def test_a_post_is_not_sent_twice_and_a_reset_is_peer_agent_down(server: ResettingServer) -> None:
    _, second = asyncio.run(two_requests(server.port, "POST"))
    assert isinstance(second, PeerError) and second.cause is Cause.PEER_AGENT_DOWN, second
    assert "connection" in second.message
    assert len(server.requests) == 2


@pytest.mark.parametrize("server", [["ok", "rst", "rst"]], indirect=True)
def test_a_reset_that_persists_is_peer_agent_down(server: ResettingServer) -> None:
    _, second = asyncio.run(two_requests(server.port, "GET"))
    assert isinstance(second, PeerError) and second.cause is Cause.PEER_AGENT_DOWN, second
    assert "connection" in second.message
    assert [n for n, _ in server.requests] == [1, 1, 2]
