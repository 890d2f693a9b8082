"""The monitoring of docs/operations.md, for real (issue 10, defects 6-8 and the documented configs):
Prometheus scrapes two real agents and evaluates the documented rules, Alertmanager routes them and
the agents' alarm (with its generatorURL) by the documented route, rsyslog writes the alarm events
with the documented template."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path

from hasync.alarms import rfc5424
from pairlib import PairEnv, wait_for
from realprogs import alertmanager, doc_block, program, prometheus, rsyslog
from receivers import HttpReceiver, free_port_both

INTERVAL = 1.0


def test_syslog_message_says_the_cause_once() -> None:
    alarm = {
        "alarm_id": 45641,
        "name": "Data Synchronization Exception Between the Active and Standby FlinkServer Nodes",
        "severity": "Major",
        "cause": "junk_file",
        "additional_info": "cause=junk_file; paths: conf/sedXyZ12; cannot be read on the active: Permission denied",
        "raised_at": "2026-11-25T09:55:55.589+00:00",
    }
    msg = rfc5424.format_event("raise", alarm, hostname="node-b").decode()
    text = msg.split("\ufeff", 1)[1]
    assert text == (
        "ALM-45641 raised: Data Synchronization Exception Between the Active and Standby FlinkServer Nodes; "
        "cause=junk_file; paths: conf/sedXyZ12; cannot be read on the active: Permission denied"
    )
    bare = rfc5424.format_event("raise", {**alarm, "additional_info": ""}, hostname="node-b").decode()
    assert bare.endswith("FlinkServer Nodes; cause=junk_file")


def test_rsyslog_writes_each_event_once_with_the_cause_once(make_pair, base: Path) -> None:  # type: ignore[no-untyped-def]
    port = free_port_both()
    out = base / "rsyslog" / "hasync-alarms.log"
    config = doc_block("hasync-rsyslog.conf").replace('port="514"', f'port="{port}" address="127.0.0.1"')
    config = config.replace("/var/log/hasync-alarms.log", str(out))
    extra = f"""
[[alarms.notify]]
kind = "syslog"
url = "syslog+udp://127.0.0.1:{port}"
[[alarms.notify]]
kind = "syslog"
url = "syslog+tcp://127.0.0.1:{port}"
"""
    with rsyslog(base / "rsyslog", config, port):
        env: PairEnv = make_pair(interval_s=INTERVAL, extra=extra)
        env.a.start()
        env.b.start()
        env.wait_in_sync()

        def lines() -> list[str]:
            return out.read_text(errors="replace").splitlines() if out.exists() else []

        env.a.stop()  # the standby raises peer_agent_down
        wait_for(lambda: len(lines()) >= 2, 20, what="the raise, over UDP and TCP, in the file")
        env.a.start()  # and clears it
        wait_for(lambda: len(lines()) >= 4, 20, what="the clear, over UDP and TCP, in the file")
        time.sleep(1)  # nothing more arrives
        got = lines()
        assert len(got) == 4, got
        assert sorted(" raised: " in ln for ln in got) == [False, False, True, True], got
        for ln in got:
            assert ln.count("cause=") == 1 and "cause=peer_agent_down" in ln, ln
            assert " node-b ALM-45641 " in ln and "\ufeff" not in ln, ln
            assert ln.rsplit(" fingerprint=", 1)[1] != "-", ln


def test_prometheus_rules_and_alertmanager_route_for_real(make_pair, base: Path) -> None:  # type: ignore[no-untyped-def]
    hook = HttpReceiver(free_port_both()).start()
    rules_doc = doc_block("hasync-rules.yml")
    (base / "hasync-rules.yml").write_text(rules_doc)
    check = subprocess.run([program("promtool"), "check", "rules", str(base / "hasync-rules.yml")], capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # The same rules, with the durations of a test: no `for`, thresholds in seconds.
    fast = rules_doc
    for old, new in (("for: 5m", "for: 0s"), ("for: 1m", "for: 0s"), ("> 300", "> 2"), ("> 900", "> 6")):
        assert fast.count(old) == 1, old
        fast = fast.replace(old, new)
    (base / "fast-rules.yml").write_text(fast)

    am_config = doc_block("alertmanager.yml").replace(
        "http://127.0.0.1:5001/hasync", f"http://127.0.0.1:{hook.port}/am"
    )
    am_config = am_config.replace("group_wait: 30s", "group_wait: 0s").replace(
        "group_interval: 5m", "group_interval: 1s"
    )
    try:
        with alertmanager(base / "alertmanager", am_config) as am:
            extra = f"""
