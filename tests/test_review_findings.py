"""Defects found by the review of issues 9 and 10 from outside (real agent processes, real sockets).

Each test fails on the reviewed snapshot; see the review report for the reproduction by hand.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from hasync.protocol import MSGPACK, pack
from pairlib import PairEnv, wait_for
from test_hostile_paths import GOOD_ROW, NumbersActive


class BadFeedActive(NumbersActive):
    """A fake active whose change feed carries entries of the wrong shape (not [dir, path, entry])."""

    BAD_CHANGES: list[Any] = [["conf"], 5, ["conf", b"feed-good.txt", list(GOOD_ROW)]]

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.polls = 0

    async def changes(self, request: web.Request) -> web.Response:
        self.polls += 1
        await asyncio.sleep(0.2)
        doc = {
            "instance": "i",
            "seq": 1 + self.polls,
            "reset": False,
            "changes": self.BAD_CHANGES,
            "roots": {"conf": b"\x01" * 16, "udf": b"\x02" * 16},
            "with_owner": True,
        }
        return web.Response(body=pack(doc), content_type=MSGPACK)


@pytest.fixture
def bad_feed(make_pair) -> Iterator[tuple[PairEnv, BadFeedActive]]:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair()
    fake = BadFeedActive(env.pair.port_a)
    with fake:
        yield env, fake


def test_malformed_change_feed_entries_are_refused_not_a_loop_traceback(
    bad_feed: tuple[PairEnv, BadFeedActive],
) -> None:
    """Issue 9 #8, variant: a change entry of the wrong shape (`["conf"]`, `5`) raised ValueError/TypeError
    outside the per-entry check in Standby._apply_changes: "standby loop error" with a traceback about
    every second, the feed never followed. It must be refused like any other malformed peer data."""
    env, fake = bad_feed
    env.b.start()
    wait_for(lambda: fake.polls >= 4, 30, what="the standby to poll the change feed four times")
    out = env.b.output()
    assert "standby loop error" not in out and "Traceback" not in out, out[-2000:]
    st = json.loads(env.hasync("status", "--json").stdout)
    assert any(e["cause"] == "sync_error" for e in st["errors"]), st["errors"]


def _diag(env: PairEnv, body: dict[str, Any]) -> tuple[int, str]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{env.pair.port_b}/v1/diag",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {env.b.token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.parametrize(
    "start,end",
    [
        ("2026-01-01T00:00:00+00:00", "9999-12-31T23:59:59+00:00"),
        ("2026-01-01T00:00:00-23:59", "9999-12-31T23:59:59+23:59"),
    ],
)
def test_log_summary_with_extreme_times_is_a_clean_answer(make_pair, start: str, end: str) -> None:  # type: ignore[no-untyped-def]
    """Issue 9 #12, variant: `/v1/diag log_summary` with a window at the ends of the calendar raised
    OverflowError in logcut (end + CLOCK_SLACK) and answered a bare 500 with a traceback in the HA log."""
    env: PairEnv = make_pair()
    env.b.start()
    status, text = _diag(env, {"op": "log_summary", "start": start, "end": end})
    assert status in (200, 400), (status, text)
    assert "Traceback" not in env.b.output()


def test_client_dropping_mid_body_leaves_no_traceback_in_the_ha_log(make_pair) -> None:  # type: ignore[no-untyped-def]
    """Issue 9 #5/#6, variant: a client (the token holder: the peer, a CLI killed mid-request) that sends a
    whole head and part of a body, then goes away, made aiohttp log "ERROR [http] Error handling request"
    with a 40-line ConnectionResetError traceback (about 2.2 KB) into the HA log, once per connection and
    without any rate limit; `diagnose` and `collect` count those as errors."""
    env: PairEnv = make_pair()
    env.b.start()
    head = (
        "POST /v1/diag HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {env.b.token}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{"
    ).encode()
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", env.pair.port_b), timeout=5) as s:
            s.sendall(head)
            time.sleep(0.2)  # the handler is reading the body when the client goes away
    wait_for(lambda: _answered_after(env), 10, what="the agent to answer after the five drops")
    out = env.b.output()
    assert "Traceback" not in out and "Error handling request" not in out, out[-2500:]


def _answered_after(env: PairEnv) -> bool:
    """A request sent after the drops is answered: the agent's event loop has handled the drops before it."""
    status, _ = _diag(env, {"op": "roots"})
    return status == 200
