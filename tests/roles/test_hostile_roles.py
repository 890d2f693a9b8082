"""Review of issue 13 with real agents: an attacker's and a careless operator's role changes. A defect is
an xfail(strict) test until it is fixed; behaviour that held is a plain test."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from pairlib import AgentProc, PairEnv, raw_request, wait_for
from roles.rolelib import external, roles, run_json, short_timeouts, started, status

INTERVAL = 1.0


def state_dir(env: PairEnv, node: str) -> Path:
    return env.pair.base / "state" / f"node-{node}"


def backed_up(env: PairEnv, node: str) -> dict[str, list[bytes]]:
    """Every file in the node's backup sets: its path inside the set, each version kept."""
    out: dict[str, list[bytes]] = {}
    root = env.pair.base / "backup" / f"node-{node}"
    if not root.is_dir():
        return out
    for s in sorted(root.iterdir()):
        for p in s.rglob("*"):
            if p.is_file():
                out.setdefault(str(p.relative_to(s)), []).append(p.read_bytes())
    return out


def api(agent: AgentProc, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
    """One request to an agent with the pair's token (what a peer or a token holder can send)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{agent.port}{path}", data=data, method=method)
    req.add_header("Authorization", f"Bearer {agent.token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null"), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null"), dict(e.headers)


# -- without the token --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [b"/healthz", b"/v1/failover"])
def test_an_unauthenticated_request_cannot_demote_the_active(make_pair: Callable[..., PairEnv], path: bytes) -> None:
    env = make_pair(interval_s=60)
    env.a.start()
    head = (
        b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Hasync-Epoch: 9007199254740991\r\nHasync-Role: active\r\n\r\n"
    )
    raw_request(env.a.port, head)  # no token
    doc = status(env, "a")
    assert (doc["role"], doc["epoch"]) == ("active", 0), (doc["role"], doc["epoch"], doc.get("role_reason"))


# -- two actives --------------------------------------------------------------------------------------


def test_forced_takeovers_on_both_sides_of_a_partition_do_not_leave_two_actives(
    make_pair: Callable[..., PairEnv],
) -> None:
    """keepalived split brain: each side, alone, is told MASTER and runs `role set active --force`. The
    other's epoch is unknown, so each takes the next one of its own parity (a: 2, b: 1): never the same.
    When the link is back they must end with one active (or none, for the manager to decide), never two
    that both stay active."""
    env = make_pair(interval_s=INTERVAL)
    external(env, None)
    short_timeouts(env)
    (env.src / "conf" / "x.xml").write_text("same")
    shutil.copy2(env.src / "conf" / "x.xml", env.dst / "conf" / "x.xml")
    env.a.start()
    env.b.start()
    env.b.stop()  # the partition: each side alone
    code, rep = run_json(env, "a", "role", "set", "active", "--force")
    assert code == 0 and rep["epoch"] == 2, rep
    env.a.stop()
    env.b.start()
    code, rep = run_json(env, "b", "role", "set", "active", "--force")
    assert code == 0 and rep["epoch"] == 1, rep
    (env.dst / "conf" / "b-work.xml").write_text("b")  # each side's service writes
    env.a.start()  # the link is back
    (env.src / "conf" / "a-work.xml").write_text("a")
    wait_for(lambda: "standby" in roles(env), 15, what="at most one active once both agents hear each other")


def race_role_set_active(env: PairEnv) -> dict[str, Any]:
    """`POST /v1/role {"role": "active"}` on both agents at the same moment: their answers."""
    out: dict[str, Any] = {}
    barrier = threading.Barrier(2)

    def go(node: str, agent: AgentProc) -> None:
        barrier.wait()
        out[node] = api(agent, "POST", "/v1/role", {"role": "active"})[1]

    threads = [threading.Thread(target=go, args=(n, ag)) for n, ag in (("a", env.a), ("b", env.b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def test_role_set_active_on_both_nodes_at_once_leaves_exactly_one_active(make_pair: Callable[..., PairEnv]) -> None:
    """Two HA managers (or one confused one) say MASTER on both nodes at the same moment, again and again:
    at most one is told "active", and that one is the pair's only active. (The race, both promotions past
    their `peer` step before either keeps its epoch, is hit about one try in four.)"""
    env = make_pair(interval_s=INTERVAL)
    external(env, None)
    short_timeouts(env)
    env.a.start()
    env.b.start()
    for _ in range(16):  # the race is hit about one try in four: missed by all 16 about 1 % of runs
        for agent in (env.a, env.b):
            assert api(agent, "POST", "/v1/role", {"role": "standby"})[0] == 200
        wait_for(lambda: roles(env) == ("standby", "standby"), 20, what="both standby")
        out = race_role_set_active(env)
        told = sorted(n for n, d in out.items() if d.get("ok") and d.get("role") == "active")
        seen: list[tuple[str, str]] = []
        try:
            assert len(told) <= 1, f"both told active: {json.dumps(out)}"
            wait_for(partial(settled, env, told, seen), 15, what="the roles the answers said")
        except AssertionError:
            raise AssertionError(f"told active: {told}; roles now (a, b): {seen[-1] if seen else None}") from None


def settled(env: PairEnv, told: list[str], seen: list[tuple[str, str]]) -> bool:
    """The active nodes now are exactly `told` (their names' last letters); each look is added to `seen`."""
    seen.append(roles(env))
    return [n for n, r in zip("ab", seen[-1], strict=True) if r == "active"] == told


def test_a_stale_active_never_serves_its_older_tree_to_a_standby_of_a_newer_epoch(
    make_pair: Callable[..., PairEnv],
) -> None:
    """a is cut off (SIGSTOP); b is made active alone (epoch 1), its service writes, then the manager
    makes b standby (epoch 3, b's next of its parity). a comes back, still active at epoch 0: it missed
    epoch 1's term, so its tree is older than b's; it must not become the tree b pulls."""
    env = make_pair(interval_s=INTERVAL)
    external(env, "node-a")
    short_timeouts(env)
    (env.src / "conf" / "f.xml").write_text("v1")
    env.a.start()
    env.b.start()
    env.wait_standby_in_sync()
    assert env.a.proc is not None
    env.a.proc.send_signal(signal.SIGSTOP)
    try:
        code, rep = run_json(env, "b", "role", "set", "active", "--force")
        assert code == 0 and rep["epoch"] == 1, rep
        (env.dst / "conf" / "f.xml").write_text("b-term")
        code, rep = run_json(env, "b", "role", "set", "standby")
        assert code == 0 and rep["epoch"] == 3, rep
    finally:
        env.a.proc.send_signal(signal.SIGCONT)
    try:
        wait_for(lambda: status(env, "a")["role"] == "standby", 15, what="the stale active to yield")
    except AssertionError:
        doc = status(env, "a")
        raise AssertionError(
            f"a: {doc['role']} at epoch {doc['epoch']}; b's f.xml now: {(env.dst / 'conf' / 'f.xml').read_text()!r}"
        ) from None


# -- role.json that cannot be written -------------------------------------------------------------------


def unwritable_role_file(env: PairEnv, node: str) -> None:
    """role.json replaced by a directory while the agent runs: every later keep (atomic rename) fails, as
    on a full or read-only state dir."""
    path = state_dir(env, node) / "role.json"
    path.unlink()
    path.mkdir()


def test_an_old_active_that_cannot_keep_its_demotion_still_stops_being_active(
    make_pair: Callable[..., PairEnv],
) -> None:
    env = started(make_pair, INTERVAL)
    unwritable_role_file(env, "a")
    code, rep = run_json(env, "b", "switchover")
    assert code == 0 and rep["ok"] and rep["role"] == "active", rep
    # The new active is serving: the old one must not go on as an active (at least in memory).
    wait_for(lambda: status(env, "a")["role"] == "standby", 15, what="the old active to stop being active")


def test_a_promotion_that_cannot_keep_its_epoch_is_refused_cleanly_and_thaws_the_active(
    make_pair: Callable[..., PairEnv],
) -> None:
    env = started(make_pair, INTERVAL)
    unwritable_role_file(env, "b")
    r = env.hasync("switchover", "--json", node="b")
    # The active is not left frozen: its next change reaches the standby at once, not after FREEZE_TTL_S.
    (env.src / "conf" / "after.xml").write_text("after")
    arrived = True
    try:
        wait_for(lambda: (env.dst / "conf" / "after.xml").exists(), 8, what="the change")
    except AssertionError:
        arrived = False
    assert arrived, "the active stayed frozen after the failed switchover"
    assert roles(env) == ("active", "standby")  # the old role stays in force: that part holds
    assert r.returncode == 1 and r.stdout, (r.returncode, r.stdout, r.stderr)
    doc = json.loads(r.stdout)  # a refusal with its reason, as --json promises
    assert doc["ok"] is False and "role.json" in doc["reason"], doc


# -- the old active's unsynced work: set aside, and said so --------------------------------------------


def set_aside_paths(env: PairEnv, node: str) -> set[str]:
    aside = status(env, node).get("set_aside") or {}
    return {p["path"] for p in aside.get("listed", [])}


def test_role_set_standby_then_the_peer_promoted_lists_what_was_set_aside(make_pair: Callable[..., PairEnv]) -> None:
    """keepalived's failover in external mode: the old master is told BACKUP (`role set standby`), the new
    one MASTER (`role set active --force`: the old one had work the standby never got)."""
    env = make_pair(interval_s=INTERVAL)
    external(env, "node-a")
    short_timeouts(env)
    (env.src / "conf" / "a.xml").write_text("<a/>")
    env.a.start()
    env.b.start()
    env.wait_standby_in_sync()
    assert env.b.proc is not None
    env.b.proc.send_signal(signal.SIGSTOP)
    try:
        (env.src / "conf" / "unsynced.xml").write_text("a-only")
        code, rep = run_json(env, "a", "role", "set", "standby")
        assert code == 0 and rep["role"] == "standby", rep
    finally:
        env.b.proc.send_signal(signal.SIGCONT)
    code, rep = run_json(env, "b", "role", "set", "active", "--force")
    assert code == 0 and rep["ok"] and rep["role"] == "active", rep
    env.wait_in_sync(30)
    assert backed_up(env, "a").get("conf/unsynced.xml") == [b"a-only"]  # in a backup set: that holds
    wait_for(lambda: "unsynced.xml" in set_aside_paths(env, "a"), 15, what="status set_aside to list unsynced.xml")


def test_a_file_written_on_the_active_during_the_freeze_is_listed_somewhere(
    make_pair: Callable[..., PairEnv],
) -> None:
    """The service keeps writing on the active while the switchover runs: what it writes between the
    freeze and the demotion never reaches the new active. The freeze is widened here by asking it first
    (the promoter's own step 2, `POST /v1/handover freeze`), so that the write falls inside it for sure."""
    env = started(make_pair, INTERVAL)
    code, body, _ = api(env.a, "POST", "/v1/handover", {"step": "freeze", "ttl_s": 6})
    assert code == 200, body
    (env.src / "conf" / "during-freeze.xml").write_text("written during the switchover")
    code, rep = run_json(env, "b", "switchover")
    assert code == 0 and rep["ok"], rep
    wait_for(lambda: roles(env) == ("standby", "active"), 20, what="roles swapped")
    env.wait_in_sync(30)
    assert not (env.dst / "conf" / "during-freeze.xml").exists()
    # Not lost: in the old active's backup set (that holds)...
    assert backed_up(env, "a").get("conf/during-freeze.xml") == [b"written during the switchover"]
    # ...but said nowhere: neither in what the new active lacks, nor in what the old one set aside.
    lost = {p["path"] for p in rep["lost"]["paths"]}
    wait_for(lambda: status(env, "a").get("set_aside") is not None, 15, what="the set-aside report")
    assert "during-freeze.xml" in lost | set_aside_paths(env, "a"), (rep["lost"], status(env, "a")["set_aside"])


def test_a_stale_actives_unsynced_version_is_kept_even_if_its_backup_set_already_holds_the_path(
    make_pair: Callable[..., PairEnv],
) -> None:
    """A maintenance window: switch to b, a change there (a's standby copy keeps the old version in its
    current backup set), switch back to a; then a is cut off, its service writes, b takes over forced,
    writes too; a comes back: its unsynced version must end in a backup set. (It holds: each new
    standby side starts a new backup set, so backup.py's "first version in a set stays" does not drop it.)"""
    env = make_pair(interval_s=INTERVAL)
    short_timeouts(env)
    (env.src / "conf" / "f.xml").write_text("v1")
    env.a.start()
    env.b.start()
    env.wait_standby_in_sync()
    assert run_json(env, "b", "switchover")[0] == 0
    wait_for(lambda: roles(env) == ("standby", "active"), 20, what="b active")
    (env.dst / "conf" / "f.xml").write_text("v2")  # a, now standby, keeps v1 in its backup set
    wait_for(lambda: (env.src / "conf" / "f.xml").read_text() == "v2", 20, what="v2 on a")
    assert backed_up(env, "a").get("conf/f.xml") == [b"v1"]
    code, rep = run_json(env, "a", "switchover")
    assert code == 0 and rep["ok"], rep
    wait_for(lambda: roles(env) == ("active", "standby"), 20, what="a active again")
    assert env.a.proc is not None
    env.a.proc.send_signal(signal.SIGSTOP)
    try:
        (env.src / "conf" / "f.xml").write_text("a-late")  # never reaches b
        code, rep = run_json(env, "b", "switchover", "--force")
        assert code == 0 and rep["ok"], rep
        (env.dst / "conf" / "f.xml").write_text("b-new")
    finally:
        env.a.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: status(env, "a")["role"] == "standby", 30, what="a to yield")
    env.wait_in_sync(30)
    assert (env.src / "conf" / "f.xml").read_text() == "b-new"
    kept = backed_up(env, "a").get("conf/f.xml", [])
    assert b"a-late" in kept, kept


