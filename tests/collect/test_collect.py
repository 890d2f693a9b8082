"""`hasync collect`: bundles from two real agents, exact window cuts, the peer's clock corrected, no secret inside."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import subprocess
import tarfile
import tomllib
import urllib.error
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from hasync.alarms.backends import open_store
from hasync.alarms.model import Identity
from hasync.clock import OFFSET_ENV as CLOCK_OFFSET_ENV
from hasync.clock import iso
from hasync.collect import parse_duration, parse_size, parse_time, stream_peer_log
from hasync.errors import Cause, UsageError
from hasync.logcut import LogRecord, parse_lines
from hasync.peer.client import AgentClient
from pairlib import PairEnv
from test_logcut import PER_FILE, TRACEBACK, Entry, base_time, fmt, in_window, make_entries, write_log_set

PEER_SKEW_S = 90


def extract(bundle: Path) -> dict[str, bytes]:
    with tarfile.open(bundle) as t:
        out = {}
        for m in t.getmembers():
            assert m.isfile(), m.name
            f = t.extractfile(m)
            assert f is not None
            out[m.name] = f.read()
    return out


def stamp(dt: datetime) -> str | None:
    """A time as the manifest writes it: milliseconds, this host's UTC offset."""
    return iso(dt, "milliseconds")


def log_body(data: bytes) -> str:
    """A cut log without its comment lines (header, size-guard note)."""
    return "".join(ln for ln in data.decode().splitlines(keepends=True) if not ln.startswith("#"))


def run_collect(env: PairEnv, *args: str, node: str = "b") -> subprocess.CompletedProcess[str]:
    return env.hasync("collect", *args, node=node)


def manifest_consistent(files: dict[str, bytes]) -> dict[str, Any]:
    m: dict[str, Any] = json.loads(files["manifest.json"])
    assert sorted(f["path"] for f in m["files"]) == sorted(n for n in files if n != "manifest.json")
    for f in m["files"]:
        data = files[f["path"]]
        assert f["size"] == len(data) and f["sha256"] == hashlib.sha256(data).hexdigest()
    return m


def nodes_offset(m: dict[str, Any]) -> float:
    return float(next(n["clock_offset_s"] for n in m["nodes"] if not n["local"]))


async def peer_errors(env: PairEnv, start: datetime, end: datetime) -> list[LogRecord]:
    chunks: list[bytes] = []
    async with AgentClient(f"http://127.0.0.1:{env.pair.port_a}", env.a.token, 5.0, "node-a") as peer:
        stats = await stream_peer_log(peer, start, end, chunks.append, levels=["error"])
    assert stats["files_read"] and not stats["errors"]
    return list(parse_lines(b"".join(chunks).decode().splitlines(keepends=True)))


def logs_for(env: PairEnv, node: str) -> Path:
    return env.pair.base / "logs" / f"node-{node}"


@pytest.fixture
def timeline() -> tuple[datetime, list[Entry], list[Entry]]:
    """The same 160 instants in both nodes' logs; node-a's clock runs PEER_SKEW_S ahead, so its stamps do too."""
    t0 = base_time()
    tb = {58: TRACEBACK, 99: TRACEBACK, 110: TRACEBACK}
    b = make_entries(t0, 4 * PER_FILE, tracebacks=tb)
    a = make_entries(t0 + timedelta(seconds=PEER_SKEW_S), 4 * PER_FILE, tracebacks=tb)
    return t0, a, b


def start_pair(env: PairEnv, monkeypatch: pytest.MonkeyPatch, skew_a: float = PEER_SKEW_S) -> None:
    monkeypatch.setenv(CLOCK_OFFSET_ENV, str(skew_a))
    env.a.start()
    monkeypatch.delenv(CLOCK_OFFSET_ENV)
    env.b.start()


