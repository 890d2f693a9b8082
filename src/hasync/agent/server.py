"""The agent's HTTP server: routes, authentication, lifecycle."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hmac
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from hasync.config import Config
from hasync.errors import ConfigError, HasyncError, LockHeld, PathRefused, PeerError
from hasync.halog import kv
from hasync.protocol import API, FRAMES, MSGPACK, dec_path, pack, unpack
from hasync.replication.active import ActiveSide
from hasync.replication.base import Side
from hasync.replication.standby import StandbySide
from hasync.roles import provider

log = logging.getLogger("hasync.agent")

ROLES: dict[str, type[Side]] = {"active": ActiveSide, "standby": StandbySide}
STOP_TIMEOUT_S = 4.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).astimezone().isoformat(timespec="seconds")


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


class StateLock:
    """An exclusive lock on the node's state dir: there is never a second writer."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "agent.lock"
        self._fd = -1

    def acquire(self, what: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = -1
            raise LockHeld(f"{self.path}: another hasync process ({what}) writes this node's state") from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Agent:
    """One node's agent: the role's side plus the HTTP API."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.roles = provider(cfg)
        self.role = "active" if self.roles.active_node() == cfg.node.name else "standby"
        self.side: Side = ROLES[self.role](cfg)
        self.started_at = time.time()
        self.peer_since: int | None = None
        self._peer_client: Any = None

    # -- routes ------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors, self._auth], client_max_size=64 << 20)
        app.router.add_get("/healthz", self.healthz)  # liveness probe, no auth, no details
        app.router.add_get(f"{API}/info", self.info)  # identity, role, change seq, Merkle roots
        app.router.add_post(f"{API}/tree", self.tree)  # listings of directories, with subdir hashes
        app.router.add_get(f"{API}/changes", self.changes)  # long-poll change feed after a seq
        app.router.add_post(f"{API}/files", self.files)  # framed stream of file contents
        app.router.add_get(f"{API}/status", self.status)  # this node's sync state, as JSON
        app.router.add_post(f"{API}/sync", self.sync)  # standby: reconcile now, NDJSON progress
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except HasyncError as exc:
            return error_response(exc.http_status, exc.code, exc.message)
        except (ValueError, KeyError, TypeError) as exc:
            return error_response(400, "bad_request", f"malformed request: {exc}")

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/healthz":
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.cfg.token.encode()):
            log.warning(
                "rejected request %s",
                kv(peer=request.remote, path=request.path, reason="no token" if not header else "wrong token"),
            )
            return error_response(401, "auth_failed", "missing or wrong bearer token")
        return await handler(request)

    def _active(self) -> ActiveSide:
        if not isinstance(self.side, ActiveSide):
            raise HasyncError(f"{self.cfg.node.name} is the standby; ask the active node")
        return self.side

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def info(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = {
            "node": self.cfg.node.name,
            "hostname": self.cfg.node.hostname,
            "role": self.role,
            "time": time.time(),
        }
        if isinstance(self.side, ActiveSide):
            body.update(
                instance=self.side.instance, seq=self.side.seq, roots=self.side.roots(), with_owner=self.side.with_owner
            )
            since = request.query.get("since")
            if since is not None:
                t = self.side.oldest_change_after(int(since))
                body["lag_s"] = 0.0 if t is None else max(0.0, time.time() - t)
        return web.Response(body=pack(body), content_type=MSGPACK)

    async def tree(self, request: web.Request) -> web.Response:
        req = unpack(await request.read())
        name = str(req["dir"])
        self.cfg.sync_dir(name)
        dirs = [dec_path(p, allow_root=True) for p in req["dirs"]]
        return web.Response(body=pack(self._active().listing(name, dirs)), content_type=MSGPACK)

    async def changes(self, request: web.Request) -> web.Response:
        q = request.query
        since = int(q.get("since", "0"))
        self.peer_since = since
        wait = min(max(float(q.get("wait", "0")), 0.0), 60.0)
        body = await self._active().changes(q.get("instance", ""), since, wait)
        return web.Response(body=pack(body), content_type=MSGPACK)

    async def files(self, request: web.Request) -> web.StreamResponse:
        req = unpack(await request.read())
        name = str(req["dir"])
        try:
            self.cfg.sync_dir(name)
        except KeyError:
            raise PathRefused(f"no sync dir named {name!r}") from None
        paths = [dec_path(p) for p in req["paths"]]
        side = self._active()
        resp = web.StreamResponse(headers={"Content-Type": FRAMES})
        await resp.prepare(request)
        async for chunk in side.stream_files(name, paths):
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(await self.status_doc(brief=request.query.get("brief") == "1"))

    async def status_doc(self, brief: bool = False) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "node": self.cfg.node.name,
            "hostname": self.cfg.node.hostname,
            "role": self.role,
            "peer": self.cfg.peer.name,
            "agent_running": True,
            "started_at": iso(self.started_at),
            "alarms": [],
        }
        if isinstance(self.side, StandbySide):
            snap = self.side.snapshot()
            lag = 0.0 if snap["in_sync"] else None
            if not snap["in_sync"] and self.side.peer_error is None and not brief:
                try:
                    info = await self.side.client.info(since=self.side.seq)
                    lag = float(info.get("lag_s", 0.0))
                except PeerError:
                    pass
            if lag is None and self.side.last_sync_at is not None:
                lag = max(0.0, time.time() - self.side.last_sync_at)
            doc.update(
                peer_reachable=self.side.peer_error is None,
                in_sync=snap["in_sync"],
                lag_s=lag,
                last_sync_at=iso(snap["last_sync_at"]),
                pending=snap["pending"],
                cause=snap["cause"],
                errors=snap["errors"],
                peer_error=snap["peer_error"],
            )
        else:
            side = self._active()
            doc.update(
                peer_reachable=None,
                in_sync=None,
                lag_s=None,
                last_sync_at=None,
                pending=None,
                cause=None,
                errors=[e for e in self._active_errors(side)],
            )
            if not brief:
                await self._fill_from_standby(doc)
        doc["transferred"] = {
            "files_sent": self.side.sent_files,
            "bytes_sent": self.side.sent_bytes,
            "files_received": self.side.received_files,
            "bytes_received": self.side.received_bytes,
        }
        return doc

    @staticmethod
    def _active_errors(side: ActiveSide) -> list[dict[str, Any]]:
        out = []
        for name, tree in side.trees.items():
            if tree is None:
                out.append({"dir": name, "path": "", "cause": "source_missing", "reason": "sync dir does not exist"})
                continue
            for rel, e in tree.errors():
                out.append({"dir": name, "path": rel, "cause": str(e.cause), "reason": e.error.partition(": ")[2]})
        return out

    async def _fill_from_standby(self, doc: dict[str, Any]) -> None:
        from hasync.agent.client import AgentClient

        if self._peer_client is None:
            self._peer_client = AgentClient(
                self.cfg.peer_url(), self.cfg.token, self.cfg.peer.timeout_s, self.cfg.peer.name
            )
        try:
            peer = await self._peer_client.status(brief=True)
        except PeerError as exc:
            doc.update(
                peer_reachable=False,
                in_sync=False,
                cause=exc.cause.value,
                peer_error={"cause": exc.cause.value, "message": exc.message},
            )
            side = self._active()
            t = side.oldest_change_after(self.peer_since) if self.peer_since is not None else None
            doc["lag_s"] = None if t is None else max(0.0, time.time() - t)
            return
        doc.update(
            peer_reachable=True,
            in_sync=peer.get("in_sync"),
            last_sync_at=peer.get("last_sync_at"),
            pending=peer.get("pending"),
            cause=peer.get("cause"),
        )
        doc["errors"] = peer.get("errors", []) or doc["errors"]
        t = self._active().oldest_change_after(self.peer_since) if self.peer_since is not None else None
        doc["lag_s"] = 0.0 if peer.get("in_sync") else (None if t is None else max(0.0, time.time() - t))

    async def sync(self, request: web.Request) -> web.StreamResponse:
        if not isinstance(self.side, StandbySide):
            raise HasyncError(f"{self.cfg.node.name} is the active node: sync runs on the standby")
        side = self.side
        log.info("sync requested %s", kv(by=request.remote))
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        # The watcher keeps the local tree current: no rescan, so "nothing changed" costs next to nothing.
        task = asyncio.create_task(side.reconcile(progress=queue.put_nowait))
        while not task.done():
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                await resp.write(json.dumps(getter.result()).encode() + b"\n")
            else:
                getter.cancel()
        result = task.result()
        final = {
            "event": "result",
            "in_sync": result.in_sync,
            "files": result.files,
            "bytes": result.bytes,
            "deleted": result.deleted,
            "cause": None if result.cause is None else result.cause.value,
            "message": result.message,
            "errors": [e.as_json() for e in result.errors],
        }
        await resp.write(json.dumps(final).encode() + b"\n")
        await resp.write_eof()
        return resp

    # -- lifecycle ---------------------------------------------------------
    async def run(self, ready: Callable[[], None] | None = None) -> None:
        lock = StateLock(self.cfg.node.state_dir)
        lock.acquire("agent")
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        host, port = self.cfg.listen_host_port()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            lock.release()
            reason = "already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            raise ConfigError(
                f"{self.cfg.path}: node.listen: cannot listen on {self.cfg.node.listen}: {reason}"
            ) from None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info(
            "agent started %s",
            kv(node=self.cfg.node.name, role=self.role, listen=self.cfg.node.listen, pid=os.getpid()),
        )
        try:
            await self.side.start()
            if ready is not None:
                ready()
            await stop.wait()
            log.info("agent stopping %s", kv(node=self.cfg.node.name))
        finally:
            try:
                await asyncio.wait_for(self._shutdown(runner), STOP_TIMEOUT_S)
            except TimeoutError:
                log.warning("shutdown timed out")
            lock.release()
            log.info("agent stopped %s", kv(node=self.cfg.node.name))

    async def _shutdown(self, runner: web.AppRunner) -> None:
        await self.side.stop()
        if self._peer_client is not None:
            await self._peer_client.close()
        await runner.cleanup()