def test_role_set_active_with_no_active_and_differing_copies_is_refused_with_the_paths(
    make_pair: Callable[..., PairEnv],
) -> None:
    """Both nodes standby (the HA manager demoted both), the copies differ: `role set active` must be
    refused with what this node lacks (operations.md 4a: "the two copies are compared as they are")."""
    env = make_pair(interval_s=INTERVAL)
    external(env, None)
    (env.src / "conf" / "only-a.xml").write_text("a")
    env.a.start()
    env.b.start()
    code, rep = run_json(env, "b", "role", "set", "active")
    assert code == 1 and not rep["ok"], rep
    assert roles(env) == ("standby", "standby")
    assert rep["lost"]["known"] and "only-a.xml" in rep["reason"], rep["reason"]


# -- a promotion before the agent has scanned its copy -------------------------------------------------


def test_role_set_active_while_the_agent_still_scans_its_copy_is_not_a_blind_promotion(
    make_pair: Callable[..., PairEnv],
) -> None:
    """At boot keepalived says MASTER at once, while the agent still scans its sync dirs (a large copy).
    The copies differ: the promotion must be refused (or wait for the scan), never pass as equal."""
    env = make_pair(interval_s=INTERVAL)
    external(env, None)
    (env.src / "conf" / "only-a.xml").write_text("a")
    with open(env.dst / "conf" / "big.bin", "wb") as f:  # b's first dir: its scan hashes this for seconds
        f.truncate(16 << 30)
    env.a.start()
    env.b.start(wait=False)
    wait_for(env.b.healthy, 30, interval=0.005, what="b's listener")
    code, body, _ = api(env.b, "POST", "/v1/role", {"role": "active"})
    assert not (code == 200 and body["ok"]), body["steps"]


