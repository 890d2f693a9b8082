"""`hasync switchover` with two real agents (SPEC §10, issue 13): roles swap with a new epoch on both
nodes, the new standby pulls from the new active, no alarm; refused while a junk file blocks the sync,
allowed after the fix; `--force` swaps and reports what the new active lacks."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from pairlib import PairEnv, wait_for
from roles.rolelib import roles, started, status

INTERVAL = 2.0


def switchover(env: PairEnv, *args: str, node: str = "b") -> tuple[int, dict[str, Any]]:
    r = env.hasync("switchover", "--json", *args, node=node)
    assert r.stdout, r.stderr
    return r.returncode, json.loads(r.stdout)


def test_switchover_in_sync_swaps_roles_with_a_new_epoch_and_the_new_standby_pulls(
    make_pair: Callable[..., PairEnv],
) -> None:
    env = started(make_pair, INTERVAL)
    before = status(env, "a")["epoch"], status(env, "b")["epoch"]
    assert before == (0, 0)
    code, rep = switchover(env, node="a")  # run on the active: it asks the standby to take over
    assert code == 0 and rep["ok"], json.dumps(rep, indent=1)
    assert rep["node"] == "node-b" and rep["role"] == "active" and rep["epoch"] == 1
    assert [s["step"] for s in rep["steps"]][-1] == "serving"
    wait_for(lambda: roles(env) == ("standby", "active"), 20, what="roles swapped")
    assert status(env, "a")["epoch"] == 1 and status(env, "b")["epoch"] == 1
    # Every step is in the HA log of both nodes: the promoter's, and the old active's hand-over part.
    log_a, log_b = (env.pair.base / "logs" / n / "ha.log" for n in ("node-a", "node-b"))
    text_b = log_b.read_text()
    for step in ("start", "peer", "freeze", "last sync", "verify", "epoch kept", "peer told", "serving"):
        assert re.search(rf'switchover step step="?{re.escape(step)}"? ', text_b), step
    assert "handover step step=freeze" in log_a.read_text() and "handover step step=demote" in log_a.read_text()
    # A file written on the new active reaches the new standby.
    (env.dst / "conf" / "new.xml").write_text("<new/>")
    env.chown_all()
    wait_for(lambda: (env.src / "conf" / "new.xml").exists(), 20, what="new.xml on the new standby")
    assert (env.src / "conf" / "new.xml").read_text() == "<new/>"
    # And the roles survive a restart of both agents.
    env.a.stop()
    env.b.stop()
    env.a.start()
    env.b.start()
    assert roles(env) == ("standby", "active")
    # No alarm for the expected role change.
    for node in ("a", "b"):
        r = env.hasync("alarms", "--all", "--json", node=node)
        assert json.loads(r.stdout) == [], r.stdout


def test_switchover_refused_while_a_junk_file_blocks_the_sync_then_allowed_and_forced(
    make_pair: Callable[..., PairEnv],
) -> None:
    env = started(make_pair, INTERVAL, unprivileged=True)
    junk = env.src / "conf" / "sed4Xk2p"
    junk.write_bytes(b"")
    os.chmod(junk, 0)
    env.chown_all()
    code, rep = switchover(env)
    assert code == 1 and not rep["ok"], rep
    assert "sed4Xk2p" in rep["reason"], rep
    assert roles(env) == ("active", "standby")
    # The fix: the junk file removed, the switchover goes through.
    junk.unlink()
    code, rep = switchover(env)
    assert code == 0 and rep["ok"], rep
    wait_for(lambda: roles(env) == ("standby", "active"), 20, what="roles swapped")
    # Now the new active (b) has a file the new standby (a) cannot read... back the other way, forced.
    (env.dst / "conf" / "only-b.xml").write_text("<b>" + "x" * 1000 + "</b>")
    junk = env.dst / "conf" / "sedZZZZ"
    junk.write_bytes(b"")
    os.chmod(junk, 0)
    env.chown_all()
    wait_for(lambda: (env.src / "conf" / "only-b.xml").exists(), 20, what="only-b.xml synced")
    code, rep = switchover(env, node="a")
    assert code == 1 and "sedZZZZ" in rep["reason"], rep
    code, rep = switchover(env, "--force", node="a")
    assert code == 0 and rep["ok"] and rep["forced"], rep
    assert rep["lost"]["known"] and [p["path"] for p in rep["lost"]["paths"]] == ["sedZZZZ"], rep
    wait_for(lambda: roles(env) == ("active", "standby"), 20, what="roles swapped back")
    log = (env.pair.base / "logs" / "node-a" / "ha.log").read_text()
    assert "forced: the new active lacks" in log and "sedZZZZ" in log


def test_force_on_a_terminal_asks_first_and_no_changes_nothing(make_pair: Callable[..., PairEnv]) -> None:
    """`--force` needs confirmation on a terminal (issue 13): answered "n", nothing changes."""
    env = started(make_pair, INTERVAL)
    main, sub = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hasync", "switchover", "--force", "-c", str(env.pair.config_b)],
            stdin=sub,
            stdout=sub,
            stderr=sub,
            cwd=env.pair.base,
        )
        seen = b""
        deadline = time.monotonic() + 30
        while b"Go on?" not in seen:
            assert time.monotonic() < deadline and proc.poll() is None, seen
            ready, _, _ = select.select([main], [], [], 1.0)
            if ready:
                seen += os.read(main, 4096)
        os.write(main, b"n\n")
        assert proc.wait(30) == 1
    finally:
        os.close(main)
        os.close(sub)
    assert roles(env) == ("active", "standby")
    assert status(env, "b")["epoch"] == 0
