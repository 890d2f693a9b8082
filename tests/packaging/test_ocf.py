"""The OCF resource agent (packaging/ocf/hasync) against a real pair in external mode.

Debian's `ocf-tester` (package resource-agents) runs every action of the agent for node-b of a pair
whose node-a runs as a plain agent; the monitor's codes are checked in each state by running the
agent directly, as Pacemaker's executor does (OCF_ROOT, OCF_RESKEY_* in the environment).
The agents run as a plain user (the agent's `user` parameter), as in production.

The promotion score is set with Pacemaker's own crm_attribute (pacemaker-cli-utils), on a CIB file
(`CIB_file`, Pacemaker's offline mode) that holds node-b: the tests read back what Pacemaker would
promote by.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from hamanagers import OCF_AGENT, external_mode, hasync_command, run, status_role
from pairlib import PLAIN_USER, ROOT, PairEnv, cleanup_base, make_base, new_pair, wait_for
from realprogs import program

OCF_SUCCESS, OCF_ERR_GENERIC, OCF_ERR_CONFIGURED = 0, 1, 6
OCF_NOT_RUNNING, OCF_RUNNING_PROMOTED, OCF_FAILED_PROMOTED = 7, 8, 9
CALL_TIMEOUT_S = 8  # the agent's call_timeout: a hung hasync agent is seen within it
SCORE_ACTIVE, SCORE_SAFE, SCORE_UNSAFE = "1000", "100", "-INFINITY"


def write_cib(path: Path, nodes: tuple[str, ...] = ("node-a", "node-b")) -> None:
    """An empty CIB (cibadmin --empty) with `nodes` in it, online: crm_attribute can keep their
    transient attributes (the promotion score) there."""
    r = run([program("cibadmin"), "--empty"])
    assert r.returncode == 0, r.stderr
    defs = "".join(f'<node id="{i}" uname="{n}"/>' for i, n in enumerate(nodes, 1))
    states = "".join(
        f'<node_state id="{i}" uname="{n}" in_ccm="true" crmd="online" join="member" expected="member"/>'
        for i, n in enumerate(nodes, 1)
    )
    cib = r.stdout.replace("<nodes/>", f"<nodes>{defs}</nodes>").replace("<status/>", f"<status>{states}</status>")
    assert defs in cib and states in cib, cib
    path.write_text(cib)


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its reaper counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


@dataclass
class OcfPair:
    """A pair whose node-b (and, in `both`, node-a too) runs under the OCF agent, each node as
    Pacemaker's executor on that node would run it."""

    env: PairEnv
    hasync: Path
    instance: str
    cib: Path

    def pidfile(self, node: str = "b") -> Path:
        return self.env.pair.base / f"ocf-{node}.pid"

    def ra_env(self, node: str = "b", **extra: str) -> dict[str, str]:
        e = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "OCF_ROOT": "/usr/lib/ocf",
            "OCF_RESOURCE_INSTANCE": self.instance,
            "OCF_RESKEY_config": str(self.env.pair.config_a if node == "a" else self.env.pair.config_b),
            "OCF_RESKEY_hasync": str(self.hasync),
            "OCF_RESKEY_pidfile": str(self.pidfile(node)),
            "OCF_RESKEY_call_timeout": str(CALL_TIMEOUT_S),
            "OCF_RESKEY_CRM_meta_timeout": "60000",
            "OCF_RESKEY_CRM_meta_on_node": f"node-{node}",
            "CIB_file": str(self.cib),
        }
        if ROOT:
            e["OCF_RESKEY_user"] = PLAIN_USER
        e.update(extra)
        return e

    def action(self, name: str, node: str = "b", **extra: str) -> tuple[int, str]:
        """Run one action of the agent for `node`; (exit code, its output)."""
        if name == "monitor":
            extra.setdefault("OCF_RESKEY_CRM_meta_interval", "10000")
        r = run([str(OCF_AGENT), name], env=self.ra_env(node, **extra), timeout=120)
        return r.returncode, r.stdout + r.stderr

    def role(self, node: str) -> str | None:
        return status_role(self.env.hasync("status", "--json", node=node).stdout)

    def score(self, node: str = "b") -> str | None:
        """The node's promotion score for this resource, as Pacemaker reads it (None: not set)."""
        r = run([program("crm_attribute"), "--promotion", "-G", "-q"], env=self.ra_env(node))
        return r.stdout.strip() if r.returncode == 0 else None

    def agent_pid(self, node: str = "b") -> int:
        return int(self.pidfile(node).read_text())


