"""Small real receivers on 127.0.0.1 for the notifier tests, and a strict RFC 5424 parser."""

from __future__ import annotations

import asyncio
import re
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeClock:
    """The real UTC time plus an offset the test moves forward, for the dispatcher's backoff and resends."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)

    def advance_to(self, when: datetime) -> None:
        gap = when - self()
        if gap > timedelta(0):
            self.offset += gap


@dataclass
class Request:
    path: str
    body: Any
    headers: dict[str, str]


@dataclass
class HttpReceiver:
    """An aiohttp server recording JSON POSTs (webhook or Alertmanager). Start, stop and start it again on
    the same port to play a receiver that is down."""

    port: int = field(default_factory=free_port)
    delay_s: float = 0.0
    status: int = 200
    requests: list[Request] = field(default_factory=list)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.requests.append(Request(request.path, body, dict(request.headers)))
        return web.json_response({"status": "success"}, status=self.status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, sink: list[bytes]) -> None:
        self.sink = sink

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.sink.append(data)


@dataclass
class SyslogUdpReceiver:
    port: int = field(default_factory=lambda: free_port(socket.SOCK_DGRAM))
    messages: list[bytes] = field(default_factory=list)
    _transport: asyncio.DatagramTransport | None = None

    @property
    def url(self) -> str:
        return f"syslog+udp://127.0.0.1:{self.port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(self.messages), local_addr=("127.0.0.1", self.port)
        )

    async def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


@dataclass
class SyslogTcpReceiver:
    """Reads RFC 6587 octet-counted frames; `bad_frames` counts anything else."""

    port: int = field(default_factory=free_port)
    messages: list[bytes] = field(default_factory=list)
    bad_frames: int = 0
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"syslog+tcp://127.0.0.1:{self.port}"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    length = await reader.readuntil(b" ")
                except asyncio.IncompleteReadError as exc:
                    if exc.partial:
                        self.bad_frames += 1
                    break
                if not length[:-1].isdigit():
                    self.bad_frames += 1
                    break
                self.messages.append(await reader.readexactly(int(length[:-1])))
        finally:
            writer.close()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port, reuse_address=True)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


async def wait_for(predicate: Any, timeout_s: float = 5.0) -> None:
    """Poll `predicate()` until true; fail the test after `timeout_s`."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.02)


# -- RFC 5424 -------------------------------------------------------------

_HEADER = re.compile(
    rb"^<(?P<pri>\d{1,3})>(?P<version>[1-9]\d{0,2}) (?P<timestamp>\S+) (?P<hostname>\S{1,255}) "
    rb"(?P<app>\S{1,48}) (?P<procid>\S{1,128}) (?P<msgid>\S{1,32}) "
)
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$")
_SD_ID = re.compile(r'[^= \]"\x00-\x20\x7f-\xff]{1,32}')


@dataclass
class SyslogMessage:
    pri: int
    version: int
    timestamp: datetime
    hostname: str
    app_name: str
    procid: str
    msgid: str
    sd: dict[str, dict[str, str]]
    msg: str
    bom: bool

    @property
    def facility(self) -> int:
        return self.pri // 8

    @property
    def severity(self) -> int:
        return self.pri % 8


def parse_rfc5424(data: bytes) -> SyslogMessage:
    """Parse one RFC 5424 message strictly; AssertionError on anything the RFC does not allow."""
    m = _HEADER.match(data)
    assert m, f"not an RFC 5424 header: {data[:120]!r}"
    pri = int(m["pri"])
    assert 0 <= pri <= 191, pri
    assert m["version"] == b"1"
    for name in ("hostname", "app", "procid", "msgid"):
        assert all(0x21 <= b <= 0x7E for b in m[name]), (name, m[name])
    ts = m["timestamp"].decode("ascii")
    assert _TIMESTAMP.match(ts), ts
    timestamp = datetime.fromisoformat(ts)
    assert timestamp.tzinfo is not None
    rest = data[m.end() :].decode("utf-8")
    sd: dict[str, dict[str, str]] = {}
    i = 0
    if rest.startswith("-"):
        i = 1
    else:
        assert rest.startswith("["), f"no structured data: {rest[:60]!r}"
        while i < len(rest) and rest[i] == "[":
            i += 1
            sid = _SD_ID.match(rest, i)
            assert sid, rest[i : i + 40]
            params: dict[str, str] = {}
            i = sid.end()
            while rest[i] == " ":
                pname = _SD_ID.match(rest, i + 1)
                assert pname, rest[i : i + 40]
                i = pname.end()
                assert rest[i : i + 2] == '="', rest[i : i + 40]
                i += 2
                value: list[str] = []
                while rest[i] != '"':
                    if rest[i] == "\\" and rest[i + 1] in '"\\]':
                        value.append(rest[i + 1])
                        i += 2
                    else:
                        assert rest[i] != "]", "unescaped ] in a param value"
                        value.append(rest[i])
                        i += 1
                i += 1
                params[pname.group()] = "".join(value)
            assert rest[i] == "]", rest[i : i + 40]
            i += 1
            assert sid.group() not in sd, "duplicate SD-ID"
            sd[sid.group()] = params
    msg = ""
    bom = False
    if i < len(rest):
        assert rest[i] == " ", "MSG must follow a space"
        msg = rest[i + 1 :]
        if msg.startswith("\ufeff"):
            bom, msg = True, msg[1:]
    return SyslogMessage(
        pri,
        1,
        timestamp,
        m["hostname"].decode(),
        m["app"].decode(),
        m["procid"].decode(),
        m["msgid"].decode(),
        sd,
        msg,
        bom,
    )
