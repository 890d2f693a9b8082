"""The peer client's transport seam: HTTP over aiohttp, or in memory for tests, and the one exception map.

`AgentClient` speaks to an agent only through a `Transport`: `request(...)` opens one exchange and
yields a `Response` whose body is read in pieces (`read`, `readexactly`, `readline`). Two
implementations, as httpx's `_transports/`:

- `AiohttpTransport`: what the agent and the CLI use (one aiohttp session, at most 8 connections);
- `MemoryTransport`: a handler function `async (MemoryRequest) -> MemoryResponse` answers each request,
  its body bytes or an async iterator of chunks (a frame stream served piece by piece, cut, or failing),
  so the standby's fetch logic is tested without processes.

Transport failures become the PeerError subclasses at one place, `map_exceptions` (as httpx's), with
one table: a refused connection is `peer_agent_down`, a timeout `peer_unreachable`, a connection the
agent closed or reset `peer_agent_down`, anything else of the transport a plain PeerError.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp
from aiohttp.http_exceptions import LineTooLong

from hasync.errors import PeerAgentDown, PeerError, PeerUnreachable

MAX_LINE = 128 << 10  # a line of a line stream (NDJSON progress): aiohttp's default, kept for both transports
CONNECTIONS = 8  # connections one client keeps to its agent


@dataclass(frozen=True)
class Timeouts:
    """Limits of one exchange, in seconds (None: none). `read`: the longest wait for the next bytes."""

    total: float | None
    connect: float | None
    read: float | None


class Response(Protocol):
    """An answer whose body is read in pieces; the exchange's context manager closes it."""

    @property
    def status(self) -> int: ...

    @property
    def content_length(self) -> int | None: ...

    @property
    def headers(self) -> Mapping[str, str]:
        """The answer's headers (case-insensitive names where the transport has them)."""

    # Declared as returning an awaitable (not `async def`): an implementation may hand out its stream's
    # own bound methods, as AiohttpResponse does.
    def read(self, n: int) -> Awaitable[bytes]:
        """Up to `n` bytes of the body; b"" at its end."""

    def readexactly(self, n: int) -> Awaitable[bytes]:
        """Exactly `n` bytes; asyncio.IncompleteReadError when the body ends first."""

    async def readline(self) -> bytes:
        """The next line with its b"\\n" (the last one may lack it); b"" at the end. ValueError past MAX_LINE."""

    def close(self) -> None:
        """Drop the connection: the rest of the body is never read."""


class Transport(Protocol):
    """Sends one request and yields its response (see the module docstring)."""

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None,
        body: bytes | None,
        headers: Mapping[str, str],
        timeouts: Timeouts,
    ) -> contextlib.AbstractAsyncContextManager[Response]: ...

    async def close(self) -> None: ...


# -- the one exception map --------------------------------------------------------------------------
# What a transport raises: aiohttp's errors, OSError, timeouts, and a body that ended early.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    TimeoutError,
    aiohttp.ClientError,
    OSError,
    asyncio.IncompleteReadError,
)
_REFUSED = {errno.ECONNREFUSED, errno.ECONNRESET}
# A kept-alive connection the peer dropped (its agent restarted, an outage reset it) fails with these.
_DROPPED = {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED}


def _connect_failed(exc: BaseException, where: str, timeout_s: float) -> PeerError | None:
    assert isinstance(exc, aiohttp.ClientConnectorError)
    if getattr(exc.os_error, "errno", None) in _REFUSED:
        return PeerAgentDown(f"{where}: connection refused (host up, agent not running)")
    return PeerUnreachable(f"{where}: {exc.os_error.strerror or exc.os_error}")


def _timed_out(exc: BaseException, where: str, timeout_s: float) -> PeerError | None:
    return PeerUnreachable(f"{where}: no answer within {timeout_s:g} s")


def _closed(exc: BaseException, where: str, timeout_s: float) -> PeerError | None:
    return PeerAgentDown(f"{where}: connection closed by the agent")


def _reset(exc: BaseException, where: str, timeout_s: float) -> PeerError | None:
    """An established connection that went away (not a new one refused: that is ClientConnectorError)."""
    if getattr(exc, "errno", None) not in _DROPPED:
        return None
    return PeerAgentDown(f"{where}: connection reset ({getattr(exc, 'strerror', None) or exc})")


def _other(exc: BaseException, where: str, timeout_s: float) -> PeerError | None:
    return PeerError(f"{where}: {exc}")


_Rule = Callable[[BaseException, str, float], "PeerError | None"]
# First match wins; a rule that answers None passes the error on to the next ones.
EXCEPTION_MAP: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], _Rule], ...] = (
    (aiohttp.ClientConnectorError, _connect_failed),
    ((asyncio.TimeoutError, aiohttp.ServerTimeoutError), _timed_out),
    ((aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, asyncio.IncompleteReadError), _closed),
    (aiohttp.ClientOSError, _reset),
    (TRANSPORT_ERRORS, _other),
)


def map_exception(exc: BaseException, where: str, timeout_s: float) -> PeerError:
    """The PeerError for a transport failure. `where` names the agent ("peer agent at http://..."),
    `timeout_s` is the limit a timeout message states."""
    for types, rule in EXCEPTION_MAP:
        if isinstance(exc, types) and (mapped := rule(exc, where, timeout_s)) is not None:
            return mapped
    raise TypeError(f"not a transport error: {exc!r}")  # the table's last row takes every TRANSPORT_ERRORS


