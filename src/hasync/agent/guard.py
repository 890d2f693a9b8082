"""The agent's connection limits: a cap on open connections and a deadline for request heads.

aiohttp closes a kept-alive connection idle for its ``keepalive_timeout`` (limits.idle_timeout_s)
and bounds the size of a request head; it neither bounds the number of connections nor gives a new
connection less time to send its first head than that. ``ConnectionGuard`` wraps aiohttp's protocol:

- a connection that has not sent a whole request head within limits.head_timeout_s is closed;
- at limits.max_connections (lowered to fit the open-file limit), a new connection makes room by
  closing the oldest connection that never sent a whole head, else the oldest idle kept-alive one;
  a connection that is being served is never closed for it. When none can go, the new connection
  is answered 503 without reading and closed.

So slow or half-open clients cost a bounded number of descriptors and never lock out /healthz or
the peer. The condition is logged when it starts and when it ends, not per connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from hasync.halog import Throttle, clip, kv

if TYPE_CHECKING:
    from aiohttp.web_protocol import RequestHandler

    from hasync.config import LimitsSection

log = logging.getLogger("hasync.agent")

FD_RESERVE = 256  # descriptors kept for everything but client connections (files, watches, store, peer)
BACKLOG = 128  # one accept burst: fewer than FD_RESERVE
MAX_HEADERS = 32  # per request head (aiohttp's default is 128); lines stay at aiohttp's 8190 bytes
# Refused connections answered 503 at a time: each waits (at most REFUSED_LINGER_S) for the client to
# close, so that what it sent is read and dropped and its 503 is not lost to a reset. Past that many,
# refused connections are closed at once.
MAX_REFUSED = 32
REFUSED_LINGER_S = 2.0


class _NoClientFaults(logging.Filter):
    """aiohttp logs a traceback for each malformed request it answers 400 itself: the client's
    fault, one line per hostile connection. Those are dropped; anything else aiohttp logs is kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, HttpProcessingError)


HTTP_LOG = logging.getLogger("hasync.http")  # aiohttp's server logger for the agent: the HA log, not stderr
HTTP_LOG.addFilter(_NoClientFaults())

_BUSY_BODY = json.dumps(
    {"error": {"code": "busy", "message": "too many connections to this agent (limits.max_connections)"}}
).encode()
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
    + f"Content-Length: {len(_BUSY_BODY)}\r\n\r\n".encode()
    + _BUSY_BODY
)