[alarms]
resend_s = 1
[[alarms.notify]]
kind = "alertmanager"
url = "{am.url}"
"""
            env: PairEnv = make_pair(interval_s=INTERVAL, extra=extra)
            cfg_a = env.pair.config_a
            check_line = f"[check]\ninterval_s = {INTERVAL}\n"
            cfg_a.write_text(cfg_a.read_text().replace(check_line, check_line + "takeover_after = 1000\n"))
            (env.src / "conf" / "a.yaml").write_text("a")
            env.a.start()
            env.b.start()
            env.wait_in_sync()
            target_a, target_b = f"127.0.0.1:{env.pair.port_a}", f"127.0.0.1:{env.pair.port_b}"
            prom_config = doc_block("prometheus.yml")
            for old, new in (
                ("15s", "1s"),
                ("hasync-rules.yml", str(base / "fast-rules.yml")),
                ("127.0.0.1:9093", f"127.0.0.1:{am.port}"),
                ("/etc/prometheus/hasync.token", str(env.pair.base / "secrets" / "pair.token")),
                ('"10.0.0.11:28443", "10.0.0.12:28443"', f'"{target_a}", "{target_b}"'),
            ):
                assert old in prom_config, old
                prom_config = prom_config.replace(old, new)
            with prometheus(base / "prometheus", prom_config) as prom:
                # In sync: both scraped with the token, the new series there, nothing fires.
                wait_for(
                    lambda: sorted(t["health"] for t in prom.targets()) == ["up", "up"], 20, what="both targets up"
                )
                roles = wait_for(lambda: prom.query("hasync_role"), 10, what="hasync_role")
                assert {(r["metric"]["node"], r["metric"]["role"]) for r in roles} == {
                    ("node-a", "active"),
                    ("node-b", "standby"),
                }
                wait_for(
                    lambda: len(prom.query("hasync_last_sync_timestamp_seconds")) == 2, 10, what="last sync series"
                )
                t0 = time.time()
                wait_for(lambda: prom.last_evaluation() > t0 + 1, 10, what="the rules evaluated")
                assert prom.query("ALERTS") == []

                # The active's agent down: the standby raises the alarm; the rules fire.
                env.a.stop()

                def am_alert(name: str) -> dict[str, object] | None:
                    return next((x for x in am.alerts() if x["labels"]["alertname"] == name), None)

                alarm = wait_for(lambda: am_alert("hasync_45641"), 15, what="the agent's alert in Alertmanager")
                assert alarm["generatorURL"] == f"http://{target_b}/v1/status", alarm
                assert [r["name"] for r in alarm["receivers"]] == ["hasync-oncall"], alarm
                wait_for(
                    lambda: {"HasyncAlarm45641", "HasyncAgentDown", "HasyncNotInSync"} <= prom.firing(),
                    20,
                    what="rules firing",
                )
                assert "HasyncLagHigh" not in prom.firing()  # the standby's lag is unknown (NaN): no alert
                (down,) = [a for a in prom.alerts() if a["labels"]["alertname"] == "HasyncAgentDown"]
                assert (down["labels"]["node"], down["labels"]["role"], down["labels"]["instance"]) == (
                    "node-a",
                    "active",
                    target_a,
                ), down
                routed = wait_for(lambda: am_alert("HasyncAgentDown"), 15, what="the rule's alert in Alertmanager")
                assert [r["name"] for r in routed["receivers"]] == ["hasync-oncall"], routed

                # Back: the alarm clears; Alertmanager resolves it and tells its receiver.
                env.a.start()
                wait_for(lambda: am_alert("hasync_45641") is None, 20, what="alarm resolved in Alertmanager")
                wait_for(
                    lambda: any(
                        b["status"] == "resolved"
                        and any(a["labels"]["alertname"] == "hasync_45641" for a in b["alerts"])
                        for b in hook.bodies("/am")
                    ),
                    20,
                    what="Alertmanager's resolved notification",
                )
                wait_for(lambda: "HasyncAlarm45641" not in prom.firing(), 20, what="alarm rule resolved")

                # The standby's agent down and a change on the active: the active's lag grows. (The
                # active measures it from the standby's last change-feed request: have one first.)
                (env.src / "conf" / "b.yaml").write_text("b")
                env.wait_in_sync()
                env.b.stop()
                (env.src / "conf" / "late.yaml").write_text("written while the standby is down")
                # (The standby's catch-up after the active's outage may have fired it there too: that
                # lag was real, as old as the outage.)
                wait_for(
                    lambda: any(
                        a["labels"]["alertname"] == "HasyncLagHigh"
                        and a["state"] == "firing"
                        and a["labels"]["instance"] == target_a
                        for a in prom.alerts()
                    ),
                    20,
                    what="lag rule firing on the active",
                )
    finally:
        hook.close()


def test_metrics_last_sync_and_role(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair(interval_s=INTERVAL)
    env.a.start()
    env.b.start()
    env.wait_in_sync()

    def metrics(port: int) -> str:
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {env.a.token}"}
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            return str(r.read().decode())

    def last_sync(port: int) -> float | None:
        for line in metrics(port).splitlines():
            if line.startswith("hasync_last_sync_timestamp_seconds "):
                return float(line.split()[1])
        return None

    t = wait_for(lambda: last_sync(env.pair.port_a), 10, what="last sync on the active")
    assert abs(t - time.time()) < 30
    assert 'hasync_role{node="node-a",role="active"} 1.0' in metrics(env.pair.port_a)
    assert 'hasync_role{node="node-b",role="standby"} 1.0' in metrics(env.pair.port_b)
    env.b.stop()
    # The peer is down: the lag may be unknown, the last sync time stays and ages.
    wait_for(lambda: "hasync_in_sync 0.0" in metrics(env.pair.port_a), 10, what="out of sync")
    frozen = last_sync(env.pair.port_a)
    assert frozen is not None
    time.sleep(2 * INTERVAL)
    assert last_sync(env.pair.port_a) == frozen
