"""Small real receivers for notification tests: HTTP (webhook, Alertmanager) and syslog (UDP, TCP)."""

from __future__ import annotations

import asyncio
import json
import socket
import socketserver
import threading
from typing import Any

from aiohttp import web


class HttpReceiver:
    """Records JSON bodies POSTed to any path; can be stopped and started again on the same port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.requests: list[tuple[str, Any]] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, json.loads(await request.read())))
        return web.json_response({"status": "success"})

    def start(self) -> HttpReceiver:
        async def go() -> None:
            app = web.Application()
            app.router.add_route("POST", "/{tail:.*}", self._handle)
            self.runner = web.AppRunner(app)
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True).start()

        asyncio.run_coroutine_threadsafe(go(), self.loop).result(10)
        return self

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
            self.runner = None

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def bodies(self, path: str | None = None) -> list[Any]:
        return [b for p, b in list(self.requests) if path is None or p == path]


class _TcpServer(socketserver.TCPServer):
    allow_reuse_address = True


class SyslogReceiver:
    """Collects RFC 5424 messages over UDP and TCP (octet counting) on one port number.

    One connection, one datagram at a time, so `messages` is in the order they arrived: a
    thread per connection may record a later connection's message first on a loaded machine
    (hasync opens a connection per message).
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[tuple[str, str]] = []
        self.closed = False
        recv = self

        class Tcp(socketserver.StreamRequestHandler):
            timeout = 10  # a client that stops sending does not hold up the next connection for ever

            def handle(self) -> None:
                while True:
                    length = b""
                    while not length.endswith(b" "):
                        c = self.rfile.read(1)
                        if not c:
                            return
                        length += c
                    recv.messages.append(("tcp", self.rfile.read(int(length)).decode()))

        class Udp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                recv.messages.append(("udp", self.request[0].decode()))

        self.tcp = _TcpServer(("127.0.0.1", port), Tcp)
        self.udp = socketserver.UDPServer(("127.0.0.1", port), Udp)
        for srv in (self.tcp, self.udp):
            threading.Thread(target=srv.serve_forever, daemon=True).start()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for srv in (self.tcp, self.udp):
            srv.shutdown()
            srv.server_close()


def free_port_both() -> int:
    """A port free for TCP and UDP."""
    while True:
        with socket.socket() as t:
            t.bind(("127.0.0.1", 0))
            port = int(t.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