@contextlib.contextmanager
def map_exceptions(where: str, timeout_s: float) -> Iterator[None]:
    """Raise a transport failure inside the block as its PeerError (`raise ... from exc`)."""
    try:
        yield
    except TRANSPORT_ERRORS as exc:
        raise map_exception(exc, where, timeout_s) from exc


# -- aiohttp ----------------------------------------------------------------------------------------
class AiohttpResponse:
    """An aiohttp response seen through `Response`. Its body's read methods are aiohttp's own, bound
    (no call in between: the file stream's frames are read through them)."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.content_length = resp.content_length
        self.headers: Mapping[str, str] = resp.headers
        self.read: Callable[[int], Awaitable[bytes]] = resp.content.read
        self.readexactly: Callable[[int], Awaitable[bytes]] = resp.content.readexactly

    async def readline(self) -> bytes:
        try:  # aiohttp's limit is MAX_LINE (twice its 64 KiB buffer limit)
            return await self._resp.content.readline()
        except LineTooLong as exc:  # a ValueError before aiohttp 3.12, not since: as the memory transport says it
            raise ValueError(f"a line longer than {MAX_LINE} bytes") from exc

    def close(self) -> None:
        self._resp.close()


class AiohttpTransport:
    """HTTP to the agent at `base_url` over one aiohttp session (made on first use, again after close)."""

    def __init__(self, base_url: str, connections: int = CONNECTIONS) -> None:
        self.base_url = base_url.rstrip("/")
        self.connections = connections
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.connections, force_close=False, enable_cleanup_closed=True),
            )
        return self._session

    @contextlib.asynccontextmanager
    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None,
        body: bytes | None,
        headers: Mapping[str, str],
        timeouts: Timeouts,
    ) -> AsyncIterator[Response]:
        # aiohttp (>= 3.9) sends a GET once more on a fresh connection when a kept-alive one was dropped.
        async with self.session.request(
            method,
            self.base_url + path,
            data=body,
            params=params,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeouts.total, connect=timeouts.connect, sock_read=timeouts.read),
        ) as resp:
            yield AiohttpResponse(resp)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# -- in memory --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryRequest:
    """A request as the handler of a MemoryTransport sees it."""

    method: str
    path: str
    params: Mapping[str, str]
    body: bytes
    headers: Mapping[str, str]
    timeouts: Timeouts


@dataclass
class MemoryResponse:
    """The handler's answer. `body`: bytes, or an async iterator of chunks (it may raise, e.g.
    ConnectionResetError, or stop early: a cut stream). `content_length`: as a server would announce
    it (default: the length of a bytes body, None for chunks)."""

    status: int = 200
    body: bytes | AsyncIterable[bytes] = b""
    content_length: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


Handler = Callable[[MemoryRequest], Awaitable[MemoryResponse]]


class MemoryBody:
    """A MemoryResponse's body, read as a socket would give it: in the chunks the handler made."""

    def __init__(self, resp: MemoryResponse, read_timeout_s: float | None) -> None:
        self.status = resp.status
        self.headers = resp.headers
        body = resp.body
        if isinstance(body, bytes):
            self.content_length: int | None = len(body) if resp.content_length is None else resp.content_length
            self._chunks: AsyncIterator[bytes] | None = None
            self._buf = bytearray(body)
        else:
            self.content_length = resp.content_length
            self._chunks = aiter(body)
            self._buf = bytearray()
        self._read_timeout_s = read_timeout_s
        self.closed = False

    async def _more(self) -> bool:
        """Append the next chunk to the buffer; False at the end of the body."""
        if self._chunks is None or self.closed:
            return False
        try:
            async with asyncio.timeout(self._read_timeout_s):
                chunk = await anext(self._chunks)
        except StopAsyncIteration:
            self._chunks = None
            return False
        self._buf += chunk
        return True

    async def read(self, n: int) -> bytes:
        while not self._buf and await self._more():
            pass
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    async def readexactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            if not await self._more():
                partial = bytes(self._buf)
                self._buf.clear()
                raise asyncio.IncompleteReadError(partial, n)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    async def readline(self) -> bytes:
        while (end := self._buf.find(b"\n")) < 0:
            if len(self._buf) > MAX_LINE or not await self._more():
                break
        n = len(self._buf) if end < 0 else end + 1
        if n > MAX_LINE:
            raise ValueError(f"a line longer than {MAX_LINE} bytes")
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def close(self) -> None:
        self.closed = True


class MemoryTransport:
    """Answers every request with `handler` (no sockets); `requests` lists what was asked, in order."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[MemoryRequest] = []
        self.closed = False

    @contextlib.asynccontextmanager
    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None,
        body: bytes | None,
        headers: Mapping[str, str],
        timeouts: Timeouts,
    ) -> AsyncIterator[Response]:
        req = MemoryRequest(method, path, dict(params or {}), body or b"", dict(headers), timeouts)
        self.requests.append(req)
        async with asyncio.timeout(timeouts.total):
            body_ = MemoryBody(await self.handler(req), timeouts.read)
            try:
                yield body_
            finally:
                body_.close()

    async def close(self) -> None:
        self.closed = True
