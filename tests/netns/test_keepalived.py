"""keepalived for real (issue 13): two hosts (network namespaces joined by a veth pair), Debian's
keepalived in each with VRRP (unicast) on the veth, configured from the shipped example
(packaging/keepalived/keepalived.conf.example, rendered with this test's addresses and paths) and
running the shipped scripts: hasync-notify (notify_master/backup/fault/stop) and
hasync-vrrp-check (the vrrp_script). hasync runs in external mode, node-a the initial active.

(a) Stopping keepalived on the MASTER moves the VIP to the other host, and hasync's roles follow.
(b) A standby that is out of sync (a junk file on the active) does not take the VIP when the MASTER
    goes away; once the junk file is gone it does, and becomes active.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hamanagers import KEEPALIVED_EXAMPLE, NOTIFY, VRRP_CHECK, external_mode, hasync_command, status_role
from hasync.demo import seed
from netns.nslib import ADDR, VETH, NsPair
from pairlib import PLAIN_USER, wait_for
from realprogs import program

VIP = "10.231.0.100"
PRIORITY = {"a": 100, "b": 90}
# keepalived's master-down interval with advert_int 1 is 3 s plus a skew under 1 s: a BACKUP that
# may take over has done so by then. The window in which (b) watches that nothing takes the VIP.
TAKEOVER_S = 3 * 1 + 1
WATCH_S = TAKEOVER_S + 3


def render(node: str, pair: NsPair, hasync: Path, statefile: Path) -> str:
    """The shipped example, as the operator adapts it for `node` (the lines it marks), with this
    test's interface, addresses, user and paths."""
    peer = "b" if node == "a" else "a"
    text = KEEPALIVED_EXAMPLE.read_text()
    cfg = pair.agent(node).config
    subs = [
        ("router_id hasync_node_a", f"router_id hasync_node_{node}", 1),
        ("script_user omm", f"script_user {PLAIN_USER}", 1),
        ("interface eth0", f"interface {VETH[node]}", 1),
        ("priority 100", f"priority {PRIORITY[node]}", 1),
        ("unicast_src_ip 192.0.2.11", f"unicast_src_ip {ADDR[node]}", 1),
        ("        192.0.2.12\n", f"        {ADDR[peer]}\n", 1),
        ("192.0.2.100/24 dev eth0", f"{VIP}/24 dev {VETH[node]}", 1),
        ("/usr/local/sbin/hasync-vrrp-check", str(VRRP_CHECK), 1),
        ("/usr/local/sbin/hasync-notify", f"{NOTIFY} -s {statefile}", 4),
        ("-c /etc/hasync/hasync.toml", f"-b {hasync} -c {cfg}", 5),
    ]
    for old, new, count in subs:
        assert text.count(old) == count, f"{KEEPALIVED_EXAMPLE.name}: expected {count} x {old!r}"
        text = text.replace(old, new)
    return text