def test_bundle_cuts_both_nodes_exactly_and_corrects_the_peer_clock(make_pair, timeline, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair()
    t0, a_entries, b_entries = timeline
    write_log_set(logs_for(env, "a"), a_entries)
    write_log_set(logs_for(env, "b"), b_entries)
    start_pair(env, monkeypatch)
    # From the middle of the 2nd rotated file to the middle of the 3rd, on node-b's clock.
    at = t0 + timedelta(seconds=800.5)
    start, end = at - timedelta(seconds=200), at + timedelta(seconds=200)
    out = env.pair.base / "out"
    out.mkdir()
    r = run_collect(env, "--at", at.isoformat(), "--before", "200s", "--after", "3m20s", "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    doc = json.loads(r.stdout)
    bundle = Path(doc["bundle"])
    assert bundle == out / f"hasync-bundle-node-b-{at:%Y%m%dT%H%M%S}.tar.gz" and bundle.exists()
    assert sorted(p.name for p in out.iterdir()) == [bundle.name]  # no temp file left
    files = extract(bundle)
    assert sorted(files) == sorted(
        [f"node-{n}/{f}" for n in "ab" for f in ("ha.log", "alarms.json", "status.json", "config.toml")]
        + ["manifest.json"]
    )
    m = manifest_consistent(files)
    assert m == doc["manifest"]

    want_b = in_window(b_entries, start, end)
    assert log_body(files["node-b/ha.log"]) == "".join(e.text for e in want_b)
    # node-a's entries of the same real instants: its window is shifted by the measured offset.
    skew = timedelta(seconds=PEER_SKEW_S)
    want_a = in_window(a_entries, start + skew, end + skew)
    assert log_body(files["node-a/ha.log"]) == "".join(e.text for e in want_a)
    assert [e.text[24:] for e in want_a] == [e.text[24:] for e in want_b]  # the same events, skew aside
    assert want_b[0].ts > b_entries[PER_FILE].ts and want_b[-1].ts < b_entries[3 * PER_FILE - 1].ts
    # Entry 99 starts in the window and carries a traceback: whole; entry 58 starts before it: absent.
    for name in ("node-a/ha.log", "node-b/ha.log"):
        text = files[name].decode()
        assert text.startswith("# hasync HA run log of node-")
        assert "event number 99 " in text and text.count(TRACEBACK) == 1
        assert "event number 58 " not in text

    assert abs(m["clock_offset"]["peer_minus_local_s"] - PEER_SKEW_S) < 0.5
    applied = m["clock_offset"]["applied_to_peer_window_s"]
    assert applied == nodes_offset(m) and abs(applied - m["clock_offset"]["peer_minus_local_s"]) < 0.001
    assert m["window"]["start"] == stamp(start) and m["window"]["end"] == stamp(end) and m["window"]["at"] == stamp(at)
    nodes = {n["name"]: n for n in m["nodes"]}
    assert nodes["node-b"]["local"] and nodes["node-b"]["role"] == "standby" and nodes["node-b"]["clock_offset_s"] == 0
    assert nodes["node-a"]["role"] == "active" and nodes["node-a"]["hostname"] == "node-a"
    assert nodes["node-a"]["reachable"] is True and abs(nodes["node-a"]["clock_offset_s"] - PEER_SKEW_S) < 0.5
    peer_start = datetime.fromisoformat(nodes["node-a"]["window"]["start"])
    assert abs((peer_start - (start + skew)).total_seconds()) < 0.5
    assert nodes["node-b"]["log"]["entries"] == len(want_b) and nodes["node-a"]["log"]["entries"] == len(want_a)
    assert len(nodes["node-b"]["log"]["files_read"]) == 2 and "ha.log" in nodes["node-b"]["log"]["files_skipped"]
    assert m["size_guard"]["dropped_lines"] == 0 and m["hasync_version"]
    # What the diagnosis reuses: the peer's ERROR entries of a window, streamed and parsed back.
    errors = asyncio.run(peer_errors(env, start + skew, end + skew))
    assert [r.text for r in errors] == [e.text for e in want_a if " ERROR [" in e.text[:40]] and errors
    for n in "ab":
        assert json.loads(files[f"node-{n}/status.json"])["node"] == f"node-{n}"
        assert isinstance(json.loads(files[f"node-{n}/alarms.json"]), list)
        cfg = tomllib.loads(files[f"node-{n}/config.toml"].decode())
        assert cfg["node"]["name"] == f"node-{n}" and cfg["security"]["token_file"] == "secrets/pair.token"


def test_no_secret_reaches_the_bundle(make_pair, timeline, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    url_pw = "Ur1-pa55-in-a-url-9931"
    hash_secret = "scrypt$secret-hash-value-7731"
    kv_pw = "hunter2-kv-value-5512"
    extra = f"""
[[alarms.notify]]
kind = "webhook"
url = "http://hookuser:{url_pw}@127.0.0.1:9/hook"

[[console.users]]
name = "admin"
role = "admin"
password_hash = "{hash_secret}"
"""
    env: PairEnv = make_pair(extra=extra)
    token = env.a.token
    secrets = [token, url_pw, hash_secret, kv_pw]
    _, a_entries, b_entries = timeline
    planted = [
        f"connecting url=http://dbuser:{url_pw}@db.example:5432/hasync",
        f"peer sent Authorization: Bearer {token}",
        f"the pair token {token} in plain text",
        f"login password={kv_pw} user=admin",
        f'json body {{"password": "{kv_pw}", "user": "x"}}',
        f"hash {hash_secret} leaked",
    ]
    for node, entries in (("a", a_entries), ("b", b_entries)):
        at = entries[60].ts
        extra_lines = [Entry(at, fmt(at, "ERROR", "leak", msg)) for msg in planted]
        write_log_set(logs_for(env, node), entries[:61] + extra_lines + entries[61:], per_file=PER_FILE + 2)
    store = open_store("sqlite", env.pair.base / "state" / "node-b")
    alarm, _ = store.raise_alarm(
        Identity("demo-cluster", "Flink", "FlinkServer", "node-z"), Cause.SYNC_ERROR, "x", b_entries[60].ts
    )
    store.set_diagnosis(alarm.id, {"steps": [{"evidence": f"fetched http://u:{url_pw}@h/ with token {token}"}]})
    store.close()
    start_pair(env, monkeypatch)
    at = b_entries[60].ts.isoformat()
    r = run_collect(env, "--at", at, "--before", "5m", "--after", "5m", "-o", str(env.pair.base))
    assert r.returncode == 0, r.stderr
    bundle = next(env.pair.base.glob("hasync-bundle-*.tar.gz"))
    raw = gzip.decompress(bundle.read_bytes())  # every byte: tar headers, every member, the manifest
    files = extract(bundle)
    for s in secrets:
        assert s.encode() not in raw, s
        assert s.encode() not in bundle.read_bytes()
    for node in "ab":
        log = files[f"node-{node}/ha.log"].decode()
        assert log.count("[leak]") == len(planted)
        assert "url=http://dbuser:***@db.example:5432/hasync" in log and "Bearer ***" in log
        assert "password=***" in log and "the pair token *** in plain text" in log
        cfg = tomllib.loads(files[f"node-{node}/config.toml"].decode())
        assert cfg["console"]["users"][0]["password_hash"] == "***"
        assert cfg["alarms"]["notify"][0]["url"] == "http://hookuser:***@127.0.0.1:9/hook"
    (alarm_doc,) = json.loads(files["node-b/alarms.json"])
    assert alarm_doc["diagnosis"]["steps"][0]["evidence"] == "fetched http://u:***@h/ with token ***"


def test_peer_unreachable_bundle_of_this_node_with_a_note(make_pair, timeline) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair()
    t0, _, b_entries = timeline
    write_log_set(logs_for(env, "b"), b_entries)
    env.b.start()  # node-a's agent never runs
    at = t0 + timedelta(seconds=800.5)
    r = run_collect(env, "--at", at.isoformat(), "-o", str(env.pair.base / "bundle.tar.gz"))
    assert r.returncode == 0, r.stderr
    (warning,) = r.stderr.splitlines()
    assert warning.startswith("hasync: warning: peer node-a not collected (peer_agent_down)")
    assert "node-a  " in r.stdout and "not collected" in r.stdout
    files = extract(env.pair.base / "bundle.tar.gz")
    mine = [f"node-b/{f}" for f in ("alarms.json", "config.toml", "ha.log", "status.json")]
    assert sorted(files) == ["manifest.json", *mine]
    m = manifest_consistent(files)
    nodes = {n["name"]: n for n in m["nodes"]}
    assert nodes["node-a"]["reachable"] is False and m["clock_offset"] is None
    assert any("node-a not collected" in n and "peer_agent_down" in n for n in m["notes"])
    want = in_window(b_entries, at - timedelta(minutes=10), at + timedelta(minutes=10))
    assert log_body(files["node-b/ha.log"]) == "".join(e.text for e in want)
    # The collect endpoints are behind the token like every other.
    for path in ("info", "config", f"logs?start={quote(at.isoformat())}&end={quote(at.isoformat())}"):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            req = urllib.request.Request(f"http://127.0.0.1:{env.pair.port_b}/v1/collect/{path}", headers=headers)
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(req, timeout=5)
            assert err.value.code == 401


def test_alarm_window_from_either_store_and_json_output(make_pair, timeline, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair()
    t0, a_entries, b_entries = timeline
    write_log_set(logs_for(env, "a"), a_entries)
    write_log_set(logs_for(env, "b"), b_entries)
    raised = {"a": t0 + timedelta(seconds=1000.25), "b": t0 + timedelta(seconds=700.25)}
    fps = {}
    for node in "ab":
        store = open_store("sqlite", env.pair.base / "state" / f"node-{node}")
        alarm, _ = store.raise_alarm(
            Identity("demo-cluster", "Flink", "FlinkServer", f"host-{node}"), Cause.JUNK_FILE, "info", raised[node]
        )
        store.set_diagnosis(alarm.id, {"cause": "junk_file", "steps": []})
        store.close()
        fps[node] = alarm.fingerprint
    start_pair(env, monkeypatch, skew_a=0)
    for node, found_on in (("b", "node-b"), ("a", "node-a")):  # node-a's alarm only through its agent
        out = env.pair.base / f"out-{node}"
        out.mkdir()
        r = run_collect(env, "--alarm", fps[node], "--before", "1m", "--after", "1m", "-o", str(out), "--json")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)  # stdout is one JSON document and nothing else
        assert set(doc) == {"bundle", "manifest"}
        m = doc["manifest"]
        assert m["alarm"]["fingerprint"] == fps[node] and m["alarm"]["found_on"] == found_on
        assert m["window"]["at"] == stamp(raised[node])
        files = extract(Path(doc["bundle"]))
        want = in_window(b_entries, raised[node] - timedelta(minutes=1), raised[node] + timedelta(minutes=1))
        assert log_body(files["node-b/ha.log"]) == "".join(e.text for e in want) and len(want) > 10
        alarms = json.loads(files[f"node-{node}/alarms.json"])
        assert [a["fingerprint"] for a in alarms] == [fps[node]] and alarms[0]["diagnosis"]["cause"] == "junk_file"


def test_size_guard_drops_the_oldest_lines(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair()
    t0 = base_time()
    entries = make_entries(t0, 1200, tracebacks={k: TRACEBACK for k in range(0, 1200, 7)})
    write_log_set(logs_for(env, "b"), entries, per_file=300)
    full = "".join(e.text for e in entries)
    assert len(full) > 100_000
    r = run_collect(
        env, "--at", entries[600].ts.isoformat(), "--before", "10h", "--after", "10h", "--max-bytes", "80KB", "--json"
    )
    assert r.returncode == 0, r.stderr
    assert any("size guard" in line for line in r.stderr.splitlines())
    doc = json.loads(r.stdout)
    files = extract(Path(doc["bundle"]))
    Path(doc["bundle"]).unlink()
    m = manifest_consistent(files)
    assert sum(f["size"] for f in m["files"]) + len(files["manifest.json"]) <= 80_000
    kept = log_body(files["node-b/ha.log"])
    assert kept and full.endswith(kept) and kept[:4].isdigit()  # the newest whole entries
    dropped = full[: len(full) - len(kept)]
    guard = m["size_guard"]
    assert guard["dropped_lines"] == dropped.count("\n") > 0
    assert guard["dropped_entries"] == sum(1 for ln in dropped.splitlines() if ln[:4].isdigit())
    node = next(n for n in m["nodes"] if n["name"] == "node-b")
    assert node["log"]["dropped_lines"] == guard["dropped_lines"] and node["log"]["entries"] == len(entries)
    text = files["node-b/ha.log"].decode()
    assert text.splitlines()[0].startswith("# hasync HA run log of node-b") and "size guard" in text.splitlines()[1]


def test_usage_errors(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair()
    for args in ([], ["--at", "now", "--alarm", "abc"], ["--at", "yesterday"], ["--at", "now", "--before", "10x"]):
        r = run_collect(env, *args)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("hasync: error: ") and len(r.stderr.splitlines()) == 1
    r = run_collect(env, "--at", "now", "-o", str(env.pair.base / "missing" / "b.tar.gz"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = run_collect(env, "--alarm", "0123456789abcdef")  # not here, and the peer cannot be asked
    assert r.returncode == 1 and "0123456789abcdef" in r.stderr


# -- units ------------------------------------------------------------------------------------------------------
def test_parsers() -> None:
    assert parse_duration("10m") == timedelta(minutes=10)
    assert parse_duration("90s") == parse_duration("90") == timedelta(seconds=90)
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_size("200MB") == 200_000_000 and parse_size("1GiB") == 1 << 30 and parse_size("512") == 512
    now = datetime(2026, 11, 25, 10, 0).astimezone()
    assert parse_time("now", now) == now
    assert parse_time("2026-11-25T10:15:00+01:00").utcoffset() is not None
    assert parse_time("2026-11-25T10:15:00") == datetime(2026, 11, 25, 10, 15).astimezone()
    for bad in ("10x", "", "m"):
        with pytest.raises(UsageError):
            parse_duration(bad)
    with pytest.raises(UsageError):
        parse_size("lots")