# -- what held ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("epoch", "role"),
    [
        (b"99999999999999999999999999", b"active"),
        (b"-1", b"active"),
        (b"\xd9\xa1", b"active"),  # an Arabic-Indic one, as raw header bytes
        (b"\xef\xbc\x99", b"standby"),  # a fullwidth nine
        (b"7", b"master"),
        (b"7", b""),
    ],
)
def test_hostile_epoch_headers_are_refused_and_change_nothing(
    make_pair: Callable[..., PairEnv], epoch: bytes, role: bytes
) -> None:
    env = make_pair(interval_s=60)
    env.a.start()
    head = (
        b"GET /v1/status?brief=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + b"Authorization: Bearer "
        + env.a.token.encode()
        + b"\r\nHasync-Epoch: "
        + epoch
        + b"\r\nHasync-Role: "
        + role
        + b"\r\n\r\n"
    )
    answer = raw_request(env.a.port, head)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:300]
    doc = status(env, "a")
    assert (doc["role"], doc["epoch"]) == ("active", 0)


def test_a_handover_demote_below_the_nodes_epoch_is_refused_and_the_active_stays(
    make_pair: Callable[..., PairEnv],
) -> None:
    env = make_pair(interval_s=60)
    env.a.start()
    env.b.start()
    env.wait_standby_in_sync()
    for node in ("a", "b"):  # to b (epoch 1) and back to a (epoch 2)
        code, rep = run_json(env, node, "switchover")
        assert code == 0 and rep["ok"], rep
    code, body, _ = api(env.a, "POST", "/v1/handover", {"step": "demote", "epoch": 1})
    assert code == 409 and body["error"]["code"] == "stale_epoch", body
    code, body, _ = api(env.a, "POST", "/v1/handover", {"step": "demote", "epoch": 0})
    assert code == 400, body
    doc = status(env, "a")
    assert (doc["role"], doc["epoch"]) == ("active", 2)


