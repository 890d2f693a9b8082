"""The agent over a Node (hasync.agent.app), in process: the error map and the token middleware."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from hasync import config
from hasync.agent.app import Agent
from hasync.config import Config, ensure_dirs
from hasync.demo import write_pair
from hasync.errors import (
    BadRequest,
    HasyncError,
    NotifyError,
    PathRefused,
    PeerUnreachable,
    Starting,
    StoreError,
    TooLarge,
    WrongRole,
)
from hasync.node import Node
from pairlib import raw_request

RAISE = "/v1/test/raise"  # a route added for these tests: raises what the test puts in `Raiser.exc`
OK = "/v1/test/ok"


def load(tmp_path: Path, extra: str = "") -> Config:
    cfg = config.load(write_pair(tmp_path, extra=extra).config_a)
    ensure_dirs(cfg)
    return cfg


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return load(tmp_path)


class Raiser:
    def __init__(self) -> None:
        self.exc: BaseException | None = None
        self.calls = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        if self.exc is not None:
            raise self.exc
        return web.json_response({"ok": True})


@asynccontextmanager
async def serve(agent: Agent, raiser: Raiser | None = None) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = agent.app()
    if raiser is not None:
        app.router.add_get(RAISE, raiser.handle)
        app.router.add_get(OK, raiser.handle)
    async with TestClient(TestServer(app)) as client:
        yield client


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


def bearer(cfg: Config) -> dict[str, str]:
    return {"Authorization": f"Bearer {cfg.token}"}


def rejected(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("rejected request")]


# -- the error map ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (BadRequest("bad body"), 400, "bad_request"),
        (PathRefused("../x: leaves the root"), 400, "path_refused"),
        (TooLarge("body over 65536 bytes"), 413, "too_large"),
        (WrongRole("node-a is the active node"), 409, "wrong_role"),
        (Starting("first scan running"), 503, "starting"),
        (StoreError("store down"), 503, "store_error"),
        (NotifyError("receiver down"), 502, "notify_error"),
        (PeerUnreachable("node-b does not answer"), 502, "peer_unreachable"),
        (HasyncError("a fault of ours, named"), 500, "error"),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_a_hasync_error_answers_its_own_status_and_code(
    cfg: Config, caplog: pytest.LogCaptureFixture, exc: HasyncError, status: int, code: str
) -> None:
    raiser = Raiser()
    raiser.exc = exc

    async def scenario() -> None:
        async with serve(Agent(Node(cfg)), raiser) as client:
            resp = await client.get(RAISE, headers=bearer(cfg))
            assert resp.status == status
            assert await resp.json() == {"error": {"code": code, "message": exc.message}}

    with caplog.at_level(logging.ERROR, logger="hasync"):
        run(scenario())
    assert not [r for r in caplog.records if "request failed" in r.getMessage()], "a refusal is not a bug"


@pytest.mark.parametrize("exc", [KeyError("no such key"), ValueError("bad"), TypeError("x"), RuntimeError("boom")])
def test_any_other_exception_is_a_logged_500_without_traceback(
    cfg: Config, caplog: pytest.LogCaptureFixture, exc: Exception
) -> None:
    """Our own ValueError or KeyError is a bug of ours, never blamed on the request (400)."""
    raiser = Raiser()
    raiser.exc = exc

    async def scenario() -> None:
        async with serve(Agent(Node(cfg)), raiser) as client:
            resp = await client.get(RAISE, headers=bearer(cfg))
            assert resp.status == 500
            body = await resp.text()
            doc = await resp.json()
            message = f"internal error ({type(exc).__name__}); see the HA log"
            assert doc == {"error": {"code": "error", "message": message}}
            assert "Traceback" not in body and "test_app.py" not in body

    with caplog.at_level(logging.ERROR, logger="hasync"):
        run(scenario())
    failed = [r for r in caplog.records if r.getMessage().startswith("request failed")]
    assert len(failed) == 1 and failed[0].exc_info is not None and failed[0].exc_info[1] is exc
    assert "method=GET" in failed[0].getMessage() and RAISE in failed[0].getMessage()


def test_a_bug_of_ours_is_500_and_logged(
    cfg: Config, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same through a real route: a KeyError inside the Node is a 500, not the client's 400."""
    node = Node(cfg)
    nothing: dict[str, bool] = {}

    async def broken(*args: object) -> bool:
        return nothing["no such key"]  # a KeyError of our own, not the client's

    monkeypatch.setattr(node, "keep_diagnosis", broken)

    async def run() -> tuple[int, dict[str, Any]]:
        async with TestClient(TestServer(Agent(node).app())) as client:
            resp = await client.post(
                "/v1/alarms/diagnosis",
                json={"fingerprint": "f", "raised_at": "r", "diagnosis": {}},
                headers={"Authorization": f"Bearer {cfg.token}"},
            )
            return resp.status, await resp.json()

    with caplog.at_level(logging.ERROR, logger="hasync"):
        status, doc = asyncio.run(run())
    assert status == 500 and doc["error"]["code"] == "error"
    assert any("request failed" in r.getMessage() and r.exc_info for r in caplog.records)


