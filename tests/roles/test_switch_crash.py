"""`kill -9` of either agent at each step of a switchover (issue 13): once both agents run again there
is exactly one active, and the trees converge. The agent kills itself right after the named step
(HASYNC_CRASH_AT, hasync.node.switch.crash_point): the promoter (node b, the standby) at each of its
steps, the old active (node a) after each of its hand-over steps."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pairlib import AgentProc, PairEnv, snapshot, wait_for
from roles.rolelib import roles

INTERVAL = 2.0
PROMOTER_STEPS = ["start", "peer", "freeze", "last sync", "verify", "epoch kept", "peer told", "serving"]
PEER_STEPS = ["handover:freeze", "handover:demote"]


def one_active(env: PairEnv) -> bool:
    return sorted(roles(env)) == ["active", "standby"]


def dead(agent: AgentProc) -> bool:
    return agent.proc is not None and agent.proc.poll() is not None


@pytest.mark.parametrize(("node", "step"), [("b", s) for s in PROMOTER_STEPS] + [("a", s) for s in PEER_STEPS])
def test_kill_9_at_a_step_of_a_switchover_leaves_one_active_and_converges(
    make_pair: Callable[..., PairEnv], monkeypatch: pytest.MonkeyPatch, node: str, step: str
) -> None:
    env = make_pair(interval_s=INTERVAL)
    (env.src / "conf" / "f.xml").write_text("v1")
    victim = env.a if node == "a" else env.b
    other = env.b if node == "a" else env.a
    other.start()
    monkeypatch.setenv("HASYNC_CRASH_AT", step)
    victim.start()
    monkeypatch.delenv("HASYNC_CRASH_AT")
    env.wait_standby_in_sync()
    env.hasync("switchover", "--json", node="b", timeout=60)
    wait_for(lambda: dead(victim), 20, what=f"node {node} killed at step {step!r}")
    victim.start()
    wait_for(lambda: one_active(env), 60, what="exactly one active")
    (env.src if roles(env)[0] == "active" else env.dst).joinpath("conf", "after.xml").write_text("after")
    env.wait_in_sync(60)
    assert one_active(env)
    assert snapshot(env.src) == snapshot(env.dst)
