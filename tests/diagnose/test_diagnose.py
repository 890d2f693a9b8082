"""`hasync diagnose` with two real agents: one test per cause, the safe fixes, the healthy pair (issue 4)."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hasync.diagnose import runner
from hasync.diagnose.model import Diagnosis, Step
from hasync.errors import Cause
from hasync.peer.frames import FRAME_HEADER
from hasync.peer.models import PathError, PeerStatus
from hasync.peer.protocol import L_DONE, L_ERR
from pairlib import ROOT, PairEnv, wait_for

INTERVAL = 2.0


def diagnose(env: PairEnv, *args: str, node: str = "b") -> tuple[int, dict[str, Any]]:
    r = env.hasync("diagnose", "--json", *args, node=node, timeout=180)
    assert r.stdout, r.stderr
    return r.returncode, json.loads(r.stdout)


def step(doc: dict[str, Any], step_id: str) -> dict[str, Any]:
    return next(s for s in doc["steps"] if s["id"] == step_id)


def active_alarms(env: PairEnv) -> list[dict[str, Any]]:
    return [a for a in json.loads(env.hasync("alarms", "--json", "--all").stdout) if a["cleared_at"] is None]


def test_healthy_pair_every_step_ok(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair(interval_s=INTERVAL)
    (env.src / "conf" / "a.yaml").write_text("a")
    env.a.start()
    env.b.start()
    env.wait_in_sync()
    for node in ("a", "b"):
        code, doc = diagnose(env, node=node)
        assert code == 0, doc
        assert doc["cause"] is None and doc["fixed"] == []
        assert [s["id"] for s in doc["steps"]] == ["network", "storage", "sync_files", "ha_log", "recheck", "collect"]
        assert {s["id"]: s["verdict"] for s in doc["steps"]} == dict.fromkeys(
            ["network", "storage", "sync_files", "ha_log", "recheck", "collect"], "ok"
        ), doc
        assert "ping 127.0.0.1: answered" in step(doc, "network")["evidence"]
        assert "free of" in step(doc, "storage")["evidence"]
        # Each step says how long it took; the network step pings, so it takes some time.
        assert all(isinstance(s["elapsed_s"], float) and 0 <= s["elapsed_s"] < 60 for s in doc["steps"]), doc
        assert step(doc, "network")["elapsed_s"] > 0
    r = env.hasync("diagnose")
    assert r.returncode == 0 and "1. network" in r.stdout and "cause: none found" in r.stdout


def test_active_agent_down_is_peer_agent_down(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair(interval_s=INTERVAL)
    env.a.start()
    env.b.start()
    env.a.stop()
    wait_for(lambda: active_alarms(env), 5 * INTERVAL, what="alarm raised")
    code, doc = diagnose(env)
    assert code == 1 and doc["cause"] == "peer_agent_down"
    net = step(doc, "network")
    assert net["verdict"] == "fault" and "connection refused" in net["evidence"] and "answered" in net["evidence"]
    assert "start it" in net["action"]
    assert step(doc, "collect")["action"].startswith("Run `hasync collect -c ")
    # The agent diagnosed the alarm by itself when it was raised: the alarm carries it. That background run
    # (ping, TCP, logs, collect) has no time promise and competes with the one above for the CPU: wait long.
    alarm = wait_for(
        lambda: next((a for a in json.loads(env.hasync("alarms", "--json").stdout) if a.get("diagnosis")), None),
        60,
        what="stored diagnosis",
    )
    assert alarm["diagnosis"]["cause"] == "peer_agent_down"


def test_wrong_token_is_auth_failed(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair(interval_s=INTERVAL)
    (env.pair.base / "secrets" / "other.token").write_text("another-token\n")
    cfg = env.pair.config_a
    cfg.write_text(cfg.read_text().replace("secrets/pair.token", "secrets/other.token"))
    env.a.token = "another-token"
    env.a.start()
    env.b.start()
    code, doc = diagnose(env)
    assert code == 1 and doc["cause"] == "auth_failed"
    assert "rejected (HTTP 401)" in step(doc, "network")["evidence"]
    assert "another-token" not in json.dumps(doc)


def test_junk_file_found_and_only_it_deleted(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair(unprivileged=True, interval_s=INTERVAL)
    conf = env.src / "conf"
    junk = conf / "sedXyZ12"
    junk.touch()
    junk.chmod(0)
    keep_sed = conf / "sedKeep"  # size 0 but still has permissions: not junk
    keep_sed.touch()
    locked = conf / "locked.swp"  # mode 000 but another name (and excluded from sync): not junk
    locked.touch()
    locked.chmod(0)
    env.chown_all()
    env.a.start()
    env.b.start()
    wait_for(lambda: active_alarms(env), 5 * INTERVAL, what="alarm raised")
    code, doc = diagnose(env)
    assert code == 1 and doc["cause"] == "junk_file"
    ev = step(doc, "sync_files")["evidence"]
    assert f"{conf}/sedXyZ12" in ev and "---------- " in ev and "on node-b: absent" in ev
    assert "sedKeep" not in ev and "locked.swp" not in ev
    assert junk.exists()  # without --fix nothing changes
    code, doc = diagnose(env, "--fix")
    assert doc["fixed"] == [f"node-a: deleted junk file {junk} (size 0, mode 0000)"]
    assert not junk.exists() and keep_sed.exists() and locked.exists()
    assert step(doc, "recheck")["verdict"] == "ok" and doc["cleared"] is True, step(doc, "recheck")
    assert code == 0
    assert not active_alarms(env)
    log = (env.pair.base / "logs" / "node-a" / "ha.log").read_text()  # the node that changed the file
    assert "WARN [diagnose] fix applied" in log and "sedXyZ12" in log


def test_unreadable_file_is_permission_denied_with_exact_commands(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair(unprivileged=True, interval_s=INTERVAL)
    secret = env.src / "conf" / "jaas.conf"
    secret.write_text("first version")
    secret_sed = env.src / "conf" / "sed-not-empty"  # mode 000 but not empty: not junk
    secret_sed.write_text("x")
    env.chown_all()
    env.a.start()
    env.b.start()
    env.wait_in_sync()
    secret.write_text("second version")
    secret.chmod(0)
    secret_sed.chmod(0)
    wait_for(lambda: active_alarms(env), 5 * INTERVAL, what="alarm raised")
    code, doc = diagnose(env, "--fix")
    assert code == 1 and doc["cause"] == "permission_denied"
    assert doc["fixed"] == [] and secret.exists() and secret_sed.exists()
    st = step(doc, "sync_files")
    user = "nobody" if ROOT else __import__("pwd").getpwuid(os.geteuid()).pw_name
    group = "nogroup" if ROOT else __import__("grp").getgrgid(os.getegid()).gr_name
    assert f"on node-a: chmod 0644 {secret} && chown {user}:{group} {secret}" in st["action"]
    assert f"on node-b: -rw-r--r-- {user}:{group}" in st["evidence"]


def test_missing_sync_dir_is_source_missing(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair(interval_s=INTERVAL)
    (env.src / "udf").rmdir()
    env.a.start()
    env.b.start()
    (alarm,) = wait_for(lambda: active_alarms(env), 5 * INTERVAL, what="alarm raised")
    assert alarm["cause"] == "source_missing"
    code, doc = diagnose(env)
    assert code == 1 and doc["cause"] == "source_missing"
    assert f"node-a: sync dir 'udf' does not exist: {env.src / 'udf'}" in step(doc, "sync_files")["evidence"]


@pytest.mark.skipif(not ROOT, reason="mounting a tmpfs needs root (CI runs as root)")
def test_disk_full_fix_prunes_backups_and_alarm_clears(make_pair, base: Path) -> None:  # type: ignore[no-untyped-def]
    small = base / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "hasync-full", str(small)], check=True)
    try:
        extra = "\n[diagnose]\nmin_free_bytes = 65536\n"
        env: PairEnv = make_pair(interval_s=INTERVAL, extra=extra)
        cfg = env.pair.config_b
        text = (
            cfg.read_text()
            .replace('path = "data/node-b/', f'path = "{small}/data/')
            .replace('dir = "backup/node-b"', f'dir = "{small}/backup"')
        )
        cfg.write_text(text)
        for d in ("conf", "udf"):
            (small / "data" / d).mkdir(parents=True)
        sets = [small / "backup" / f"FlinkServer_2026010{i}000000" for i in range(1, 8)]
        for s in sets:
            s.mkdir(parents=True)
            (s / "old.bin").write_bytes(os.urandom(900 << 10))
        (env.src / "udf" / "new.jar").write_bytes(os.urandom(2 << 20))
        env.a.start()
        env.b.start()
        (alarm,) = wait_for(lambda: active_alarms(env), 6 * INTERVAL, what="alarm raised")
        assert alarm["cause"] == "disk_full"
        code, doc = diagnose(env)
        assert code == 1 and doc["cause"] == "disk_full"
        ev = step(doc, "storage")["evidence"]
        assert "backup sets: 7 (max_copies 5)" in ev and "could not write udf/new.jar (2.0 MiB)" in ev
        code, doc = diagnose(env, "--fix")
        removed = [f for f in doc["fixed"] if f.startswith("removed backup set")]
        assert len(removed) >= 2 and all(str(s) in " ".join(removed) for s in sets[:2])
        assert sets[-1].exists(), "the newest set is never pruned"
        assert step(doc, "recheck")["verdict"] == "ok" and doc["cleared"] is True and code == 0
        assert (small / "data" / "udf" / "new.jar").stat().st_size == 2 << 20
        assert not active_alarms(env)
    finally:
        for agent in ("a", "b"):
            try:
                getattr(env, agent).kill9()
            except NameError:
                pass
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_ha_log_reads_rotated_gz_within_the_window_only(make_pair) -> None:  # type: ignore[no-untyped-def]
    import gzip
    from datetime import datetime, timedelta

    env: PairEnv = make_pair(interval_s=INTERVAL)
    env.a.start()
    env.b.start()
    env.wait_in_sync()
    now = datetime.now().astimezone()
    offset = now.strftime("%z")
    logs = env.pair.base / "logs" / "node-b"

    def line(t: datetime, text: str) -> str:
        return f"{t.strftime('%Y-%m-%d %H:%M:%S')},{t.microsecond // 1000:03d} ERROR [standby] {text}\n"

    inside, outside = now - timedelta(minutes=5), now - timedelta(minutes=10, seconds=30)
    rotated = logs / f"ha.log.{(now - timedelta(minutes=4)).strftime('%Y-%m-%d_%H-%M-%S')}.gz"
    with gzip.open(rotated, "wt") as f:
        f.write(f"# hasync HA run log; times are local, UTC offset {offset[:3]}:{offset[3:]}\n")
        f.write(line(outside, "disk trouble just outside the window cause=disk_full"))
        f.write(line(inside, "rename failed inside the window cause=permission_denied path=conf/x"))
        f.write('Traceback (most recent call last):\n  File "x.py", line 1\nOSError: boom\n')
    code, doc = diagnose(env, "--window", "600")
    ha = step(doc, "ha_log")
    assert "rename failed inside the window" in ha["evidence"] and rotated.name in ha["evidence"]
    assert "just outside the window" not in ha["evidence"]
    # The pair is in sync now and no alarm is diagnosed: a past error is shown, not a fault.
    assert ha["verdict"] == "ok" and "resolved" in ha["evidence"]
    assert code == 0 and doc["cause"] is None
    # The same log, diagnosed for an alarm raised then: the entry is the fault and names the cause.
    env.a.stop()
    (alarm,) = wait_for(lambda: active_alarms(env), 5 * INTERVAL, what="alarm raised")
    env.a.start()
    wait_for(lambda: not active_alarms(env), 5 * INTERVAL, what="alarm cleared")
    code, doc = diagnose(env, "--alarm", alarm["fingerprint"], "--window", "900")
    ha = step(doc, "ha_log")
    assert ha["verdict"] == "fault" and "rename failed inside the window" in ha["evidence"]


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


def _log_frames(env: PairEnv, start: str, end: str) -> list[bytes]:
    """The kinds of the frames GET /v1/collect/logs answers for that window."""
    query = urllib.parse.urlencode({"start": start, "end": end})
    req = urllib.request.Request(
        f"http://127.0.0.1:{env.pair.port_b}/v1/collect/logs?{query}",
        headers={"Authorization": f"Bearer {env.b.token}"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        data = r.read()
    kinds, pos = [], 0
    while pos < len(data):
        kind, n = FRAME_HEADER.unpack_from(data, pos)
        kinds.append(kind)
        pos += FRAME_HEADER.size + n
    return kinds


EXTREME_WINDOWS = [
    ("2026-01-01T00:00:00+00:00", "9999-12-31T23:59:59+00:00"),
    ("2026-01-01T00:00:00-23:59", "9999-12-31T23:59:59+23:59"),
    ("0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59"),
]


def test_log_summary_with_extreme_times_is_a_clean_answer(make_pair) -> None:  # type: ignore[no-untyped-def]
    """Issue 9 #12, variant: a window at the ends of the calendar raised OverflowError in logcut
    (end + CLOCK_SLACK): `/v1/diag log_summary` answered a bare 500 with a traceback in the HA log and
    `/v1/collect/logs` an OverflowError error frame. Request times are parsed by one helper
    (logcut.window_time) and clamped; a time without an offset or too long is a 400."""
    env: PairEnv = make_pair()
    env.b.start()
    for start, end in EXTREME_WINDOWS:
        status, text = _diag(env, {"op": "log_summary", "start": start, "end": end})
        assert status == 200, (start, end, status, text)
        assert json.loads(text)["errors"] >= 0
        kinds = _log_frames(env, start, end)
        assert L_ERR not in kinds and kinds[-1] == L_DONE, (start, end, kinds)
    for bad in ("2026-01-01T00:00:00", "x" * 100, 5):
        status, text = _diag(env, {"op": "log_summary", "start": bad, "end": "2026-01-01T00:00:00+00:00"})
        assert status == 400 and "start" in text, (bad, status, text)
    assert "Traceback" not in env.b.output()


def test_a_leftover_out_of_sync_names_sync_error_from_the_standbys_typed_status() -> None:
    """No step found a fault, the standby's brief status (a PeerStatus) says it is not in sync."""
    status = PeerStatus(
        "standby",
        in_sync=False,
        errors=(PathError("conf", "a", Cause.SYNC_ERROR, "boom"), PathError("conf", "b", Cause.JUNK_FILE, "sed")),
    )
    d = Diagnosis(steps=[Step("sync_files", "sync files", "ok")])
    runner._name_leftover_cause(d, SimpleNamespace(standby_status=status))  # type: ignore[arg-type]
    assert (d.cause, d.steps[0].evidence) == (Cause.SYNC_ERROR, "the standby reports: conf/a: boom; conf/b: sed")
    d = Diagnosis(steps=[Step("sync_files", "sync files", "ok")])
    runner._name_leftover_cause(d, SimpleNamespace(standby_status=PeerStatus("standby", in_sync=False)))  # type: ignore[arg-type]
    assert (d.cause, d.steps[0].evidence) == (Cause.UNKNOWN, "the standby is not in sync and reports no error")
    for st in (None, PeerStatus("standby", in_sync=True)):
        d = Diagnosis(steps=[Step("sync_files", "sync files", "ok")])
        runner._name_leftover_cause(d, SimpleNamespace(standby_status=st))  # type: ignore[arg-type]
        assert d.cause is None