def test_http_exceptions_pass_through_the_error_map(cfg: Config, caplog: pytest.LogCaptureFixture) -> None:
    raiser = Raiser()
    raiser.exc = web.HTTPConflict(text="aiohttp's own answer")

    async def scenario() -> None:
        async with serve(Agent(Node(cfg)), raiser) as client:
            resp = await client.get(RAISE, headers=bearer(cfg))
            assert (resp.status, await resp.text()) == (409, "aiohttp's own answer")
            resp = await client.get("/v1/no-such-route", headers=bearer(cfg))
            assert resp.status == 404

    with caplog.at_level(logging.ERROR, logger="hasync"):
        run(scenario())
    assert not [r for r in caplog.records if "request failed" in r.getMessage()]


# -- the token -------------------------------------------------------------------------------------------------


def test_healthz_needs_no_token_and_every_other_route_does(cfg: Config, caplog: pytest.LogCaptureFixture) -> None:
    raiser = Raiser()

    async def scenario() -> None:
        async with serve(Agent(Node(cfg)), raiser) as client:
            resp = await client.get("/healthz")
            assert (resp.status, await resp.text()) == (200, "ok\n")
            for path in ("/v1/info", "/v1/status", "/v1/changes?since=0", OK):
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {cfg.token}x"}):
                    resp = await client.get(path, headers=headers)
                    assert resp.status == 401, (path, headers)
                    assert await resp.json() == {
                        "error": {"code": "auth_failed", "message": "missing or wrong bearer token"}
                    }
            assert raiser.calls == 0, "a rejected request never reaches the handler"
            resp = await client.get(OK, headers=bearer(cfg))
            assert (resp.status, await resp.json()) == (200, {"ok": True})
            assert raiser.calls == 1

    with caplog.at_level(logging.WARNING, logger="hasync"):
        run(scenario())
    assert rejected(caplog) and cfg.token not in caplog.text


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        ("Bearer {token}", True),
        ("bearer {token}", True),  # the scheme is case-blind (RFC 7235)
        ("Bearer  {token} ", True),
        ("Basic {token}", False),
        ("{token}", False),
        ("Bearer", False),
        ("Bearer {token}{token}", False),
        ("Bearer {short}", False),
    ],
)
def test_the_token_is_a_bearer_token_compared_whole(cfg: Config, header: str, accepted: bool) -> None:
    raiser = Raiser()
    value = header.format(token=cfg.token, short=cfg.token[:-1])

    async def scenario() -> None:
        async with serve(Agent(Node(cfg)), raiser) as client:
            resp = await client.get(OK, headers={"Authorization": value})
            assert resp.status == (200 if accepted else 401)

    run(scenario())


def test_a_non_utf8_token_is_a_wrong_token(cfg: Config, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with serve(Agent(Node(cfg))) as client:
            port = client.server.port
            assert port is not None
            head = b"GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\xc3(\r\n"
            head += b"Connection: close\r\n\r\n"
            answer = await asyncio.to_thread(raw_request, port, head)
            assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
            assert b"auth_failed" in answer

    with caplog.at_level(logging.WARNING, logger="hasync"):
        run(scenario())
    lines = rejected(caplog)
    assert len(lines) == 1 and 'reason="wrong token"' in lines[0]


def test_rejected_requests_are_logged_once_per_client_and_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The first rejected request of each (client, reason) in full; the rest as one count once the interval ends."""
    cfg = load(tmp_path, extra="\n[limits]\nlog_rate_s = 1\n")

    async def until(pred: Callable[[], bool], what: str) -> None:
        deadline = asyncio.get_running_loop().time() + 10
        while not pred():
            assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.02)

    def counted() -> list[str]:
        return [ln for ln in rejected(caplog) if "more=" in ln]

    async def scenario() -> None:
        async with serve(Agent(Node(cfg))) as client:
            for _ in range(5):
                assert (await client.get("/v1/status", headers={"Authorization": "Bearer wrong"})).status == 401
            for _ in range(3):
                assert (await client.get("/v1/status/" + "A" * 4000)).status == 401
            first = rejected(caplog)
            assert len(first) == 2, first
            assert 'reason="wrong token"' in first[0] and "peer=127.0.0.1" in first[0]
            assert 'reason="no token"' in first[1] and len(first[1]) < 400, "a logged path is clipped"
            await until(lambda: len(counted()) == 2, "the held-back requests counted")

    with caplog.at_level(logging.WARNING, logger="hasync"):
        run(scenario())
    more = sorted(counted())
    assert 'reason="no token" more=2' in more[0] and 'reason="wrong token" more=4' in more[1], more
    assert len(rejected(caplog)) == 4