def alarms(env: PairEnv, node: str) -> list[dict[str, Any]]:
    r = env.hasync("alarms", "--all", "--json", node=node)
    docs: list[dict[str, Any]] = json.loads(r.stdout or "[]")
    return docs


def test_a_real_fault_right_after_a_switchover_still_raises_45641(make_pair: Callable[..., PairEnv]) -> None:
    """The settling window (no alarm for the role change itself) does not hide a file's fault: a junk file
    on the new active, within that window, raises the alarm; the switchover itself raised none."""
    env = started(make_pair, INTERVAL, unprivileged=True)
    code, rep = run_json(env, "b", "switchover")
    assert code == 0 and rep["ok"], rep
    wait_for(lambda: roles(env) == ("standby", "active"), 20, what="roles swapped")
    assert alarms(env, "a") == [] and alarms(env, "b") == []
    junk = env.dst / "conf" / "sed9Qq1z"
    junk.write_bytes(b"")
    junk.chmod(0)
    env.chown_all()
    found = wait_for(lambda: alarms(env, "a") or alarms(env, "b"), 9, interval=0.2, what="alarm 45641")
    assert any("sed9Qq1z" in json.dumps(a) for a in found), found


def test_the_set_aside_work_survives_later_backup_sets(make_pair: Callable[..., PairEnv]) -> None:
    env = make_pair(interval_s=INTERVAL)
    short_timeouts(env)
    for path in (env.pair.config_a, env.pair.config_b):
        path.write_text(path.read_text().replace("max_copies = 5", "max_copies = 2\nset_period_s = 1"))
    (env.src / "conf" / "f.xml").write_text("v1")
    (env.src / "conf" / "g.xml").write_text("g0")
    env.a.start()
    env.b.start()
    env.wait_standby_in_sync()
    assert env.a.proc is not None
    env.a.proc.send_signal(signal.SIGSTOP)
    try:
        (env.src / "conf" / "f.xml").write_text("a-late")
        code, rep = run_json(env, "b", "switchover", "--force")
        assert code == 0 and rep["ok"], rep
        (env.dst / "conf" / "f.xml").write_text("b-new")
    finally:
        env.a.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: status(env, "a")["role"] == "standby", 30, what="a to yield")
    env.wait_in_sync(30)
    assert b"a-late" in backed_up(env, "a").get("conf/f.xml", [])  # set aside: holds
    sets = env.pair.base / "backup" / "node-a"
    first = {p.name for p in sets.iterdir()}
    n = 0

    def churned() -> bool:
        nonlocal n
        n += 1
        (env.dst / "conf" / "g.xml").write_text(f"g{n}")  # ordinary work on the new active
        wait_for(lambda: (env.src / "conf" / "g.xml").read_text() == f"g{n}", 20, what=f"g{n} on a")
        return len({p.name for p in sets.iterdir()} - first) >= 2

    wait_for(churned, 30, interval=0.3, what="two newer backup sets on a")
    assert b"a-late" in backed_up(env, "a").get("conf/f.xml", []), backed_up(env, "a")