@contextmanager
def ocf_setup(plain_a: bool) -> Iterator[OcfPair]:
    """A pair in external mode (node-a the initial active). `plain_a`: node-a runs as a plain agent,
    else it is left to the OCF agent too. Whatever runs is stopped afterwards."""
    program("ocf-tester")
    base = make_base()
    hasync = hasync_command()
    env = new_pair(base, unprivileged=True)
    for cfg in (env.pair.config_a, env.pair.config_b):
        external_mode(cfg, active="node-a", peer_timeout_s=2)
    env.chown_all()
    if plain_a:
        env.a.start()
    p = OcfPair(env, hasync, f"hasync-test-{os.getpid()}", base / "cib.xml")
    write_cib(p.cib)
    try:
        yield p
    finally:
        for node in ("a", "b"):
            if p.pidfile(node).exists():
                pid = p.agent_pid(node)
                for sig in (signal.SIGCONT, signal.SIGKILL):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
        env.stop()
        cleanup_base(base)
        shutil.rmtree(hasync.parent, ignore_errors=True)


@pytest.fixture
def ocf_pair() -> Iterator[OcfPair]:
    """node-a active, a plain agent; node-b under the OCF agent."""
    with ocf_setup(plain_a=True) as p:
        yield p


def test_ocf_tester_passes(ocf_pair: OcfPair) -> None:
    p = ocf_pair
    args = [program("ocf-tester"), "-n", p.instance]
    for k, v in p.ra_env().items():
        if k.startswith("OCF_RESKEY_") and not k.startswith("OCF_RESKEY_CRM_"):
            args += ["-o", f"{k.removeprefix('OCF_RESKEY_')}={v}"]
    t0 = time.monotonic()
    r = run(
        [*args, str(OCF_AGENT)],
        env=dict(os.environ, OCF_ROOT="/usr/lib/ocf", CIB_file=str(p.cib), OCF_RESKEY_CRM_meta_on_node="node-b"),
        timeout=300,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "passed all tests" in out, out
    assert time.monotonic() - t0 < 110, "ocf-tester took too long"
    # It ends with stop: nothing left running, no pid file, no promotion score.
    assert not p.pidfile().exists()
    assert p.score() is None
    assert p.action("monitor")[0] == OCF_NOT_RUNNING
    assert p.env.a.healthy()  # node-a's agent went through it all


def test_monitor_codes_in_each_state(ocf_pair: OcfPair) -> None:
    p = ocf_pair
    env = p.env
    # Not running: 7 (a probe too).
    assert p.action("monitor")[0] == OCF_NOT_RUNNING
    assert p.action("monitor", OCF_RESKEY_CRM_meta_interval="0")[0] == OCF_NOT_RUNNING
    code, out = p.action("start")
    assert code == OCF_SUCCESS, out
    pid = p.agent_pid()
    if ROOT:  # the agent runs as the `user` parameter says
        assert os.stat(f"/proc/{pid}").st_uid == env.user[0]  # type: ignore[index]
    # Started: standby, 0; in sync, so a switchover to it loses nothing: promotable.
    assert p.action("monitor")[0] == OCF_SUCCESS
    assert p.role("b") == "standby"
    env.src.joinpath("conf", "before-promote.yaml").write_text("a: 1\n")
    env.chown_all()
    env.wait_standby_in_sync()
    wait_for(lambda: p.action("monitor")[0] == OCF_SUCCESS and p.score() == SCORE_SAFE, 30, what="score 100")

    # Promoted: 8, and node-a follows (standby).
    code, out = p.action("promote")
    assert code == OCF_SUCCESS, out
    assert p.action("monitor")[0] == OCF_RUNNING_PROMOTED
    assert p.role("b") == "active" and p.score() == SCORE_ACTIVE
    wait_for(lambda: p.role("a") == "standby", 30, interval=0.2, what="node-a to become standby")
    assert p.action("promote")[0] == OCF_SUCCESS  # promoting a promoted instance succeeds

    # Promoted but hung (SIGSTOP): 9, within the call timeout.
    os.kill(pid, signal.SIGSTOP)
    try:
        t = time.monotonic()
        code, out = p.action("monitor")
        assert code == OCF_FAILED_PROMOTED, out
        assert "ocf-exit-reason:" in out and str(pid) in out, out
        assert time.monotonic() - t < CALL_TIMEOUT_S + 10
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: p.action("monitor")[0] == OCF_RUNNING_PROMOTED, 30, interval=0.2, what="8 after SIGCONT")

    # Demoted: 0.
    code, out = p.action("demote")
    assert code == OCF_SUCCESS, out
    assert p.action("monitor")[0] == OCF_SUCCESS
    assert p.role("b") == "standby"

    # Stopped: 7, the agent gone within the stop's 10 s budget.
    t = time.monotonic()
    code, out = p.action("stop")
    assert code == OCF_SUCCESS, out
    assert time.monotonic() - t < 12
    assert gone(pid)
    assert p.action("monitor")[0] == OCF_NOT_RUNNING
    assert p.score() is None
    assert p.action("stop")[0] == OCF_SUCCESS  # stopping a stopped instance succeeds


