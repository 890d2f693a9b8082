"""The stale active (issue 13): the old active is stopped with SIGSTOP, the standby takes over alone
(`switchover --force`), files change on the new active; the old one resumes, is refused by epoch,
becomes standby and pulls. No file ends with older content; its unsynced work is in a backup set, and
its HA log and status say which files."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

from pairlib import PairEnv, snapshot, wait_for
from roles.rolelib import short_timeouts, status

INTERVAL = 2.0


def backed_up(backup_dir: Path) -> dict[str, bytes]:
    """Every file in the backup sets, by its path inside its set."""
    return {
        str(p.relative_to(s)): p.read_bytes()
        for s in backup_dir.iterdir()
        if s.is_dir()
        for p in s.rglob("*")
        if p.is_file()
    }


def test_a_stale_active_yields_by_epoch_pulls_and_sets_its_unsynced_files_aside(
    make_pair: Callable[..., PairEnv],
) -> None:
    env = make_pair(interval_s=INTERVAL)
    short_timeouts(env)
    (env.src / "conf" / "f1.xml").write_text("v1")
    (env.src / "conf" / "same.xml").write_text("same")
    env.a.start()
    env.b.start()
    env.wait_standby_in_sync()
    assert env.a.proc is not None
    env.a.proc.send_signal(signal.SIGSTOP)
    try:
        # The service goes on writing on the old active's disk: work that never reaches the standby.
        (env.src / "conf" / "f1.xml").write_text("a-late")
        (env.src / "conf" / "unsynced.xml").write_text("a-only")
        r = env.hasync("switchover", "--json", node="b")  # the active cannot be asked: refused
        assert r.returncode == 1 and "cannot be asked" in json.loads(r.stdout)["reason"], r.stdout
        r = env.hasync("switchover", "--force", "--json", node="b")
        rep = json.loads(r.stdout)
        assert r.returncode == 0 and rep["ok"] and rep["epoch"] == 1, rep
        assert rep["lost"]["known"] is False  # the old active could not be asked
        # The new active's own changes.
        (env.dst / "conf" / "f1.xml").write_text("b-new")
        (env.dst / "conf" / "b-only.xml").write_text("b")
    finally:
        env.a.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: status(env, "a")["role"] == "standby", 30, what="the old active to become standby")
    env.wait_in_sync(30)
    assert (env.src / "conf" / "f1.xml").read_text() == "b-new"  # never the older content
    assert (env.dst / "conf" / "f1.xml").read_text() == "b-new"
    assert not (env.dst / "conf" / "unsynced.xml").exists()
    assert status(env, "a")["epoch"] == 1 and status(env, "b")["epoch"] == 1
    assert status(env, "b")["role"] == "active"
    # What it had that was not synced is set aside, not lost.
    aside = backed_up(env.pair.base / "backup" / "node-a")
    assert aside.get("conf/f1.xml") == b"a-late" and aside.get("conf/unsynced.xml") == b"a-only", aside
    doc = wait_for(lambda: status(env, "a").get("set_aside"), 30, what="status set_aside")
    assert {(p["path"], p["what"]) for p in doc["listed"]} >= {("f1.xml", "differs"), ("unsynced.xml", "extra")}
    log = (env.pair.base / "logs" / "node-a" / "ha.log").read_text()
    assert "this node is the active no more" in log and "set aside" in log and "unsynced.xml" in log
    assert snapshot(env.src) == snapshot(env.dst)
