"""The agent: one Node served over HTTP (middlewares, authentication, the listener, start and stop)."""

from __future__ import annotations

import asyncio
import errno
import hmac
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from hasync.agent.guard import BACKLOG, HTTP_LOG, MAX_HEADERS, ConnectionGuard
from hasync.agent.routes import alarms, collect, diagnose, replication, roles, status
from hasync.errors import BadRequest, ConfigError, HasyncError, Starting
from hasync.fsutil import StateLock
from hasync.halog import Throttle, clip, kv
from hasync.node import Node
from hasync.roles.state import EPOCH_HEADER, ROLE_HEADER, parse_epoch, parse_role

log = logging.getLogger("hasync.agent")

STOP_TIMEOUT_S = 4.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ROUTES = (status, replication, alarms, diagnose, collect, roles)  # each module's add_routes(app, node)
AUTHENTICATED = web.RequestKey("authenticated", bool)


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


class Agent:
    """One node's agent: the Node's routes behind the connection guard, the error map and the token."""

    def __init__(self, node: Node) -> None:
        self.node = node
        cfg = node.cfg
        self.cfg = cfg
        self.guard = ConnectionGuard(cfg.limits)
        self.listener: asyncio.Server | None = None
        # The "rejected request" warnings, per client address and reason (past 1024 addresses: one key).
        self.rejected = Throttle[tuple[str, str]](
            cfg.limits.log_rate_s, overflow=("(other clients)", "no or wrong token")
        )
        self._rejected_flush: asyncio.TimerHandle | None = None

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[self.guard.middleware, self._errors, self._auth, self._fence],
            client_max_size=self.cfg.limits.max_body_bytes,
        )
        app.on_response_prepare.append(self._stamp)
        for module in ROUTES:
            module.add_routes(app, self.node)
        return app

    # -- middlewares ---------------------------------------------------------
    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except (web.HTTPException, ConnectionError, asyncio.CancelledError):
            raise
        except HasyncError as exc:  # our own refusals (BadRequest, PathRefused, WrongRole...) and faults
            return error_response(exc.http_status, exc.code, exc.message)
        except Exception as exc:  # a bug of ours, whatever its type: never blamed on the request
            log.exception("request failed %s", kv(method=request.method, path=clip(request.path)))
            return error_response(500, "error", f"internal error ({type(exc).__name__}); see the HA log")

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in status.PUBLIC:  # /healthz and the failover verdict's 200/503: no details
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        # Header bytes that are not UTF-8 arrive as lone surrogates: compared as bytes, they simply differ.
        given = token.strip().encode("utf-8", "surrogateescape")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, self.cfg.token.encode()):
            self._log_rejected(request.remote or "?", "no token" if not header else "wrong token", request.path)
            return error_response(401, "auth_failed", "missing or wrong bearer token")
        request[AUTHENTICATED] = True
        return await handler(request)

    @web.middleware
    async def _fence(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The epoch rules applied to the requesting peer's epoch and role (hasync.roles.state): a higher
        epoch is adopted, and an active that a newer active asks is superseded (409 `stale_epoch`). While
        the role object is being replaced, the replication routes answer 503 `starting`."""
        node = self.node
        raw = request.headers.get(EPOCH_HEADER)
        # Only the peer's word counts: the public routes' requests (no token) never move an epoch.
        if raw is not None and request.get(AUTHENTICATED):
            try:
                epoch, role = parse_epoch(raw), parse_role(request.headers.get(ROLE_HEADER))
            except ValueError as exc:
                raise BadRequest(f"{EPOCH_HEADER}/{ROLE_HEADER}: {exc}") from None
            node.fence.heard(epoch, role, answer=False)
        if node.fence.role != node.role.name and request.path in replication.PATHS:
            raise Starting(f"{self.cfg.node.name} is changing its role to {node.fence.role}")
        return await handler(request)

    async def _stamp(self, request: web.Request, response: web.StreamResponse) -> None:
        """Every answer to an authenticated request carries this node's epoch and role."""
        if request.get(AUTHENTICATED):  # nothing told to who has not shown the token
            response.headers.update(self.node.fence.headers())

    def _log_rejected(self, peer: str, reason: str, path: str) -> None:
        """The first rejected request per client and reason in full, then one count per limits.log_rate_s."""
        throttle = self.rejected
        key = throttle.key((peer, reason))
        if throttle.hit(key, time.monotonic()):
            who, why = key
            log.warning("rejected request %s", kv(peer=who, path=clip(path), reason=why))
        elif self._rejected_flush is None:
            self._schedule_rejected_flush()

    def _schedule_rejected_flush(self) -> None:
        due = self.rejected.next_due()
        if due is not None:
            delay = max(0.0, due - time.monotonic())
            self._rejected_flush = asyncio.get_running_loop().call_later(delay, self._flush_rejected)

    def _flush_rejected(self) -> None:
        self._rejected_flush = None
        for (peer, reason), held, span in self.rejected.due(time.monotonic()):
            log.warning("rejected request %s", kv(peer=peer, reason=reason, more=held, in_last_s=f"{span:.0f}"))
        self._schedule_rejected_flush()

    # -- life cycle ----------------------------------------------------------
    async def run(self, ready: Callable[[], None] | None = None) -> None:
        """Listen, start the node, serve until SIGTERM or SIGINT, then stop within STOP_TIMEOUT_S."""
        node, cfg = self.node, self.cfg
        lock = StateLock(cfg.node.state_dir)
        lock.acquire("agent")
        runner = web.AppRunner(
            self.app(),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=1.0,
            keepalive_timeout=cfg.limits.idle_timeout_s,
            max_headers=MAX_HEADERS,
            logger=HTTP_LOG,
        )
        await runner.setup()
        assert runner.server is not None
        host, port = cfg.listen_host_port()
        self.guard.fit_to_fd_limit()
        loop = asyncio.get_running_loop()
        try:
            # Not a TCPSite: the guard wraps each connection (cap, head deadline; agent/guard.py).
            self.listener = await loop.create_server(
                self.guard.factory(runner.server), host, port, reuse_address=True, backlog=BACKLOG
            )
        except OSError as exc:
            await runner.cleanup()
            lock.release()
            reason = "already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            raise ConfigError(f"{cfg.path}: node.listen: cannot listen on {cfg.node.listen}: {reason}") from None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, node.stopping.set)
        log.info(
            "agent started %s",
            kv(node=cfg.node.name, role=node.role.name, listen=cfg.node.listen, pid=os.getpid()),
        )
        try:
            await node.start()
            if ready is not None:
                ready()
            await node.stopping.wait()
            log.info("agent stopping %s", kv(node=cfg.node.name))
        finally:
            node.stopping.set()
            try:
                await asyncio.wait_for(self._shutdown(runner), STOP_TIMEOUT_S)
            except TimeoutError:
                log.warning("shutdown timed out")
            lock.release()
            log.info("agent stopped %s", kv(node=cfg.node.name))

    async def _shutdown(self, runner: web.AppRunner) -> None:
        await self.node.stop()
        if self.listener is not None:
            self.listener.close()
        await runner.cleanup()
        await self.node.close()