def test_promote_refused_while_out_of_sync(ocf_pair: OcfPair) -> None:
    """A standby that would lose data is not promoted: `hasync role set active` refuses, promote fails
    with the reason, and the instance stays unpromoted."""
    p = ocf_pair
    env = p.env
    code, out = p.action("start")
    assert code == OCF_SUCCESS, out
    env.wait_standby_in_sync()
    junk = env.src / "conf" / "sed123"  # what a crashed `sed -i` leaves: size 0, mode 000
    junk.touch()
    junk.chmod(0)
    env.chown_all()
    wait_for(
        lambda: env.hasync("check", "--failover").returncode == 1,
        30,
        interval=0.2,
        what="node-b's failover verdict to be 'not safe'",
    )
    # The monitor makes it unpromotable: Pacemaker would not even try.
    assert p.action("monitor")[0] == OCF_SUCCESS
    assert p.score() == SCORE_UNSAFE
    # Promoted all the same (e.g. by hand): hasync refuses, the promote fails with the reason.
    code, out = p.action("promote")
    assert code == OCF_ERR_GENERIC, out
    assert "ocf-exit-reason:" in out and "role set active" in out, out
    assert p.action("monitor")[0] == OCF_SUCCESS
    assert p.role("b") == "standby" and p.role("a") == "active"
    assert p.score() == SCORE_UNSAFE

    # Once the junk file is gone the same promote goes through.
    junk.unlink()
    wait_for(lambda: env.hasync("check", "--failover").returncode == 0, 30, interval=0.2, what="verdict safe")
    assert p.action("monitor")[0] == OCF_SUCCESS
    assert p.score() == SCORE_SAFE
    code, out = p.action("promote")
    assert code == OCF_SUCCESS, out
    assert p.action("monitor")[0] == OCF_RUNNING_PROMOTED
    assert p.action("stop")[0] == OCF_SUCCESS


