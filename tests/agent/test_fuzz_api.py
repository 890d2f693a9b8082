"""Fuzz the agent's HTTP API: hostile methods, paths, queries, headers and bodies against every route
of a real pair of agents. Never a 5xx but the documented ones, never a crash, nothing written outside
the hasync directories, both agents healthy and in sync afterwards."""

from __future__ import annotations

import http.client
import json
import os
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hasync import config
from hasync.agent.app import Agent
from hasync.node import Node
from hasync.peer.protocol import MSGPACK, pack
from pairlib import PairEnv, cleanup_base, make_base, new_pair, snapshot

EXAMPLES = int(os.environ.get("HASYNC_FUZZ_EXAMPLES", "3000"))
# 5xx the protocol documents (docs/protocol.md section 4): anything else is a crash or a bug.
ALLOWED_5XX = {502: {"peer_error", "peer_unreachable", "peer_agent_down"}, 503: {"starting", "busy", "store_error"}}
# Role changes with the token are operations, not attacks: a fuzzed one would move the roles under the
# test (its last step syncs a file). They are fuzzed without the token here; their inputs with it are in
# tests/roles/test_hostile_roles.py and tests/roles/test_fence_wire.py.
ROLE_CHANGES = ("/v1/role", "/v1/switchover", "/v1/handover")
# Written by the agents themselves; the sync dirs may change through /v1/diag fixes and /v1/sync.
OWN_DIRS = ("data", "state", "logs", "backup")
# /v1/diag operations that change files (delete_junk, prune_backups) are fuzzed by the path tests of
# the paths work; here: the read-only ones and malformed calls.
DIAG_OPS = ["storage", "files", "stat", "delete_junk", "prune_backups", "log_summary", "roots", "nosuch", ""]

HOSTILE_PATHS = [b"..", b"../..", b"/etc/passwd", b"a/../../b", b"", b".", b"x\x00y", b"\xff\xfe", b"a" * 5000, b"sub/"]
QUERY_KEYS = ["since", "wait", "instance", "owner", "all", "pair", "brief", "start", "end", "levels", "x"]

texts = st.text(max_size=40) | st.sampled_from(["-1", "0", "1e309", "nan", "inf", "99999999999999999999", "1"])
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | texts
    | st.binary(max_size=20)
    | st.sampled_from(HOSTILE_PATHS)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10) | texts, inner, max_size=5),
    max_leaves=30,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | texts,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(texts, inner, max_size=5),
    max_leaves=30,
)


def path_pairs() -> st.SearchStrategy[Any]:
    names = st.sampled_from(["conf", "udf", "nosuch", "..", ""]) | texts
    paths = st.sampled_from([p.decode("utf-8", "replace") for p in HOSTILE_PATHS]) | texts
    return st.lists(st.lists(names | paths, min_size=0, max_size=3) | json_values, max_size=4)


@st.composite
def body_for(draw: st.DrawFn, path: str) -> tuple[bytes | None, str]:
    """A body aimed at `path`: mostly of the right shape with hostile fields, sometimes anything."""
    kind = draw(st.sampled_from(["shaped", "shaped", "shaped", "json", "msgpack", "raw", "none", "deep"]))
    if kind == "none":
        return None, ""
    if kind == "raw":
        return draw(st.binary(max_size=300)), draw(st.sampled_from(["application/json", MSGPACK, "text/plain"]))
    if kind == "deep":
        n = draw(st.integers(min_value=30, max_value=20000))
        return (b"[" * n + b"]" * n if draw(st.booleans()) else b'{"a":' * n + b"1" + b"}" * n), "application/json"
    if kind == "json":
        return json.dumps(draw(json_values)).encode(), "application/json"
    if kind == "msgpack":
        return pack(draw(values)), MSGPACK
    if path in ("/v1/tree", "/v1/files"):
        dirs = st.lists(st.sampled_from(HOSTILE_PATHS) | st.binary(max_size=20) | values, max_size=5)
        doc: dict[str, Any] = {"dir": draw(st.sampled_from(["conf", "udf", "nosuch", "..", ""]) | values)}
        doc["dirs" if path == "/v1/tree" else "paths"] = draw(dirs | values)
        if path == "/v1/files" and draw(st.booleans()):
            doc["resume"] = draw(st.lists(st.lists(values, max_size=4) | values, max_size=3) | values)
        return pack(doc), MSGPACK
    if path == "/v1/diag":
        doc = {"op": draw(st.sampled_from(DIAG_OPS) | json_values)}
        for key in draw(st.lists(st.sampled_from(["paths", "start", "end", "need_free", "x"]), max_size=3)):
            doc[key] = draw(path_pairs() if key == "paths" else json_values)
        return json.dumps(doc).encode(), "application/json"
    if path == "/v1/diagnose":
        # A well-formed request runs the whole procedure (seconds): mostly malformed ones.
        doc = {"fix": draw(json_values), "alarm": draw(json_values)}
        return json.dumps(doc).encode(), "application/json"
    if path == "/v1/alarms/diagnosis":
        doc = {k: draw(json_values) for k in draw(st.lists(st.sampled_from(["fingerprint", "raised_at", "diagnosis"])))}
        return json.dumps(doc).encode(), "application/json"
    return json.dumps(draw(json_values)).encode(), "application/json"


