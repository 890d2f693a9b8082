"""The HTTP client one agent (or the CLI) uses to talk to an agent."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping
from types import TracebackType
from typing import Any, TypeVar

from hasync.errors import (
    AuthFailed,
    MalformedAnswer,
    PeerAgentDown,
    PeerError,
    PeerStarting,
    PeerWrongRole,
    StaleEpoch,
)
from hasync.peer.frames import FrameError, read_frames
from hasync.peer.models import ChangeFeed, PeerInfo, PeerStatus
from hasync.peer.protocol import API, F_DONE, MSGPACK, dec_changes, dec_info, dec_status, pack, unpack
from hasync.peer.transport import AiohttpTransport, Response, Timeouts, Transport, map_exceptions
from hasync.roles.state import EPOCH_HEADER, ROLE_HEADER, Fence, parse_epoch, parse_role

MAX_RESPONSE_BYTES = 64 << 20  # limits.max_response_bytes' default: answers read whole (not file streams)
MAX_ERROR_BYTES = 64 << 10  # an error answer's body: only its first 200 characters are shown

T = TypeVar("T")


class AgentClient:
    """Authenticated calls to one agent; every failure becomes a PeerError subclass.

    Every call goes through `transport` (peer/transport.py: aiohttp by default, in memory for tests), and
    its failures through the one exception map there. An answer read whole (msgpack, JSON) may be at
    most `max_response_bytes` long; file and log streams are read frame by frame, each frame at most
    frames.MAX_FRAME. Past either, the call fails with a PeerError (cause sync_error: the agent answers,
    but not as the protocol says).

    The replication answers are decoded here, once (peer_info, change_feed, peer_status): a caller
    gets the frozen value of peer/models.py, or a MalformedAnswer (a PeerError, sync_error) when the
    answer is not what the protocol says.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        timeout_s: float = 10.0,
        name: str = "peer",
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        transport: Transport | None = None,
        fence: Fence | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # The node's role and epoch (hasync.roles.state): sent with every request, and the peer's, in every
        # answer, judged by its rules (a stale active's answer is refused, a newer active demotes this one).
        # None for the CLI's clients: a command is no party to the epochs.
        self.fence = fence
        self.name = name
        self.timeout_s = timeout_s
        self.max_response_bytes = max_response_bytes
        self.transport: Transport = AiohttpTransport(self.base_url) if transport is None else transport
        self._headers = {"Authorization": f"Bearer {token}"}
        self._where = f"{name} agent at {self.base_url}"

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.transport.close()

    def _timeouts(self, total: float | None) -> Timeouts:
        """A call read whole: `total` for all of it (None: no limit), connecting within timeout_s."""
        return Timeouts(
            total=total, connect=self.timeout_s if total is None else min(self.timeout_s, total), read=total
        )

    @contextlib.asynccontextmanager
    async def _exchange(
        self,
        method: str,
        path: str,
        timeouts: Timeouts,
        *,
        body: bytes | None = None,
        content_type: str | None = None,
        params: Mapping[str, str] | None = None,
        check: bool = True,
    ) -> AsyncIterator[Response]:
        """One request, its answer's status checked (`check`); a transport failure, here or while the
        caller reads the body, is raised as its PeerError."""
        headers = self._headers if content_type is None else {**self._headers, "Content-Type": content_type}
        if self.fence is not None:
            headers = {**headers, **self.fence.headers()}
        with map_exceptions(self._where, self.timeout_s):
            async with self.transport.request(
                method, path, params=params, body=body, headers=headers, timeouts=timeouts
            ) as resp:
                if self.fence is not None:
                    self._fenced(resp)
                if check:
                    await self._check_response(resp)
                yield resp

    def _fenced(self, resp: Response) -> None:
        """The epoch rules applied to the answer's epoch and role (StaleEpoch when they refuse it). An
        answer without them (an agent of before epochs, a proxy's error page) is left to its status."""
        assert self.fence is not None
        raw, role = resp.headers.get(EPOCH_HEADER), resp.headers.get(ROLE_HEADER)
        if raw is None or role is None:
            return
        try:
            epoch, role = parse_epoch(raw), parse_role(role)
        except ValueError as exc:
            resp.close()
            raise MalformedAnswer("epoch", str(exc)) from None
        try:
            self.fence.heard(epoch, role, answer=True)
        except StaleEpoch:
            resp.close()
            raise

    async def _read_capped(self, resp: Response, path: str, limit: int | None = None) -> bytes:
        """The whole body of `resp`, refused (PeerError) past `limit` (default: max_response_bytes)
        without reading the rest."""
        limit = self.max_response_bytes if limit is None else limit
        if resp.content_length is not None and resp.content_length > limit:
            raise self._too_large(resp, path, limit)
        buf = bytearray()
        while chunk := await resp.read(min(1 << 20, limit + 1 - len(buf))):
            buf += chunk
            if len(buf) > limit:
                raise self._too_large(resp, path, limit)
        return bytes(buf)

    def _too_large(self, resp: Response, path: str, limit: int) -> PeerError:
        resp.close()  # drop the connection: the rest of the body is never read
        path = path.partition("?")[0]  # the URL's path, as aiohttp's resp.url.path gave it
        return PeerError(
            f"{self._where} sent an answer to {path} of more than {limit} bytes (limits.max_response_bytes)"
        )

    async def _check_response(self, resp: Response) -> None:
        """Raise the PeerError an HTTP error status stands for (401: AuthFailed)."""
        if resp.status == 200:
            return
        body = bytearray()  # its first MAX_ERROR_BYTES: enough for any error we send
        while len(body) < MAX_ERROR_BYTES and (chunk := await resp.read(MAX_ERROR_BYTES - len(body))):
            body += chunk
        try:
            err = json.loads(body)["error"]
            msg = f"{err['code']}: {err['message']}"
        except (ValueError, KeyError, TypeError):
            msg = body[:200].decode("utf-8", "replace")
        if resp.status == 503 and msg.startswith("starting:"):
            raise PeerStarting(f"{self._where} is starting (scanning its sync dirs)")
        if resp.status == 503 and msg.startswith("busy:"):
            raise PeerAgentDown(f"{self._where} is busy: it holds its maximum of connections")
        if resp.status == 401:
            raise AuthFailed(f"{self._where} rejected our token (HTTP 401)")
        if resp.status == 409 and msg.startswith("stale_epoch:"):
            raise StaleEpoch(f"{self._where}: {msg}")
        if resp.status == 409 and msg.startswith("wrong_role:"):
            raise PeerWrongRole(f"{self._where}: HTTP 409: {msg}")
        raise PeerError(f"{self._where}: HTTP {resp.status}: {msg}")

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        timeout: float | None = -1.0,
        as_json: bool = False,
    ) -> Any:
        total = self.timeout_s if timeout == -1.0 else timeout
        data = None if body is None else pack(body)
        async with self._exchange(
            method,
            path,
            self._timeouts(total),
            body=data,
            content_type=None if data is None else MSGPACK,
            params=params,
        ) as resp:
            raw = await self._read_capped(resp, path)
        return self._decode(path, raw, as_json)

    def _decode(self, path: str, raw: bytes, as_json: bool) -> Any:
        try:
            return json.loads(raw) if as_json else unpack(raw)
        except (ValueError, TypeError, RecursionError) as exc:  # msgpack's and json's errors are ValueErrors
            what = "JSON" if as_json else "msgpack"
            raise PeerError(f"{self._where} sent {path} an answer that is not {what}: {exc}") from exc

    def _decoded(self, path: str, decoder: Callable[[Any], T], doc: Any) -> T:
        """`doc` decoded by one of protocol's decoders; what it refuses is the peer's fault."""
        try:
            return decoder(doc)
        except ValueError as exc:
            raise MalformedAnswer(path, str(exc)) from exc

    # -- the API (docs/protocol.md) -----------------------------------------
    async def health(self) -> bool:
        async with self._exchange("GET", "/healthz", self._timeouts(self.timeout_s), check=False) as resp:
            return resp.status == 200

    async def peer_info(self, since: int | None = None, timeout: float = -1.0, owner: bool | None = None) -> PeerInfo:
        """The agent's identity and, on the active, its change seq and Merkle roots. `owner`: whether
        this (standby) side can replicate owners, so that the active's hashes cover them or not.
        `since`: the active adds the age of the oldest change after it (lag_s)."""
        params = {"since": str(since)} if since is not None else {}
        if owner is not None:
            params["owner"] = "1" if owner else "0"
        return dec_info(await self.request("GET", f"{API}/info", params=params, timeout=timeout))

    async def tree(self, dir_name: str, reldirs: list[bytes]) -> list[list[Any]]:
        result: list[list[Any]] = await self.request("POST", f"{API}/tree", body={"dir": dir_name, "dirs": reldirs})
        return result

    async def change_feed(self, instance: str, since: int, wait_s: float) -> ChangeFeed:
        """The active's changes after `since` (a long poll of up to `wait_s`), or a reset."""
        path = f"{API}/changes"
        params = {"instance": instance, "since": str(since), "wait": f"{wait_s:g}"}
        doc = await self.request("GET", path, params=params, timeout=wait_s + self.timeout_s)
        return self._decoded(path, dec_changes, doc)

    async def with_alarms(
        self, docs: list[dict[str, Any]], include_cleared: bool, timeout: float = -1.0
    ) -> list[dict[str, Any]]:
        """`docs` (the caller's own alarm documents) with this agent's added, one per (fingerprint,
        raised_at), newest first. Without this agent's when it does not answer."""
        try:
            theirs = await self.json("GET", f"{API}/alarms" + ("?all=1" if include_cleared else ""), timeout=timeout)
        except PeerError:
            theirs = []
        seen = {(d["fingerprint"], d["raised_at"]) for d in docs}
        merged = docs + [d for d in theirs if (d["fingerprint"], d["raised_at"]) not in seen]
        return sorted(merged, key=lambda d: d["raised_at"], reverse=True)

    async def peer_status(self, timeout: float = -1.0) -> PeerStatus:
        """The agent's brief status, as the active's check reads the standby's (never asks its peer)."""
        path = f"{API}/status"
        doc = await self.request("GET", path, params={"brief": "1"}, as_json=True, timeout=timeout)
        return self._decoded(path, dec_status, doc)

    async def status_document(self, brief: bool = False, timeout: float = -1.0) -> dict[str, Any]:
        """The agent's status as the JSON document it sends, for a caller that shows or stores it
        whole (`hasync status --json`, a collection's status.json); not checked."""
        params = {"brief": "1"} if brief else None
        result: dict[str, Any] = await self.request(
            "GET", f"{API}/status", params=params, as_json=True, timeout=timeout
        )
        return result

    async def json(self, method: str, path: str, body: Any = None, timeout: float = -1.0) -> Any:
        """A JSON request and its JSON answer (alarms, checks)."""
        total = self.timeout_s if timeout == -1.0 else timeout
        data = None if body is None else json.dumps(body).encode()
        async with self._exchange(
            method, path, self._timeouts(total), body=data, content_type="application/json"
        ) as resp:
            raw = await self._read_capped(resp, path)
        return self._decode(path, raw, as_json=True)

    async def frames(
        self,
        method: str,
        path: str,
        *,
        end: bytes,
        body: Any = None,
        params: dict[str, str] | None = None,
        read_timeout_s: float | None = None,
    ) -> AsyncIterator[tuple[bytes, bytes]]:
        """The frames of a frame stream (peer/frames.py) as (type, payload), through the frame of type `end`.
        No total time limit (a long stream takes time); `read_timeout_s` (default 3 x timeout_s) without a
        byte means the agent hangs."""
        read_s = self.timeout_s * 3 if read_timeout_s is None else read_timeout_s
        data = None if body is None else pack(body)
        async with self._exchange(
            method,
            path,
            Timeouts(total=None, connect=self.timeout_s, read=read_s),
            body=data,
            content_type=None if data is None else MSGPACK,
            params=params,
        ) as resp:
            try:
                async for kind, payload in read_frames(resp.read, resp.readexactly, end):
                    yield kind, payload
            except FrameError as exc:
                raise PeerError(f"{self._where} sent {path} a bad frame stream: {exc}") from exc

    async def files(
        self, dir_name: str, paths: list[bytes], resume: list[tuple[bytes, int, bytes]] | None = None
    ) -> AsyncIterator[tuple[bytes, bytes]]:
        """The frames of a file stream, as (type, payload), ending with F_DONE. `resume`: (path, offset,
        BLAKE3 of the first offset bytes) of the partial files this side holds."""
        body: dict[str, Any] = {"dir": dir_name, "paths": paths}
        if resume:
            body["resume"] = [list(r) for r in resume]
        async for kind, payload in self.frames("POST", f"{API}/files", end=F_DONE, body=body):
            yield kind, payload

    async def stream_json(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        timeout: float | None = None,
        idle_s: float = 60.0,
    ) -> AsyncIterator[dict[str, Any]]:
        """NDJSON events of a long operation (e.g. a sync run by the agent). The agent sends a
        keep-alive every few seconds, so `idle_s` without a line means it hangs."""
        limits = Timeouts(total=timeout, connect=self.timeout_s, read=idle_s)
        async with self._exchange(method, path, limits, params=params) as resp:
            try:
                while line := await resp.readline():  # a line past transport.MAX_LINE: ValueError
                    if line.strip():
                        event = json.loads(line)
                        if event.get("event") != "alive":
                            yield event
            except ValueError as exc:
                raise PeerError(f"{self._where} sent {path} a bad progress line: {exc}") from exc
