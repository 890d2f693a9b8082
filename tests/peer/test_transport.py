"""peer/transport.py and the client over it: the in-memory transport, the one exception map, and the
client's limits and HTTP error statuses, without sockets (but one test of the aiohttp transport)."""

from __future__ import annotations

import asyncio
import errno
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import aiohttp
import msgpack
import pytest
from aiohttp import web

from hasync.errors import (
    AuthFailed,
    Cause,
    MalformedAnswer,
    PeerAgentDown,
    PeerError,
    PeerStarting,
    PeerUnreachable,
    PeerWrongRole,
    StaleEpoch,
)
from hasync.peer.client import MAX_ERROR_BYTES, AgentClient
from hasync.peer.frames import frame
from hasync.peer.models import Change, ChangeFeed, PeerInfo, PeerStatus
from hasync.peer.transport import (
    MAX_LINE,
    AiohttpTransport,
    MemoryRequest,
    MemoryResponse,
    MemoryTransport,
    map_exception,
    map_exceptions,
)

Handler = Callable[[MemoryRequest], Awaitable[MemoryResponse]]


def client(handler: Handler, **kw: Any) -> tuple[AgentClient, MemoryTransport]:
    t = MemoryTransport(handler)
    return AgentClient("http://peer.example:7", "t0ken", 2.0, "node-a", transport=t, **kw), t