class Pair:
    def __init__(self) -> None:
        self.base = make_base()
        self.env: PairEnv = new_pair(self.base)
        (self.env.src / "conf" / "a.yaml").write_text("a: 1\n")
        # A tree beside the hasync dirs that nothing may touch.
        outside = self.base / "outside"
        (outside / "deep").mkdir(parents=True)
        (outside / "deep" / "keep.txt").write_text("keep")
        (outside / "sed-junk").write_bytes(b"")
        os.chmod(outside / "sed-junk", 0)
        self.env.a.start()
        self.env.b.start()
        self.env.wait_in_sync()
        self.before = self.outside()
        cfg = config.load(self.env.pair.config_a)
        routes = {(r.method, r.resource.canonical) for r in Agent(Node(cfg)).app().router.routes() if r.resource}
        self.routes = sorted((m, p) for m, p in routes if m != "HEAD")
        self.conns: dict[int, http.client.HTTPConnection] = {}
        self.tried = 0

    def outside(self) -> dict[str, Any]:
        snap = snapshot(self.base)
        return {k: v for k, v in snap.items() if k.split("/")[0] not in OWN_DIRS and not k.endswith(".out")}

    def send(
        self, port: int, method: str, target: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        for attempt in (1, 2):
            conn = self.conns.get(port)
            if conn is None:
                conn = self.conns[port] = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            try:
                conn.request(method, target, body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
                if r.getheader("Connection", "").lower() == "close":
                    conn.close()
                    del self.conns[port]
                return r.status, data
            except (ConnectionError, http.client.HTTPException):
                conn.close()
                del self.conns[port]
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        for c in self.conns.values():
            c.close()
        self.env.stop()
        cleanup_base(self.base)


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    p = Pair()
    yield p
    print(f"\nfuzz: {p.tried} requests tried")
    p.close()


@st.composite
def requests(draw: st.DrawFn, routes: list[tuple[str, str]]) -> tuple[str, str, bytes | None, dict[str, str]]:
    method, path = draw(st.sampled_from(routes))
    if draw(st.integers(0, 9)) == 0:
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]))
    if draw(st.integers(0, 9)) == 0:
        path += draw(st.sampled_from(["/", "/..", "/%2e%2e/%2e%2e/etc/passwd", "x", "//"]))
    query = draw(st.dictionaries(st.sampled_from(QUERY_KEYS), texts, max_size=4))
    target = path + ("?" + urllib.parse.urlencode(query) if query else "")
    body, ctype = draw(body_for(path))
    headers = {"Authorization": draw(st.sampled_from(["good"] * 8 + ["", "Bearer x", "bearer  ", "Basic Zm9v"]))}
    if ctype:
        headers["Content-Type"] = ctype
    if draw(st.integers(0, 19)) == 0:
        headers[draw(st.sampled_from(["X-Fuzz", "Content-Encoding", "Transfer-Encoding", "Expect"]))] = draw(
            st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30)
        )
    return method, target, body, headers


def test_fuzz_the_api(pair: Pair) -> None:
    ports = [pair.env.pair.port_a, pair.env.pair.port_b]
    token = pair.env.a.token

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.sampled_from(ports), requests(pair.routes))
    def one(port: int, req: tuple[str, str, bytes | None, dict[str, str]]) -> None:
        method, target, body, headers = req
        if headers["Authorization"] == "good" and target.startswith(ROLE_CHANGES):
            headers["Authorization"] = "Bearer not-the-token"
        if headers["Authorization"] == "good":
            headers["Authorization"] = f"Bearer {token}"
        pair.tried += 1
        status, data = pair.send(port, method, target, body, headers)
        if status == 503 and target.startswith("/v1/failover"):
            assert data == b"not safe\n"  # the verdict for HTTP checkers: a fixed body, no details
        elif status >= 500:
            try:
                code = json.loads(data)["error"]["code"]
            except (ValueError, KeyError, TypeError):
                code = None
            assert code in ALLOWED_5XX.get(status, set()), (method, target, body and body[:200], status, data[:300])

    one()
    for agent in (pair.env.a, pair.env.b):
        assert agent.healthy()
    logs = "".join((pair.base / "logs" / n / "ha.log").read_text() for n in ("node-a", "node-b"))
    logs += pair.env.a.output() + pair.env.b.output()  # their stderr
    assert "Traceback" not in logs and "request failed" not in logs, logs[-2000:]
    assert pair.outside() == pair.before, "something was written outside the hasync directories"
    (pair.env.src / "conf" / "after.yaml").write_text("after fuzzing\n")
    pair.env.wait_in_sync()