@dataclass
class Keepalived:
    node: str
    pair: NsPair
    conf: Path
    statefile: Path
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.conf.with_suffix(".log")

    def start(self) -> None:
        d = self.conf.parent
        pids = ["-p", str(d / f"ka-{self.node}.pid"), "-r", str(d / f"ka-{self.node}-vrrp.pid")]
        argv = [program("keepalived"), "--dont-fork", "--log-console", "--log-detail", "--vrrp", "--no-syslog"]
        argv += ["-f", str(self.conf), *pids]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.pair.ns[self.node].argv(argv), stdout=out, stderr=out)

    def stop(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, self.output()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(15)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def state(self) -> str:
        """The last keepalived state hasync-notify recorded ("" before the first notification)."""
        try:
            return self.statefile.read_text().strip()
        except FileNotFoundError:
            return ""


@dataclass
class HaPair:
    pair: NsPair
    ka: dict[str, Keepalived]

    def has_vip(self, node: str) -> bool:
        out = subprocess.run(
            ["ip", "-n", self.pair.ns[node].name, "-o", "-4", "addr", "show", "dev", VETH[node]],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return f" {VIP}/24 " in out

    def role(self, node: str) -> str | None:
        """`role` of `hasync status --json` on that host."""
        return status_role(self.pair.hasync("status", "--json", node=node, timeout=60).stdout)

    def vip_at(self) -> list[str]:
        return [n for n in ("a", "b") if self.has_vip(n)]

    def why(self) -> str:
        return "".join(f"\n--- keepalived node-{n}:\n{k.output()}" for n, k in self.ka.items()) + (
            f"\n--- node-a:\n{self.pair.a.output()}\n--- node-b:\n{self.pair.b.output()}"
        )

    def wait(self, pred: Callable[[], object], timeout: float, what: str) -> None:
        try:
            wait_for(pred, timeout, interval=0.1, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}{self.why()}") from None


@pytest.fixture
def ha_pair(netns_pair: Callable[..., NsPair]) -> Iterator[HaPair]:
    """A pair in external mode (node-a the initial active), in sync, agents as a plain user; keepalived
    configured (not started) in both hosts."""
    program("keepalived")
    pair = netns_pair(unprivileged=True)
    for agent in (pair.a, pair.b):
        external_mode(agent.config, active="node-a")
    hasync = hasync_command()
    ka = {}
    for node in ("a", "b"):
        conf = pair.base / f"keepalived-{node}.conf"
        statefile = pair.base / f"keepalived-{node}.state"
        conf.write_text(render(node, pair, hasync, statefile))
        ka[node] = Keepalived(node, pair, conf, statefile)
    seed(pair.src)
    pair.chown_all()
    pair.start()
    pair.wait_identical(60)
    ha = HaPair(pair, ka)
    try:
        yield ha
    finally:
        for k in ka.values():
            k.kill()
        shutil.rmtree(hasync.parent, ignore_errors=True)


def start_master_a(ha: HaPair) -> None:
    """keepalived on node-a first: it becomes MASTER (its notify_master keeps it active); then node-b's,
    which stays BACKUP behind it."""
    ha.ka["a"].start()
    ha.wait(lambda: ha.vip_at() == ["a"] and ha.ka["a"].state() == "MASTER", 30, "the VIP on node-a")
    assert ha.role("a") == "active" and ha.role("b") == "standby"
    ha.ka["b"].start()


def test_a_stopping_keepalived_on_the_master_moves_the_vip_and_the_roles(
    ha_pair: HaPair, figures: dict[str, object]
) -> None:
    ha = ha_pair
    start_master_a(ha)
    ha.wait(lambda: ha.ka["b"].state() == "BACKUP", 30, "node-b's keepalived BACKUP")
    assert ha.vip_at() == ["a"]

    t0 = time.monotonic()
    ha.ka["a"].stop()  # notify_stop on node-a; node-b stops hearing adverts
    ha.wait(lambda: ha.vip_at() == ["b"], 20, "the VIP to move to node-b")
    figures["vip_moved_s"] = time.monotonic() - t0
    ha.wait(lambda: ha.role("b") == "active" and ha.role("a") == "standby", 30, "the roles to follow the VIP")
    figures["roles_followed_s"] = time.monotonic() - t0
    assert ha.ka["a"].state() == "STOP" and ha.ka["b"].state() == "MASTER"

    # The roles really swapped: a file written on the new active reaches the old one.
    new = ha.pair.dst / "conf" / "written-on-the-new-active.yaml"
    new.write_text("after the VIP moved\n")
    ha.pair.chown_all()
    ha.wait(lambda: (ha.pair.src / "conf" / new.name).exists(), 30, "the new active's file on node-a")


def test_b_an_out_of_sync_standby_does_not_take_the_vip(ha_pair: HaPair, figures: dict[str, object]) -> None:
    ha = ha_pair
    pair = ha.pair
    junk = pair.src / "conf" / "sed123"  # what a crashed `sed -i` leaves: size 0, mode 000, on the active
    junk.touch()
    junk.chmod(0)
    pair.chown_all()
    ha.wait(
        lambda: pair.hasync("check", "--failover", node="b").returncode == 1,
        30,
        "node-b's failover verdict to be 'not safe'",
    )
    start_master_a(ha)
    # node-b's vrrp_script fails: keepalived puts it in FAULT (hasync-notify records it).
    ha.wait(lambda: ha.ka["b"].state() == "FAULT", 30, "node-b's keepalived FAULT")

    ha.ka["a"].stop()
    t0 = time.monotonic()
    # Past keepalived's take-over time nobody holds the VIP and node-b is still standby.
    while time.monotonic() - t0 < WATCH_S:
        assert ha.vip_at() == [], f"node-b took the VIP while out of sync{ha.why()}"
        time.sleep(0.1)
    assert ha.role("b") == "standby" and ha.role("a") == "active"
    assert ha.ka["b"].state() == "FAULT"

    # The repair: the junk file removed, node-b's verdict becomes safe, it takes the VIP and the role.
    t1 = time.monotonic()
    junk.unlink()
    ha.wait(lambda: ha.vip_at() == ["b"], 40, "node-b to take the VIP once in sync")
    ha.wait(lambda: ha.role("b") == "active" and ha.role("a") == "standby", 30, "node-b active")
    figures["takeover_after_fix_s"] = time.monotonic() - t1
