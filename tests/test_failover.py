"""The failover verdict (SPEC §10, issue 13): `status --json`, `check --failover` and GET /v1/failover,
with two real agents; and the verdict functions of hasync.failover."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from functools import partial
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from hasync import config
from hasync.agent.app import Agent
from hasync.failover import DETAIL_KEYS, Failover, StandbyState, active_verdict, from_check, relayed, standby_verdict
from hasync.node import Node
from pairlib import PairEnv, wait_for

INTERVAL = 2.0
WAIT_S = 30.0
FIXED_BODIES = {200: b"safe\n", 503: b"not safe\n"}


def endpoint(port: int) -> tuple[int, bytes, dict[str, str]]:
    """GET /v1/failover without a token: status, body, headers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/failover", timeout=10) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def answers(port: int, code: int) -> bool:
    return endpoint(port)[0] == code


def status(env: PairEnv, node: str) -> dict[str, Any]:
    r = env.hasync("status", "--json", node=node)
    assert r.returncode == 0, r.stderr
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


def failover(env: PairEnv, node: str) -> tuple[int, dict[str, Any]]:
    r = env.hasync("check", "--failover", "--json", node=node)
    assert r.returncode in (0, 1), r.stderr
    doc: dict[str, Any] = json.loads(r.stdout)
    assert doc["failover_safe"] is (r.returncode == 0)
    return r.returncode, doc


