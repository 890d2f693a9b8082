"""The agent's HTTP server: routes, authentication, lifecycle."""

from __future__ import annotations

import asyncio
import errno
import hmac
import json
import logging
import os
import re
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from hasync import clock
from hasync.agent.guard import BACKLOG, HTTP_LOG, MAX_HEADERS, ConnectionGuard
from hasync.agent.inputs import as_object, field, json_object, msgpack_object, query_float, query_int
from hasync.audit import DEEP_TIMEOUT_S, Auditor, Finding
from hasync.check import ActiveCheck, StandbyCheck, Verdict, log_transition, run_periodic, timed, with_findings
from hasync.config import Config
from hasync.errors import (
    BadRequest,
    ConfigError,
    HasyncError,
    PathRefused,
    PeerError,
    PeerStarting,
    Starting,
    WrongRole,
)
from hasync.fsutil import StateLock
from hasync.halog import Throttle, clip, kv
from hasync.peer.protocol import API, FRAMES, MSGPACK, dec_path, pack
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


class Agent:
    """One node's agent: the role's side, the periodic check, the alarms, the HTTP API."""

    def __init__(self, cfg: Config) -> None:
        from hasync.metrics import Metrics
        from hasync.peer.client import AgentClient

        self.cfg = cfg
        self.ready = False  # set once the side has started (the active has scanned its dirs)
        self.roles = provider(cfg)
        self.role = "active" if self.roles.active_node() == cfg.node.name else "standby"
        self.side: Side = ROLES[self.role](cfg)
        self.started_at = clock.now()
        self.peer: AgentClient = (
            self.side.client
            if isinstance(self.side, StandbySide)
            else AgentClient(
                cfg.peer_url(), cfg.token, cfg.peer.timeout_s, cfg.peer.name, cfg.limits.max_response_bytes
            )
        )
        self.checker: StandbyCheck | ActiveCheck = (
            StandbyCheck(self.side, cfg.check.interval_s)
            if isinstance(self.side, StandbySide)
            else ActiveCheck(self.side, self.peer, cfg.check.interval_s)  # type: ignore[arg-type]
        )
        self.metrics = Metrics(self.side)
        self.auditor = Auditor(self.side, cfg.audit, cfg.node.name)
        self.metrics.watch_audit(self.auditor)
        self.last_verdict: Verdict | None = None
        self.keeper: Any = None
        self.store: Any = None
        self.dispatcher: Any = None
        self._check_lock = asyncio.Lock()
        self.guard = ConnectionGuard(cfg.limits)
        self.listener: asyncio.Server | None = None
        # The "rejected request" warnings, per client address and reason (past 1024 addresses: one key).
        self.rejected = Throttle[tuple[str, str]](
            cfg.limits.log_rate_s, overflow=("(other clients)", "no or wrong token")
        )
        self._rejected_flush: asyncio.TimerHandle | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- routes ------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[self.guard.middleware, self._errors, self._auth],
            client_max_size=self.cfg.limits.max_body_bytes,
        )
        app.router.add_get("/healthz", self.healthz)  # liveness probe, no auth, no details
        app.router.add_get("/metrics", self.prometheus)  # Prometheus text format
        app.router.add_get(f"{API}/info", self.info)  # identity, role, change seq, Merkle roots
        app.router.add_post(f"{API}/tree", self.tree)  # listings of directories, with subdir hashes
        app.router.add_get(f"{API}/changes", self.changes)  # long-poll change feed after a seq
        app.router.add_post(f"{API}/files", self.files)  # framed stream of file contents
        app.router.add_get(f"{API}/status", self.status)  # this node's sync state, as JSON
        app.router.add_post(f"{API}/sync", self.sync)  # standby: reconcile now, NDJSON progress
        app.router.add_post(f"{API}/check", self.check_now)  # one sync check now, recorded ({"deep": true})
        app.router.add_post(f"{API}/audit", self.audit_now)  # a full audit pass of this node now, its findings
        app.router.add_get(f"{API}/alarms", self.alarms)  # this node's alarms (?all=1 with cleared)
        app.router.add_post(f"{API}/diag", self.diag)  # one diagnosis fact or fix on this node
        app.router.add_post(f"{API}/diagnose", self.diagnose)  # the whole procedure, run by this agent
        app.router.add_post(f"{API}/alarms/diagnosis", self.store_diagnosis)  # keep a diagnosis with its alarm
        from hasync.agent import collect_routes

        collect_routes.add_routes(self, app)
        return app

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
        if request.path == "/healthz":
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        # Header bytes that are not UTF-8 arrive as lone surrogates: compared as bytes, they simply differ.
        given = token.strip().encode("utf-8", "surrogateescape")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, self.cfg.token.encode()):
            self._log_rejected(request.remote or "?", "no token" if not header else "wrong token", request.path)
            return error_response(401, "auth_failed", "missing or wrong bearer token")
        return await handler(request)

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

    def _active(self) -> ActiveSide:
        if not isinstance(self.side, ActiveSide):
            raise WrongRole(f"{self.cfg.node.name} is the standby; ask the active node")
        if not self.ready:
            raise Starting(f"{self.cfg.node.name} is starting: it is still scanning its sync dirs")
        return self.side

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def prometheus(self, request: web.Request) -> web.Response:
        from hasync.metrics import CONTENT_TYPE

        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def info(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = {
            "node": self.cfg.node.name,
            "hostname": self.cfg.node.hostname,
            "role": self.role,
            "time": clock.now(),
        }
        if isinstance(self.side, ActiveSide):
            self._active()  # not before the first scan: its roots would say the dirs are missing
            owner = request.query.get("owner")
            if owner is not None:
                # Owners are compared only when both agents run as root: only then can the standby set them.
                self.side.set_owner_mode(self.cfg.is_root and owner == "1")
            body.update(
                instance=self.side.instance, seq=self.side.seq, roots=self.side.roots(), with_owner=self.side.with_owner
            )
            since = request.query.get("since")
            if since is not None:
                t = self.side.oldest_change_after(query_int(request, "since", 0))
                body["lag_s"] = 0.0 if t is None else max(0.0, clock.now() - t)
        return web.Response(body=pack(body), content_type=MSGPACK)

    async def _msgpack(self, request: web.Request) -> dict[str, Any]:
        return await msgpack_object(request, self.cfg.limits.body_timeout_s)

    async def _json(self, request: web.Request) -> dict[str, Any]:
        return await json_object(request, self.cfg.limits.body_timeout_s)

    def _dir_name(self, req: dict[str, Any], refusal: type[HasyncError]) -> str:
        name = field(req, "dir", str)
        try:
            self.cfg.sync_dir(name)
        except KeyError:
            raise refusal(f"no sync dir named {clip(name, 80)!r}") from None
        return name

    async def tree(self, request: web.Request) -> web.Response:
        req = await self._msgpack(request)
        name = self._dir_name(req, BadRequest)
        dirs = [dec_path(p, allow_root=True) for p in field(req, "dirs", list)]
        return web.Response(body=pack(self._active().listing(name, dirs)), content_type=MSGPACK)

    async def changes(self, request: web.Request) -> web.Response:
        since = query_int(request, "since", 0)
        if isinstance(self.checker, ActiveCheck):
            self.checker.peer_since = since
        wait = min(max(query_float(request, "wait", 0.0), 0.0), 60.0)
        body = await self._active().changes(request.query.get("instance", ""), since, wait)
        return web.Response(body=pack(body), content_type=MSGPACK)

    async def files(self, request: web.Request) -> web.StreamResponse:
        req = await self._msgpack(request)
        name = self._dir_name(req, PathRefused)
        paths = [dec_path(p) for p in field(req, "paths", list)]
        resume: dict[str, tuple[int, bytes]] = {}
        for item in field(req, "resume", list, []):  # [path, offset, BLAKE3 of the first offset bytes]
            try:
                raw, offset, digest = item
            except (TypeError, ValueError):
                raise PathRefused(f"malformed resume entry {item!r:.80}") from None
            if not isinstance(offset, int) or offset <= 0 or not isinstance(digest, bytes) or len(digest) != 32:
                raise PathRefused(f"malformed resume entry {item!r:.80}")
            resume[dec_path(raw)] = (offset, digest)
        side = self._active()
        resp = web.StreamResponse(headers={"Content-Type": FRAMES})
        await resp.prepare(request)
        async for chunk in side.stream_files(name, paths, resume):
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    # -- status, checks, alarms ----------------------------------------------
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
        }
        if isinstance(self.side, StandbySide):
            snap = self.side.snapshot()
            lag: float | None = 0.0 if snap["in_sync"] else None
            if not snap["in_sync"] and self.last_verdict is not None and not self.last_verdict.in_sync:
                # The standby's own check knows how long it has lacked what it could not apply; the
                # active, whose change feed the standby has read past it, does not (its lag would say 0).
                lag = self.last_verdict.lag_s
            if not snap["in_sync"] and self.side.peer_error is None and not brief:
                try:
                    feed_lag = float((await self.side.client.info(since=self.side.seq)).get("lag_s", 0.0))
                    lag = max(feed_lag, lag or 0.0)
                except PeerError:
                    pass
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
        elif brief:
            # What a peer asks for: never ask the peer back (two actives would wait on each other).
            doc.update(
                errors=[o.status_json() for o in self.checker.own_errors()]
                if isinstance(self.checker, ActiveCheck)
                else []
            )
            return doc
        else:
            assert isinstance(self.checker, ActiveCheck)
            v = await self.checker.verdict()
            peer = self.checker.last_peer_status or {}
            doc.update(
                peer_reachable=v.peer_reachable,
                in_sync=v.in_sync,
                lag_s=v.lag_s,
                last_sync_at=peer.get("last_sync_at"),
                pending=peer.get("pending"),
                cause=None if v.cause is None else v.cause.value,
                errors=[o.status_json() for o in v.out_of_sync],
            )
            if not v.peer_reachable and v.out_of_sync:
                doc["peer_error"] = {"cause": v.out_of_sync[0].cause, "message": v.out_of_sync[0].reason}
        if brief:
            return doc
        doc["audit"] = self.auditor.snapshot()
        doc["alarms"] = await self.alarm_docs(include_cleared=False, with_peer=True)
        from hasync.alarms.guard import GuardedStore

        doc["alarm_store"] = self.store.health().to_json() if isinstance(self.store, GuardedStore) else None
        doc["last_check"] = None if self.last_verdict is None else self.last_verdict.to_json()
        doc["transferred"] = {
            "files_sent": self.side.sent_files,
            "bytes_sent": self.side.sent_bytes,
            "files_received": self.side.received_files,
            "bytes_received": self.side.received_bytes,
        }
        doc["watcher"] = self.side.watcher_health().as_json()
        return doc

    async def run_check(self, found: list[Finding] | None = None) -> Verdict:
        """One check, recorded like the periodic one: it raises and clears the alarm. What the audit
        found since the last check (and `found`, the peer's in a deep check) is out of sync too."""
        async with self._check_lock:
            v = await timed(self.checker.verdict(), self.cfg.node.name, self.role)
            v = with_findings(v, [*self.auditor.take_unreported(), *(found or [])])
            log_transition(self.last_verdict, v)
            self.last_verdict = v
            m = self.metrics
            m.in_sync.set(1 if v.in_sync else 0)
            m.lag.set(v.lag_s if v.lag_s is not None else float("nan"))
            if v.in_sync:
                m.last_sync.set(v.checked_at.timestamp())
            m.out_of_sync.set(len(v.out_of_sync))
            m.checks.labels(result="in_sync" if v.in_sync else "out_of_sync").inc()
            m.check_duration.observe(v.duration_s)
            m.check_cpu.set(v.cpu_s)
            if self.keeper is not None:
                host = self.checker.peer_hostname if isinstance(self.checker, ActiveCheck) else None
                alarm = await self.keeper.on_verdict(v, host)
                m.alarm_active.labels(alarm_id="45641").set(1 if alarm is not None else 0)
            return v

    def status_url(self) -> str:
        """This agent's status page as others reach it (Alertmanager's generatorURL): the listen
        address, or this node's hostname when it listens on every address."""
        host, port = self.cfg.listen_host_port()
        if host in ("0.0.0.0", "::", ""):
            name = self.cfg.node.hostname
            host = name if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}", name) else socket.gethostname()
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self.cfg.security.tls_cert else "http"
        return f"{scheme}://{host}:{port}{API}/status"

    async def check_now(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        if field(body, "deep", bool, False):
            return web.json_response(await self.deep_check())
        return web.json_response((await self.run_check()).to_json())

    async def audit_now(self, request: web.Request) -> web.Response:
        """This node's part of a deep check: its findings are reported by the asking node's check."""
        if not self.ready:
            raise Starting(f"{self.cfg.node.name} is starting: it is still scanning its sync dirs")
        found = await self.auditor.run_now()
        self.auditor.unreported = [f for f in self.auditor.unreported if f not in found]
        return web.json_response(self._audit_doc(found))

    def _audit_doc(self, found: list[Finding]) -> dict[str, Any]:
        a = self.auditor
        return {
            "node": self.cfg.node.name,
            "role": self.role,
            "files": a.files,
            "bytes": a.bytes,
            "duration_s": round(a.last_pass_s or 0.0, 3),
            "findings": [f.as_json() for f in found],
        }

    async def deep_check(self) -> dict[str, Any]:
        """`hasync check --deep`: a full audit now on the active, then on the standby (each repairs what
        it finds), then the check, in which every difference found is out of sync."""
        nodes: dict[str, Any] = {}
        theirs: list[Finding] = []

        async def mine() -> None:
            nodes[self.cfg.node.name] = self._audit_doc(await self.auditor.run_now())

        async def peer() -> None:
            try:
                doc = await self.peer.json("POST", f"{API}/audit", {}, timeout=DEEP_TIMEOUT_S)
            except PeerError as exc:
                nodes[self.cfg.peer.name] = {"node": self.cfg.peer.name, "error": exc.message}
                return
            nodes[self.cfg.peer.name] = doc
            theirs.extend(Finding(**f) for f in doc.get("findings", []))

        for step in (mine, peer) if self.role == "active" else (peer, mine):
            await step()
        v = await self.run_check(theirs)
        doc = v.to_json()
        doc["audit"] = {"nodes": nodes, "differences": sum(len(n.get("findings", [])) for n in nodes.values())}
        return doc

    async def alarm_docs(self, include_cleared: bool, with_peer: bool) -> list[dict[str, Any]]:
        """This node's alarms, and (unless the store is shared) the peer's, newest first."""
        if self.store is None:
            return []
        if include_cleared:
            mine = await asyncio.to_thread(self.store.history)
        else:
            mine = await asyncio.to_thread(self.store.active)
        docs = [a.to_json(diagnosis=True) for a in mine]
        if with_peer and not (self.keeper is not None and self.keeper.shared):
            return await self.peer.with_alarms(docs, include_cleared, timeout=min(5.0, self.cfg.peer.timeout_s))
        return sorted(docs, key=lambda d: d["raised_at"], reverse=True)

    async def alarms(self, request: web.Request) -> web.Response:
        include_cleared = request.query.get("all") == "1"
        return web.json_response(await self.alarm_docs(include_cleared, with_peer=request.query.get("pair") == "1"))

    async def diag(self, request: web.Request) -> web.Response:
        from hasync.diagnose.nodes import path_args, run_op

        body = await self._json(request)
        op = field(body, "op", str)
        del body["op"]
        paths = path_args(self.cfg, body.get("paths")) if op in ("stat", "delete_junk") else []  # PathRefused: 400
        result = await asyncio.to_thread(run_op, self.cfg, op, body)
        if op == "delete_junk":
            # Know about the deletions now, not when their events arrive: a recheck follows at once.
            known = {d.name: d.path for d in self.cfg.sync.dirs}
            await self.side.refresh(known[d] / p for d, p in paths if d in known)
        return web.json_response(result)

    async def run_diagnosis(self, fix: bool, alarm: dict[str, Any] | None) -> dict[str, Any]:
        """The procedure run by this agent (on demand, or when the alarm is raised)."""
        from hasync.diagnose import runner
        from hasync.diagnose.nodes import LocalNode
        from hasync.peer.client import AgentClient

        status = await self.status_doc(brief=True) if self.role == "standby" else None
        async with AgentClient(self.cfg.local_url(), self.cfg.token, self.cfg.peer.timeout_s, "local") as me:
            d = await runner.run(
                self.cfg, self.role, LocalNode(self.cfg), self.peer, me, fix, alarm, standby_status=status
            )
        doc = d.as_json()
        if alarm is not None:
            await self.keep_diagnosis(alarm["fingerprint"], alarm["raised_at"], doc)
        return doc

    async def keep_diagnosis(self, fingerprint: str, raised_at: str, doc: dict[str, Any]) -> bool:
        """Store `doc` with the alarm (fingerprint, raised_at) if this node's store has it."""
        if self.store is None:
            return False
        for a in await asyncio.to_thread(self.store.history):
            if a.fingerprint == fingerprint and a.to_json()["raised_at"] == raised_at:
                await asyncio.to_thread(self.store.set_diagnosis, a.id, doc)
                return True
        return False

    async def diagnose(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        fix = field(body, "fix", bool, False)
        alarm = body.get("alarm")
        if alarm is not None:
            alarm = as_object(alarm, "alarm")
            field(alarm, "fingerprint", str)
            field(alarm, "raised_at", str)
        return web.json_response(await self.run_diagnosis(fix, alarm))

    async def store_diagnosis(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        fingerprint, raised_at = field(body, "fingerprint", str), field(body, "raised_at", str)
        kept = await self.keep_diagnosis(fingerprint, raised_at, field(body, "diagnosis", dict))
        return web.json_response({"stored": kept})

    async def _on_raise(self, alarm: Any) -> None:
        """Diagnose right away, so that the alarm already carries its diagnosis when someone looks."""
        if not self.cfg.diagnose.on_raise:
            return
        try:
            await self.run_diagnosis(self.cfg.diagnose.auto_fix, alarm.to_json())
        except Exception:
            log.exception("automatic diagnosis failed")

    async def sync(self, request: web.Request) -> web.StreamResponse:
        if not isinstance(self.side, StandbySide):
            raise WrongRole(f"{self.cfg.node.name} is the active node: sync runs on the standby")
        side = self.side
        log.info("sync requested %s", kv(by=request.remote))
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        # The watcher keeps the local tree current: no rescan, so "nothing changed" costs next to nothing.
        task = asyncio.create_task(side.reconcile(progress=queue.put_nowait))
        while not task.done():
            getter = asyncio.ensure_future(queue.get())
            # A keep-alive at least every 5 s, so that the client can time out a hung agent.
            await asyncio.wait({getter, task}, timeout=5.0, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                await resp.write(json.dumps(getter.result()).encode() + b"\n")
            else:
                getter.cancel()
                if not task.done():
                    await resp.write(b'{"event": "alive"}\n')
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
            "peer_starting": isinstance(side.peer_error, PeerStarting),  # sync --once waits and asks again
        }
        await resp.write(json.dumps(final).encode() + b"\n")
        await resp.write_eof()
        return resp

    # -- lifecycle ---------------------------------------------------------
    async def open_alarms(self, run_dispatcher: bool = True, guarded: bool = True) -> None:
        """The alarm store, notifiers and keeper. `guarded` (the agent): a store that cannot be opened or
        fails later is a reported fault, not a stop (`hasync.alarms.guard`); otherwise StoreError stops."""
        from functools import partial

        from hasync.alarms.guard import GuardedStore
        from hasync.alarms.notify import Dispatcher, build_notifiers
        from hasync.alarms.store import is_postgres_url, open_store, store_location
        from hasync.keeper import AlarmKeeper

        store, state_dir = self.cfg.alarms.store, self.cfg.node.state_dir
        if guarded:
            up = self.metrics.alarm_store_up
            self.store = GuardedStore(
                partial(open_store, store, state_dir, **({"move_aside_damaged": True} if store == "sqlite" else {})),
                store_location(store, state_dir),
                on_change=lambda ok: up.set(1 if ok else 0),
            )
            if not run_dispatcher:
                await asyncio.to_thread(self.store.open)
            # else the store's retry task opens it at once: a store that hangs never delays replication
        else:
            self.store = await asyncio.to_thread(open_store, store, state_dir)
        notifiers = build_notifiers(
            self.cfg.alarms.notify,
            hostname=self.cfg.node.hostname,
            config_path=str(self.cfg.path),
            resend_s=self.cfg.alarms.resend_s,
            resolved_retention_s=self.cfg.alarms.resolved_retention_s,
            generator_url=self.status_url(),
        )
        self.dispatcher = Dispatcher(self.store, notifiers)
        shared = is_postgres_url(self.cfg.alarms.store)
        self.keeper = AlarmKeeper(
            self.cfg, self.role, self.store, self.dispatcher, [n.key for n in notifiers], self.peer, shared
        )
        self.keeper.on_raise = self._on_raise
        if run_dispatcher:
            self._tasks.append(asyncio.create_task(self.dispatcher.run(self._stop), name="dispatcher"))
        if guarded and run_dispatcher:
            retry = self.store.run(self._stop, on_recover=self.dispatcher.wake)
            self._tasks.append(asyncio.create_task(retry, name="alarm-store"))

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        lock = StateLock(self.cfg.node.state_dir)
        lock.acquire("agent")
        runner = web.AppRunner(
            self.app(),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=1.0,
            keepalive_timeout=self.cfg.limits.idle_timeout_s,
            max_headers=MAX_HEADERS,
            logger=HTTP_LOG,
        )
        await runner.setup()
        assert runner.server is not None
        host, port = self.cfg.listen_host_port()
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
            raise ConfigError(
                f"{self.cfg.path}: node.listen: cannot listen on {self.cfg.node.listen}: {reason}"
            ) from None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        log.info(
            "agent started %s",
            kv(node=self.cfg.node.name, role=self.role, listen=self.cfg.node.listen, pid=os.getpid()),
        )
        try:
            await self.open_alarms()
            await self.side.start()
            self.ready = True
            if self.cfg.audit.enabled:
                self._tasks.append(asyncio.create_task(self.auditor.run_forever(), name="audit"))
            self._tasks.append(
                asyncio.create_task(run_periodic(self.run_check, self.cfg.check.interval_s, self._stop), name="check")
            )
            if ready is not None:
                ready()
            await self._stop.wait()
            log.info("agent stopping %s", kv(node=self.cfg.node.name))
        finally:
            self._stop.set()
            try:
                await asyncio.wait_for(self._shutdown(runner), STOP_TIMEOUT_S)
            except TimeoutError:
                log.warning("shutdown timed out")
            lock.release()
            log.info("agent stopped %s", kv(node=self.cfg.node.name))

    async def close_clients(self) -> None:
        await self.peer.close()

    async def _shutdown(self, runner: web.AppRunner) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.side.stop()
        await self.close_clients()
        if self.listener is not None:
            self.listener.close()
        await runner.cleanup()
        if self.store is not None:
            await asyncio.to_thread(self.store.close)