def run(coro: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await coro

    return asyncio.run(main())


def answer(obj: Any, status: int = 200) -> Handler:
    async def handler(req: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(status, msgpack.packb(obj))

    return handler


async def chunks(*parts: bytes, then: BaseException | None = None) -> AsyncIterator[bytes]:
    for p in parts:
        yield p
    if then is not None:
        raise then


def failing(exc: BaseException) -> Handler:
    async def handler(req: MemoryRequest) -> MemoryResponse:
        raise exc

    return handler


def error_of(coro: Awaitable[Any]) -> PeerError:
    with pytest.raises(PeerError) as info:
        run(coro)
    return info.value


# -- the memory transport carries what the client sends and answers ---------------------------------
def test_a_request_carries_token_params_and_msgpack_body() -> None:
    c, t = client(answer({"ok": 1}))
    assert run(c.request("POST", "/v1/tree", body={"dir": "d"}, params={"since": "3"})) == {"ok": 1}
    (req,) = t.requests
    assert (req.method, req.path, dict(req.params)) == ("POST", "/v1/tree", {"since": "3"})
    assert req.headers["Authorization"] == "Bearer t0ken"
    assert req.headers["Content-Type"] == "application/x-msgpack"
    assert msgpack.unpackb(req.body) == {"dir": "d"}
    assert req.timeouts.total == 2.0 and req.timeouts.connect == 2.0


def test_json_calls_send_and_read_json() -> None:
    async def handler(req: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(200, json.dumps({"got": json.loads(req.body)}).encode())

    c, t = client(handler)
    assert run(c.json("POST", "/v1/check", {"deep": True}, timeout=7)) == {"got": {"deep": True}}
    assert t.requests[0].headers["Content-Type"] == "application/json"
    assert t.requests[0].timeouts.total == 7 and t.requests[0].timeouts.connect == 2.0


def test_health_is_the_status_alone() -> None:
    assert run(client(answer(None, 200))[0].health()) is True
    assert run(client(answer(None, 503))[0].health()) is False


def test_a_frame_stream_is_served_in_chunks() -> None:
    body = frame(b"D", b"abc") + frame(b"D", b"x" * 70_000) + frame(b"Z")

    async def handler(req: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(200, chunks(*(body[i : i + 1000] for i in range(0, len(body), 1000))))

    c, t = client(handler)

    async def frames() -> list[tuple[bytes, bytes]]:
        return [f async for f in c.frames("GET", "/v1/x", end=b"Z")]

    assert run(frames()) == [(b"D", b"abc"), (b"D", b"x" * 70_000), (b"Z", b"")]
    assert t.requests[0].timeouts.total is None and t.requests[0].timeouts.read == 6.0  # 3 x timeout_s


def test_a_stalled_body_is_peer_unreachable_after_the_read_timeout() -> None:
    async def stall() -> AsyncIterator[bytes]:
        yield frame(b"D", b"a")
        await asyncio.Event().wait()  # never set: the agent hangs
        yield b""

    async def handler(req: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(200, stall())

    c, _ = client(handler)

    async def frames() -> list[tuple[bytes, bytes]]:
        return [f async for f in c.frames("GET", "/v1/x", end=b"Z", read_timeout_s=0.05)]

    err = error_of(frames())
    assert isinstance(err, PeerUnreachable) and "no answer within 2 s" in err.message


# -- HTTP statuses ----------------------------------------------------------------------------------
def err_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


@pytest.mark.parametrize(
    ("status", "body", "kind", "text"),
    [
        (401, err_body("unauthorized", "no"), AuthFailed, "rejected our token (HTTP 401)"),
        (503, err_body("starting", "scanning"), PeerStarting, "is starting"),
        (503, err_body("busy", "full"), PeerAgentDown, "is busy"),
        (503, err_body("other", "x"), PeerError, "HTTP 503: other: x"),
        (409, err_body("wrong_role", "I am the standby"), PeerWrongRole, "HTTP 409: wrong_role: I am the standby"),
        (409, err_body("stale_epoch", "older"), StaleEpoch, "stale_epoch: older"),
        (500, b"<html>oops</html>", PeerError, "HTTP 500: <html>oops</html>"),
    ],
)
def test_an_error_status_is_its_peer_error(status: int, body: bytes, kind: type[PeerError], text: str) -> None:
    async def handler(req: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(status, body)

    err = error_of(client(handler)[0].request("GET", "/v1/info"))
    assert type(err) is kind and text in err.message and err.message.startswith("node-a agent at http://peer.example:7")


def test_an_error_body_is_read_to_max_error_bytes_only() -> None:
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        while True:
            sent += 4096
            yield b"e" * 4096

    async def handler(req: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(500, endless())

    err = error_of(client(handler)[0].request("GET", "/v1/info"))
    assert "HTTP 500: " + "e" * 200 in err.message and "e" * 201 not in err.message
    assert MAX_ERROR_BYTES <= sent < MAX_ERROR_BYTES + 2 * 4096


# -- limits -------------------------------------------------------------------------------------------
def test_an_announced_answer_past_max_response_bytes_is_refused_unread() -> None:
    async def handler(req: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(200, chunks(), content_length=1001)

    c, _ = client(handler, max_response_bytes=1000)
    err = error_of(c.request("GET", "/v1/info"))
    assert type(err) is PeerError and err.cause is Cause.SYNC_ERROR
    assert "/v1/info of more than 1000 bytes (limits.max_response_bytes)" in err.message


def test_a_streamed_answer_past_max_response_bytes_is_refused_without_reading_the_rest() -> None:
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        while True:
            sent += 100
            yield b"x" * 100

    async def handler(req: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(200, endless())

    err = error_of(client(handler, max_response_bytes=1000)[0].request("GET", "/v1/info"))
    assert "of more than 1000 bytes" in err.message
    assert sent <= 1100


def test_an_answer_of_max_response_bytes_is_taken() -> None:
    payload = msgpack.packb(b"y" * 990)

    async def handler(req: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(200, chunks(payload[:500], payload[500:]))

    assert run(client(handler, max_response_bytes=len(payload))[0].request("GET", "/v1/info")) == b"y" * 990


def test_an_answer_that_is_not_msgpack_is_a_peer_error() -> None:
    async def handler(req: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(200, b"\xc1")

    err = error_of(client(handler)[0].request("GET", "/v1/info"))
    assert "sent /v1/info an answer that is not msgpack" in err.message


# -- the replication answers, decoded once --------------------------------------------------------------
def json_answer(obj: Any) -> Handler:
    async def handler(req: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(200, json.dumps(obj).encode())

    return handler


ROOT = b"r" * 16


def test_the_replication_answers_come_decoded() -> None:
    c, t = client(
        answer(
            {
                "node": "a",
                "role": "active",
                "instance": "i",
                "seq": 7,
                "roots": {"conf": ROOT},
                "with_owner": True,
                "lag_s": 1,
            }
        )
    )
    assert run(c.peer_info(since=3, owner=False)) == PeerInfo(
        "a", "active", instance="i", seq=7, roots={"conf": ROOT}, with_owner=True, lag_s=1.0
    )
    assert dict(t.requests[0].params) == {"since": "3", "owner": "0"}
    c, t = client(answer({"instance": "i", "seq": 9, "reset": False, "changes": [["conf", b"a", None]], "roots": {}}))
    assert run(c.change_feed("i", 7, 2.5)) == ChangeFeed("i", 9, False, (Change("conf", b"a", "a"),), {})
    assert (t.requests[0].path, dict(t.requests[0].params)) == (
        "/v1/changes",
        {"instance": "i", "since": "7", "wait": "2.5"},
    )
    assert t.requests[0].timeouts.total == 4.5  # the long poll's wait and timeout_s
    c, t = client(json_answer({"role": "standby", "in_sync": True, "pending": 0, "errors": []}))
    assert run(c.peer_status()) == PeerStatus("standby", in_sync=True, pending=0)
    assert (t.requests[0].path, dict(t.requests[0].params)) == ("/v1/status", {"brief": "1"})


@pytest.mark.parametrize(
    "call, body, text",
    [
        (lambda c: c.peer_info(), msgpack.packb([1]), "malformed /v1/info answer: [1] is not a map"),
        (lambda c: c.peer_info(), msgpack.packb({"role": "active", "roots": 5}), "malformed /v1/info answer: instance"),
        (
            lambda c: c.change_feed("i", 0, 1.0),
            msgpack.packb({"seq": 1}),
            "malformed /v1/changes answer: change feed lacks",
        ),
        (
            lambda c: c.change_feed("i", 0, 1.0),
            msgpack.packb({"instance": "i", "seq": -1, "reset": False, "changes": [], "roots": {}}),
            "malformed /v1/changes answer: change feed seq -1",
        ),
        (lambda c: c.peer_status(), b'"up"', "malformed /v1/status answer: status 'up' is not a map"),
        (lambda c: c.peer_status(), b'{"errors": [5]}', "malformed /v1/status answer: status error 5 is not a map"),
    ],
)
def test_a_malformed_replication_answer_is_a_sync_error(
    call: Callable[[AgentClient], Awaitable[Any]], body: bytes, text: str
) -> None:
    async def handler(req: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(200, body)

    exc = error_of(call(client(handler)[0]))
    assert type(exc) is MalformedAnswer and exc.cause is Cause.SYNC_ERROR
    assert exc.message.startswith(text) and exc.message.endswith(exc.reason)


def test_the_status_document_is_the_agents_json_unchecked() -> None:
    c, t = client(json_answer({"role": "standby", "anything": [1, 2]}))
    assert run(c.status_document(timeout=9)) == {"role": "standby", "anything": [1, 2]}
    assert dict(t.requests[0].params) == {} and t.requests[0].timeouts.total == 9
    c, t = client(json_answer("up"))
    assert run(c.status_document(brief=True)) == "up"  # shown or stored as it came
    assert dict(t.requests[0].params) == {"brief": "1"}


# -- line streams -------------------------------------------------------------------------------------
def test_progress_lines_skip_keepalives() -> None:
    lines = b'{"event": "alive"}\n\n{"event": "progress", "files": 1}\n{"event": "done"}'

    async def handler(req: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(200, chunks(lines[:7], lines[7:30], lines[30:]))

    c, _ = client(handler)

    async def events() -> list[dict[str, Any]]:
        return [e async for e in c.stream_json("POST", "/v1/sync")]

    assert run(events()) == [{"event": "progress", "files": 1}, {"event": "done"}]


@pytest.mark.parametrize("body", [b'{"event": \n', b"x" * (MAX_LINE + 1) + b"\n"])
def test_a_bad_or_endless_progress_line_is_a_peer_error(body: bytes) -> None:
    async def handler(req: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(200, chunks(body[:1000], body[1000:]))

    c, _ = client(handler)

    async def events() -> list[dict[str, Any]]:
        return [e async for e in c.stream_json("POST", "/v1/sync")]

    assert "a bad progress line" in error_of(events()).message


def test_the_aiohttp_transport_refuses_an_endless_line_as_the_memory_one_does() -> None:
    async def main() -> str:
        async def sync(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse()
            await resp.prepare(request)
            await resp.write(b"y" * (MAX_LINE + 10) + b"\n")
            return resp

        app = web.Application()
        app.router.add_post("/v1/sync", sync)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            async with AgentClient(f"http://127.0.0.1:{port}", "t", 5.0) as c:
                assert isinstance(c.transport, AiohttpTransport)
                with pytest.raises(PeerError) as info:
                    async for _ in c.stream_json("POST", "/v1/sync"):
                        pass
                return info.value.message
        finally:
            await runner.cleanup()

    assert "a bad progress line" in asyncio.run(main())


# -- the one exception map ----------------------------------------------------------------------------
KEY = SimpleNamespace(host="peer.example", port=7, ssl=None)


@pytest.mark.parametrize(
    ("exc", "kind", "text"),
    [
        (
            aiohttp.ClientConnectorError(KEY, ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")),  # type: ignore[arg-type]
            PeerAgentDown,
            "connection refused (host up, agent not running)",
        ),
        (
            aiohttp.ClientConnectorError(KEY, OSError(errno.EHOSTUNREACH, "No route to host")),  # type: ignore[arg-type]
            PeerUnreachable,
            ": No route to host",
        ),
        (TimeoutError(), PeerUnreachable, "no answer within 2 s"),
        (aiohttp.ServerTimeoutError("read"), PeerUnreachable, "no answer within 2 s"),
        (aiohttp.ServerDisconnectedError(), PeerAgentDown, "connection closed by the agent"),
        (aiohttp.ClientPayloadError("cut"), PeerAgentDown, "connection closed by the agent"),
        (asyncio.IncompleteReadError(b"ab", 5), PeerAgentDown, "connection closed by the agent"),
        (
            aiohttp.ClientOSError(errno.ECONNRESET, "Connection reset by peer"),
            PeerAgentDown,
            "connection reset (Connection reset by peer)",
        ),
        (aiohttp.ClientOSError(errno.EPIPE, "Broken pipe"), PeerAgentDown, "connection reset (Broken pipe)"),
        (aiohttp.ClientOSError(errno.EACCES, "Permission denied"), PeerError, "Permission denied"),
        (OSError(errno.ENOMEM, "Cannot allocate memory"), PeerError, "Cannot allocate memory"),
        (aiohttp.ClientConnectionError("gone"), PeerError, ": gone"),
    ],
)
def test_each_transport_failure_is_its_peer_error(exc: BaseException, kind: type[PeerError], text: str) -> None:
    mapped = map_exception(exc, "node-a agent at http://peer.example:7", 2.0)
    assert type(mapped) is kind and text in mapped.message
    assert mapped.message.startswith("node-a agent at http://peer.example:7: ")
    # Through the client, raised by the transport: the same error, chained to the original.
    err = error_of(client(failing(exc))[0].request("GET", "/v1/info"))
    assert type(err) is kind and err.message == mapped.message and err.__cause__ is exc


def test_a_failure_while_the_body_is_read_is_mapped_too() -> None:
    async def handler(req: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(200, chunks(b"\x92", then=ConnectionResetError(errno.ECONNRESET, "reset")))

    err = error_of(client(handler)[0].request("GET", "/v1/info"))
    assert type(err) is PeerError and "reset" in err.message


def test_other_errors_pass_the_map_untouched() -> None:
    for exc in (ValueError("a bug"), KeyError("k"), PeerStarting("starting")):
        with pytest.raises(type(exc)), map_exceptions("x", 1.0):
            raise exc