def raise_nofile_limit() -> int:
    """Raise the soft open-file limit to the hard one; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class _Guarded(asyncio.Protocol):
    """One connection: aiohttp's protocol, admitted (or refused) and timed by the guard."""

    def __init__(self, guard: ConnectionGuard, inner: RequestHandler) -> None:
        self.guard = guard
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.admitted = False
        self.turned_away = False  # answered 503 busy: what it sends is dropped until it closes
        self.opened = time.monotonic()
        self.idle_since = self.opened
        self.served = 0  # requests whose head arrived
        self.busy = 0  # requests being handled now
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if not self.guard.admit(self):
            if self.guard.refusing >= MAX_REFUSED:
                transport.abort()
                return
            self.guard.refusing += 1
            self.turned_away = True
            transport.write(BUSY_RESPONSE)
            transport.write_eof()
            self.timer = asyncio.get_running_loop().call_later(REFUSED_LINGER_S, transport.abort)
            return
        self.admitted = True
        self.inner.connection_made(transport)
        self.timer = asyncio.get_running_loop().call_later(self.guard.limits.head_timeout_s, self._head_expired)

    def _head_expired(self) -> None:
        self.timer = None
        if self.served == 0:
            self.guard.head_timeouts += 1
            self.drop()

    def started(self) -> None:
        """A request head arrived (the guard's middleware saw the request)."""
        self.served += 1
        self.busy += 1
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def finished(self) -> None:
        self.busy -= 1
        self.idle_since = time.monotonic()

    def idle(self) -> bool:
        """Nothing is being answered on this connection (closing it loses nothing)."""
        t = self.transport
        return self.busy == 0 and (t is None or t.get_write_buffer_size() == 0)

    def drop(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.admitted:
            self.inner.data_received(data)

    def eof_received(self) -> None:
        if self.admitted:
            self.inner.eof_received()
        # Refused: returning None closes the transport, everything the client sent having been read.

    def pause_writing(self) -> None:
        if self.admitted:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.admitted:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.admitted:
            self.guard.release(self)
            self.inner.connection_lost(exc)
        elif self.turned_away:
            self.guard.refusing -= 1


class ConnectionGuard:
    """The connections of one agent, counted, timed and capped (see the module docstring)."""

    def __init__(self, limits: LimitsSection) -> None:
        self.limits = limits
        self.cap = limits.max_connections
        self.conns: dict[_Guarded, None] = {}  # oldest first
        self._by_inner: dict[RequestHandler, _Guarded] = {}
        self.head_timeouts = 0  # since start; the rest count one saturated episode
        self.saturated_at: float | None = None
        self.evicted = 0
        self.refused = 0
        self.refusing = 0  # refused connections still open (MAX_REFUSED)
        # Clients that went away before their answer (mid-body, mid-stream), per address: one line each
        # per limits.log_rate_s (past 1024 addresses: one key).
        self.gone = Throttle[str](limits.log_rate_s, overflow="(other clients)")

    def fit_to_fd_limit(self) -> None:
        """Raise the soft open-file limit; lower the cap to what the limit leaves (logged once)."""
        soft = raise_nofile_limit()
        fit = max(8, soft - FD_RESERVE)
        if fit < self.cap:
            log.warning(
                "connection cap lowered to fit the open-file limit %s",
                kv(max_connections=self.limits.max_connections, cap=fit, nofile=soft),
            )
            self.cap = fit

    def factory(self, server: web.Server) -> Callable[[], asyncio.Protocol]:
        """The protocol factory for loop.create_server: aiohttp's, guarded."""

        def make() -> asyncio.Protocol:
            return _Guarded(self, server())

        return make

    @web.middleware
    async def middleware(self, request: web.Request, handler: Callable[[web.Request], object]) -> web.StreamResponse:
        conn = self._by_inner.get(request.protocol)
        if conn is not None:  # else not served through the guard (an in-process test server)
            conn.started()
        try:
            return await handler(request)  # type: ignore[no-any-return,misc]
        except ConnectionError:
            transport = request.transport
            if transport is not None and not transport.is_closing():
                raise  # not this client's connection: a fault of ours, aiohttp logs it
            # The client went away mid-body or mid-answer (ConnectionResetError from request.read or a
            # write): its doing, not a fault here. Without this aiohttp logs a traceback per connection.
            self._client_gone(request)
            return web.Response(status=400)  # written nowhere: aiohttp finds the transport closed
        finally:
            if conn is not None:
                conn.finished()

    def _client_gone(self, request: web.Request) -> None:
        """One INFO line per client address and limits.log_rate_s, the repetitions counted in the next."""
        now = time.monotonic()
        for who, held, span in self.gone.due(now):
            log.info("clients went away before their answer %s", kv(peer=who, more=held, in_last_s=f"{span:.0f}"))
        key = self.gone.key(request.remote or "?")
        if self.gone.hit(key, now):
            log.info(
                "client went away before its answer %s", kv(peer=key, method=request.method, path=clip(request.path))
            )

    def admit(self, conn: _Guarded) -> bool:
        if len(self.conns) >= self.cap:
            victim = self._victim()
            if self.saturated_at is None:
                self.saturated_at = time.monotonic()
                log.warning(
                    "connection limit reached %s",
                    kv(
                        max_connections=self.cap,
                        action="closing the oldest connections that send no request, refusing when none",
                    ),
                )
            if victim is None:
                self.refused += 1
                return False
            self.evicted += 1
            self._forget(victim)
            victim.drop()
        self.conns[conn] = None
        self._by_inner[conn.inner] = conn
        return True

    def _victim(self) -> _Guarded | None:
        """The oldest connection that never sent a whole head, else the one idle the longest."""
        idle: _Guarded | None = None
        for c in self.conns:
            if c.served == 0 and c.busy == 0:
                return c
            if c.idle() and (idle is None or c.idle_since < idle.idle_since):
                idle = c
        return idle

    def _forget(self, conn: _Guarded) -> None:
        self.conns.pop(conn, None)
        self._by_inner.pop(conn.inner, None)

    def release(self, conn: _Guarded) -> None:
        self._forget(conn)
        if self.saturated_at is not None and len(self.conns) <= self.cap * 3 // 4:
            log.info(
                "connections back under the limit %s",
                kv(
                    open=len(self.conns),
                    max_connections=self.cap,
                    closed_to_make_room=self.evicted,
                    refused=self.refused,
                    head_timeouts=self.head_timeouts,
                    lasted_s=f"{time.monotonic() - self.saturated_at:.0f}",
                ),
            )
            self.saturated_at = None
            self.evicted = self.refused = 0