def test_validate_all() -> None:
    """validate-all: 0 with a readable config, 6 (not configured) without one, 5 without hasync."""
    base = make_base()
    hasync = hasync_command()
    try:
        cfg = base / "hasync.toml"
        cfg.write_text("")
        e = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "OCF_ROOT": "/usr/lib/ocf",
            "OCF_RESKEY_hasync": str(hasync),
        }
        assert run([str(OCF_AGENT), "validate-all"], env={**e, "OCF_RESKEY_config": str(cfg)}).returncode == 0
        r = run([str(OCF_AGENT), "validate-all"], env=e)
        assert r.returncode == OCF_ERR_CONFIGURED and "ocf-exit-reason:" in r.stderr, r.stderr
        r = run([str(OCF_AGENT), "validate-all"], env={**e, "OCF_RESKEY_config": str(base / "nosuch.toml")})
        assert r.returncode == OCF_ERR_CONFIGURED, r.stderr
        r = run(
            [str(OCF_AGENT), "validate-all"],
            env={**e, "OCF_RESKEY_config": str(cfg), "OCF_RESKEY_hasync": "/nonexistent/hasync"},
        )
        assert r.returncode == 5, r.stderr
        r = run([str(OCF_AGENT), "no-such-action"], env=e)
        assert r.returncode == 3
    finally:
        cleanup_base(base)
        shutil.rmtree(hasync.parent, ignore_errors=True)


def test_start_leaves_a_persisted_active_unpromoted_and_a_lone_node_is_not_promoted() -> None:
    """A node whose agent comes up active (here its initial role; after a crash, its persisted one) is
    unpromoted once started, as OCF wants of every start. Alone (its peer down) it cannot know what it
    lacks: not promotable, and a promote tried anyway is refused by hasync."""
    with ocf_setup(plain_a=False) as p:
        code, out = p.action("start", "a")
        assert code == OCF_SUCCESS, out
        assert "came up active" in out, out
        assert p.role("a") == "standby"
        assert p.action("monitor", "a")[0] == OCF_SUCCESS
        assert p.score("a") == SCORE_UNSAFE
        code, out = p.action("promote", "a")
        assert code == OCF_ERR_GENERIC and "ocf-exit-reason:" in out, out
        assert p.action("monitor", "a")[0] == OCF_SUCCESS
        assert p.action("stop", "a")[0] == OCF_SUCCESS
        assert p.score("a") is None and p.action("monitor", "a")[0] == OCF_NOT_RUNNING


def test_both_nodes_under_pacemaker_always_have_a_promotable_node() -> None:
    """Both nodes under the OCF agent, as in a cluster: every started instance is unpromoted, so after
    a start, and after the recovery of the promoted instance, both are standby. With equal copies a
    switchover to either loses nothing: one of them must be promotable, or the pair stays without
    an active node."""
    with ocf_setup(plain_a=False) as p:
        for node in ("b", "a"):  # node-a comes up active (its initial role) and the start makes it standby
            code, out = p.action("start", node)
            assert code == OCF_SUCCESS, out
        assert p.role("a") == "standby" and p.role("b") == "standby"
        assert p.action("monitor", "a")[0] == OCF_SUCCESS and p.action("monitor", "b")[0] == OCF_SUCCESS
        # Both copies are the same (empty): promoting node-a loses nothing, and hasync agrees.
        code, out = p.action("promote", "a")
        assert code == OCF_SUCCESS, out
        p.env.src.joinpath("conf", "flink-conf.yaml").write_text("jobmanager.rpc.port: 6123\n")
        p.env.chown_all()
        p.env.wait_standby_in_sync()
        wait_for(lambda: p.action("monitor", "b")[0] == OCF_SUCCESS and p.score("b") == SCORE_SAFE, 30)
        # Pacemaker recovers the promoted instance: demote, stop, start. The copies are still equal.
        for action in ("demote", "stop", "start"):
            code, out = p.action(action, "a")
            assert code == OCF_SUCCESS, (action, out)
        p.env.wait_in_sync()
        for node in ("a", "b"):
            assert p.action("monitor", node)[0] == OCF_SUCCESS
        scores = {node: p.score(node) for node in ("a", "b")}
        assert SCORE_SAFE in scores.values(), f"no node is promotable: {scores}"