def test_in_sync_is_safe_everywhere(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair(interval_s=INTERVAL)
    (env.src / "conf" / "a.yaml").write_text("a")
    env.a.start()
    env.b.start()
    env.wait_standby_in_sync()
    for node, port in (("b", env.b.port), ("a", env.a.port)):
        wait_for(partial(answers, port, 200), WAIT_S, what=f"{node}: GET /v1/failover 200")
        code, body, _ = endpoint(port)
        assert (code, body) == (200, FIXED_BODIES[200])
        doc = status(env, node)
        assert doc["failover_safe"] is True and doc["failover_reason"] is None
        assert set(doc["failover_detail"]) == set(DETAIL_KEYS)
        assert doc["failover_detail"]["in_sync"] is True and doc["failover_detail"]["pending_files"] == 0
        rc, fo = failover(env, node)
        assert rc == 0 and fo["node"] == f"node-{node}" and fo["failover_reason"] is None
        r = env.hasync("check", "--failover", node=node)
        assert r.returncode == 0 and r.stdout.startswith("failover safe") and len(r.stdout.splitlines()) == 1
    # Usage errors, whatever the node's state: exit 2; with --nagios a plugin line, UNKNOWN (SPEC §3).
    r = env.hasync("check", "--failover", "--deep")
    assert r.returncode == 2 and "--failover does not go with" in r.stderr and r.stdout == ""
    r = env.hasync("check", "--failover", "--nagios")
    assert r.returncode == 3 and r.stdout.startswith("HASYNC UNKNOWN - ") and "--failover" in r.stdout


def test_junk_file_on_active_is_not_safe_and_the_endpoint_tells_nothing(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair(unprivileged=True, interval_s=INTERVAL)
    (env.src / "conf" / "good.yaml").write_text("ok")
    junk = env.src / "conf" / "sedXyZ12"
    junk.touch()
    junk.chmod(0)
    env.chown_all()
    env.a.start()
    env.b.start()
    wait_for(lambda: (env.dst / "conf" / "good.yaml").exists(), WAIT_S, what="good.yaml synced")
    wait_for(lambda: status(env, "b")["failover_detail"]["apply_errors"], WAIT_S, what="standby reports the error")
    for node, port in (("b", env.b.port), ("a", env.a.port)):
        doc = status(env, node)
        assert doc["failover_safe"] is False
        assert "sedXyZ12" in doc["failover_reason"] and "not applied" in doc["failover_reason"]
        assert doc["failover_detail"]["apply_errors"] == 1
        r = env.hasync("check", "--failover", node=node)
        assert r.returncode == 1
        assert r.stdout.startswith("failover NOT safe: ") and "sedXyZ12" in r.stdout
        assert len(r.stdout.splitlines()) == 1
        rc, fo = failover(env, node)
        assert rc == 1 and "sedXyZ12" in fo["failover_reason"]
        code, body, headers = endpoint(port)
        assert (code, body) == (503, FIXED_BODIES[503])  # no reason, no path, no figure
        assert "sedXyZ12" not in json.dumps(headers)
    assert status(env, "a")["failover_detail"]["unreadable_on_active"] == 1
    # The endpoint is unauthenticated; every other route still wants the token.
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{env.b.port}/v1/status", timeout=10)
        raise AssertionError("/v1/status answered without a token")
    except urllib.error.HTTPError as exc:
        assert exc.code == 401
    junk.unlink()
    for node, port in (("b", env.b.port), ("a", env.a.port)):
        wait_for(partial(answers, port, 200), WAIT_S, what=f"{node}: safe again after the fix")
        assert failover(env, node)[0] == 0


def test_active_agent_stopped_is_not_safe(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair(interval_s=INTERVAL)
    (env.src / "conf" / "a.yaml").write_text("a")
    env.a.start()
    env.b.start()
    env.wait_standby_in_sync()
    wait_for(lambda: endpoint(env.b.port)[0] == 200, WAIT_S, what="safe while both run")
    env.a.stop()
    wait_for(lambda: endpoint(env.b.port)[0] == 503, WAIT_S, what="not safe once the active is gone")
    assert endpoint(env.b.port)[1] == FIXED_BODIES[503]
    rc, doc = failover(env, "b")
    assert rc == 1 and "active is unreachable" in doc["failover_reason"]
    assert doc["failover_detail"]["peer_reachable"] is False
    # The active's node without its agent decides itself: it asks the standby, whose verdict is "not safe".
    rc, doc = failover(env, "a")
    assert rc == 1 and doc["node"] == "node-a" and doc["failover_safe"] is False


def test_no_agent_on_the_standby_decides_from_a_check_now(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair(interval_s=INTERVAL)
    (env.src / "conf" / "a.yaml").write_text("a")
    env.a.start()
    env.b.start()
    env.wait_standby_in_sync()
    env.b.stop()
    rc, doc = failover(env, "b")
    assert rc == 0 and doc["role"] == "standby" and doc["failover_detail"]["in_sync"] is True
    (env.src / "conf" / "later.yaml").write_text("written while the standby's agent is down")
    wait_for(lambda: failover(env, "b")[0] == 1, WAIT_S, what="the active's new file seen by a check")
    rc, doc = failover(env, "b")
    assert "out of sync" in doc["failover_reason"] and doc["failover_detail"]["in_sync"] is False


def route(cfg_path: Any, verdict: Any) -> tuple[int, bytes, dict[str, str]]:
    """GET /v1/failover, no token, of an in-process agent whose Node answers `verdict()`."""
    node = Node(config.load(cfg_path))

    async def failover() -> Failover:
        result: Failover = verdict()
        return result

    node.failover = failover  # type: ignore[method-assign]

    async def run() -> tuple[int, bytes, dict[str, str]]:
        async with TestClient(TestServer(Agent(node).app())) as client:
            resp = await client.get("/v1/failover")
            return resp.status, await resp.read(), dict(resp.headers)

    return asyncio.run(run())


def test_the_route_says_one_fixed_word_whatever_happens(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair()
    secret = "conf/secret-name.key"
    assert route(env.pair.config_b, lambda: Failover(True, None))[:2] == (200, b"safe\n")
    status_, body, headers = route(env.pair.config_b, lambda: Failover(False, secret, {"pending_files": 7}))
    assert (status_, body) == (503, b"not safe\n") and secret not in json.dumps(headers)

    def broken() -> Failover:
        raise RuntimeError(secret)

    status_, body, headers = route(env.pair.config_a, broken)
    assert (status_, body) == (503, b"not safe\n") and secret not in json.dumps(headers)


# -- the verdict functions ------------------------------------------------------------


def state(**kw: Any) -> StandbyState:
    base: dict[str, Any] = dict(
        in_sync=True,
        pending_files=0,
        pending_bytes=0,
        apply_errors=0,
        first_error=None,
        peer_error=None,
        heard_s=1.0,
        max_silence_s=40.0,
    )
    return StandbyState(**{**base, **kw})


def test_standby_verdict_safe_only_when_nothing_would_be_lost() -> None:
    ok = standby_verdict(state())
    assert ok.safe and ok.reason is None and ok.detail["peer_reachable"] is True
    cases = {
        "pending": (state(pending_files=3, pending_bytes=2048), "3 change(s) pending (2048 bytes"),
        "errors": (state(in_sync=False, apply_errors=2, first_error="conf/sedX: junk_file"), "conf/sedX"),
        "differs": (state(in_sync=False, oldest_missing_s=12.4), "oldest missing change is 12 s old"),
        "never": (state(in_sync=None), "has not synced since it started"),
        "unreachable": (state(in_sync=False, peer_error="peer_agent_down: refused"), "cannot know what it lacks"),
        "silent": (state(heard_s=41.0), "not heard from the active for 41 s"),
        "unheard": (state(heard_s=None), "since it started"),
    }
    for name, (s, text) in cases.items():
        v = standby_verdict(s)
        assert not v.safe and v.reason is not None and text in v.reason, name
        assert set(v.detail) == set(DETAIL_KEYS)
    assert standby_verdict(state(heard_s=41.0)).detail["peer_reachable"] is False
    # Every reason is given, on one line.
    both = standby_verdict(state(in_sync=False, apply_errors=1, pending_files=1, peer_error="x"))
    assert both.reason is not None and both.reason.count("; ") == 2 and "\n" not in both.reason


def test_active_relays_the_standby_and_adds_its_own() -> None:
    theirs = standby_verdict(state(pending_files=1, pending_bytes=5)).to_json()
    v = active_verdict(theirs, None, 0, None)
    assert not v.safe and v.reason == theirs["failover_reason"] and v.detail["pending_files"] == 1
    assert v.detail["unreadable_on_active"] == 0
    safe = active_verdict(standby_verdict(state()).to_json(), None, 0, None)
    assert safe.safe and safe.reason is None
    own = active_verdict(standby_verdict(state()).to_json(), None, 2, "conf/x")
    assert not own.safe and own.reason == "2 file(s) cannot be read on the active (first: conf/x)"
    gone = active_verdict(None, "peer_unreachable: timed out", 0, None)
    assert not gone.safe and gone.reason and "standby is unreachable" in gone.reason
    assert gone.detail["peer_reachable"] is False
    old = active_verdict({"in_sync": True}, None, 0, None)  # a standby of a version without the verdict
    assert not old.safe and old.reason and "no failover verdict" in old.reason
    # A relayed verdict is read strictly: "not safe" with no text still is not safe; odd keys are dropped.
    bare = relayed({"failover_safe": False, "failover_detail": {"evil": 1, "in_sync": False, "pending_files": "x"}})
    assert bare is not None and not bare.safe and bare.reason and "evil" not in bare.detail
    assert bare.detail["in_sync"] is False and bare.detail["pending_files"] is None
    assert relayed({"failover_safe": "yes"}) is None


def test_from_check() -> None:
    assert from_check(True, True, None, None, 0.0).safe
    v = from_check(False, True, "unknown", "conf", 3.0)
    assert not v.safe and v.reason == "a check now finds the pair out of sync: unknown (conf)"
    assert v.detail["oldest_missing_s"] == 3.0