def test_an_old_active_superseded_while_it_starts_becomes_a_working_standby(
    make_pair: Callable[..., PairEnv],
) -> None:
    """The old active's agent was down during a forced switchover; it restarts (its hash cache gone, so
    its first scan takes seconds) and the new active's check reaches it during that scan (the request is
    sent here, with b's epoch and role, so that it surely comes during the scan)."""
    env = make_pair(interval_s=INTERVAL)
    short_timeouts(env)
    (env.src / "conf" / "f.xml").write_text("v1")
    for root in (env.src, env.dst):  # the same big file on both: nothing to copy, seconds to hash
        with open(root / "udf" / "big.bin", "wb") as f:
            f.truncate(1 << 30)
        (root / "udf" / "big.bin").chmod(0o644)
        os.utime(root / "udf" / "big.bin", ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    env.a.start()
    env.b.start()
    wait_for(env.standby_in_sync, 60, interval=0.2, what="b in sync")  # (snapshot() would hash 1 GiB)
    env.a.stop()
    code, rep = run_json(env, "b", "switchover", "--force")
    assert code == 0 and rep["ok"], rep
    shutil.rmtree(state_dir(env, "a") / "manifests")  # a's next scan hashes everything again
    env.a.start(wait=False)
    wait_for(env.a.healthy, 30, interval=0.005, what="a's listener")
    # What the new active's check sends (its epoch and role), while a still scans.
    api(env.a, "GET", "/v1/status?brief=1", headers={"Hasync-Epoch": "1", "Hasync-Role": "active"})
    (env.dst / "conf" / "from-b.xml").write_text("b")
    try:
        wait_for(lambda: (env.src / "conf" / "from-b.xml").exists(), 30, what="the old active to pull")
    except AssertionError:
        doc = status(env, "a")
        raise AssertionError(f"a: role {doc['role']}, epoch {doc['epoch']}, {doc['role_reason']}") from None
    assert status(env, "a")["role"] == "standby"


def test_a_switchover_during_the_standbys_initial_sync_loses_nothing(make_pair: Callable[..., PairEnv]) -> None:
    """The standby has just started and is still copying everything when the switchover is asked."""
    env = make_pair(interval_s=INTERVAL)
    for i in range(400):
        (env.src / "conf" / f"f{i:03d}.xml").write_bytes(bytes([i % 251]) * 65536)
    env.a.start()
    env.b.start(wait=False)
    wait_for(env.b.healthy, 30, interval=0.005, what="b's listener")
    code, rep = run_json(env, "b", "switchover")
    if code == 0:
        assert rep["ok"] and rep["role"] == "active", rep
        wait_for(lambda: roles(env) == ("standby", "active"), 20, what="roles swapped")
        for i in range(400):  # the new active has everything the old one had
            assert (env.dst / "conf" / f"f{i:03d}.xml").read_bytes() == bytes([i % 251]) * 65536
    else:
        assert not rep["ok"] and rep["reason"], rep
        assert roles(env) == ("active", "standby")
    env.wait_in_sync(60)


def test_two_switchovers_at_once_from_both_nodes_leave_one_active(make_pair: Callable[..., PairEnv]) -> None:
    """An operator on each node runs `hasync switchover` at the same moment."""
    env = started(make_pair, INTERVAL)
    out: dict[str, Any] = {}
    barrier = threading.Barrier(2)

    def go(node: str, agent: AgentProc) -> None:
        barrier.wait()
        out[node] = api(agent, "POST", "/v1/switchover", {"force": False})[1]

    threads = [threading.Thread(target=go, args=(n, ag)) for n, ag in (("a", env.a), ("b", env.b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    wait_for(lambda: sorted(roles(env)) == ["active", "standby"], 20, what="exactly one active")
    (env.src if roles(env)[0] == "active" else env.dst).joinpath("conf", "after.xml").write_text("after")
    env.wait_in_sync(30)
