"""`hasync role set` ([role] mode = "external", issue 13): an HA manager's word, through the agent,
with the epoch rules and the refusal of `switchover`; refused in static mode."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from pairlib import PairEnv, wait_for
from roles.rolelib import external, status

INTERVAL = 2.0


def role_set(env: PairEnv, node: str, role: str, *flags: str) -> tuple[int, dict[str, Any]]:
    r = env.hasync("role", "set", role, "--json", *flags, node=node)
    assert r.stdout, r.stderr
    return r.returncode, json.loads(r.stdout)


def test_role_set_is_refused_in_static_mode(make_pair: Callable[..., PairEnv]) -> None:
    env = make_pair(interval_s=INTERVAL)
    env.a.start()
    env.b.start()
    r = env.hasync("role", "set", "active", node="b")
    assert r.returncode == 1 and "switchover" in r.stderr and "\n" not in r.stderr.strip(), r.stderr
    assert status(env, "b")["role"] == "standby"


def test_external_mode_both_start_standby_then_the_ha_managers_word_moves_the_roles(
    make_pair: Callable[..., PairEnv],
) -> None:
    env = make_pair(interval_s=INTERVAL, unprivileged=True)
    external(env, None)
    (env.src / "conf" / "a.xml").write_text("same")
    (env.dst / "conf" / "a.xml").write_text("same")
    for root in (env.src, env.dst):  # the same file on both: same content, mode and times
        (root / "conf" / "a.xml").chmod(0o644)
        os.utime(root / "conf" / "a.xml", ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    env.chown_all()
    env.a.start()
    env.b.start()
    assert (status(env, "a")["role"], status(env, "b")["role"]) == ("standby", "standby")
    code, rep = role_set(env, "a", "active")  # no active: the copies are compared as they are
    assert code == 0 and rep["ok"] and rep["role"] == "active" and rep["epoch"] == 2, rep
    (env.src / "conf" / "n.xml").write_text("n")
    env.chown_all()
    env.wait_in_sync(30)
    assert status(env, "b")["epoch"] == 2
    code, rep = role_set(env, "a", "active")
    assert code == 0 and rep["ok"] and "already" in rep["reason"] and rep["epoch"] == 2
    # keepalived moves the VIP: the old master is told backup, the new one master.
    code, rep = role_set(env, "a", "standby")
    assert code == 0 and rep["role"] == "standby" and rep["epoch"] == 4, rep  # node-a takes even epochs
    code, rep = role_set(env, "b", "active")
    assert code == 0 and rep["ok"] and rep["epoch"] == 5, rep  # node-b odd ones
    wait_for(lambda: status(env, "a")["epoch"] == 5, 20, what="a to learn epoch 5")
    (env.dst / "conf" / "from-b.xml").write_text("b")
    env.chown_all()
    env.wait_in_sync(30)
    # No node active and the copies differ: refused, naming what differs (the standby peer's listings).
    code, rep = role_set(env, "b", "standby")
    assert code == 0 and rep["role"] == "standby", rep
    (env.dst / "conf" / "only-here.xml").write_text("b's")
    env.chown_all()
    code, rep = role_set(env, "a", "active")
    assert code == 1 and "only-here.xml" in rep["reason"], rep
    code, rep = role_set(env, "b", "active")
    assert code == 1 and "only-here.xml" in rep["reason"], rep
    (env.dst / "conf" / "only-here.xml").unlink()
    wait_for(lambda: role_set(env, "b", "active")[0] == 0, 20, what="equal copies: b promoted")
    env.wait_in_sync(30)
    # A copy that differs is refused, with the paths; --force takes it, saying what it lacks.
    junk = env.dst / "conf" / "sed0Junk"
    junk.write_bytes(b"")
    os.chmod(junk, 0)
    env.chown_all()
    code, rep = role_set(env, "a", "active")
    assert code == 1 and not rep["ok"] and "sed0Junk" in rep["reason"], rep
    assert status(env, "a")["role"] == "standby"
    code, rep = role_set(env, "a", "active", "--force")
    assert code == 0 and rep["ok"] and rep["forced"] and rep["lost"]["files"] == 1, rep
    wait_for(lambda: status(env, "b")["role"] == "standby", 20, what="b to follow")
