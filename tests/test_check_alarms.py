"""The check and alarm 45641 end to end: two real agents, real stores, real receivers (issue 3)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pairlib import ROOT, PairEnv, wait_for
from receivers import HttpReceiver, SyslogReceiver, free_port_both

INTERVAL = 2.0
# How long to wait for an alarm to be raised or cleared: a deadline for the polling (each poll is a
# `hasync alarms` process, slow on a loaded machine), not a time that is asserted. Where the time
# matters, it is asserted on its own.
WAIT_S = 30.0


def alarms(env: PairEnv, node: str = "b", all_: bool = True) -> list[dict[str, Any]]:
    args = ["alarms", "--json", *(["--all"] if all_ else [])]
    r = env.hasync(*args, node=node)
    assert r.returncode == 0, r.stderr
    return list(json.loads(r.stdout))


def active_alarms(env: PairEnv) -> list[dict[str, Any]]:
    return [a for a in alarms(env) if a["cleared_at"] is None]


def store_line(url: str) -> str:
    return "" if url == "sqlite" else f'\n[alarms]\nstore = "{url}"\n'


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return "sqlite"
    url: str = request.getfixturevalue("pg_schema_url")
    return url


def test_active_agent_down_raises_and_clears(make_pair, store: str) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair(interval_s=INTERVAL, extra=store_line(store))
    (env.src / "conf" / "a.yaml").write_text("a")
    env.a.start()
    env.b.start()
    env.wait_in_sync()
    t_stop = time.monotonic()
    env.a.stop()
    active = wait_for(lambda: active_alarms(env), WAIT_S, what="alarm raised")
    assert time.monotonic() - t_stop <= 2 * INTERVAL + 2.5  # two intervals, plus process start of `alarms`
    (alarm,) = active
    assert alarm["alarm_id"] == 45641 and alarm["severity"] == "Major" and alarm["auto_clear"] is True
    assert alarm["cause"] == "peer_agent_down"
    assert alarm["name"] == "Data Synchronization Exception Between the Active and Standby FlinkServer Nodes"
    assert (alarm["source"], alarm["service_name"], alarm["role_name"], alarm["host_name"]) == (
        "demo-cluster",
        "Flink",
        "FlinkServer",
        "node-b",
    )
    assert "peer_agent_down" in alarm["additional_info"]
    r = env.hasync("check", "--json")
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    assert doc["in_sync"] is False and doc["cause"] == "peer_agent_down" and doc["peer_reachable"] is False
    # Still one alarm after more checks and a manual check.
    time.sleep(INTERVAL * 1.5)
    assert len(active_alarms(env)) == 1

    (env.src / "conf" / "b.yaml").write_text("changed while the active agent was down")
    env.a.start()
    t_start = time.monotonic()  # the active answers again (its own start-up is not the check's time)
    wait_for(lambda: not active_alarms(env), WAIT_S, what="alarm cleared")
    assert time.monotonic() - t_start <= 2 * INTERVAL + 5
    env.wait_in_sync()
    (done,) = alarms(env)
    assert done["fingerprint"] == alarm["fingerprint"] and done["raised_at"] == alarm["raised_at"]
    assert done["cleared_at"] is not None and done["cleared_at"] > done["raised_at"]
    # Seen from the active node: the same single alarm.
    assert [a["fingerprint"] for a in alarms(env, node="a")] == [alarm["fingerprint"]]


def test_wrong_token_raises_auth_failed(make_pair, store: str) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair(interval_s=INTERVAL, extra=store_line(store))
    (env.pair.base / "secrets" / "other.token").write_text("a-different-token\n")
    cfg = env.pair.config_b
    cfg.write_text(cfg.read_text().replace("secrets/pair.token", "secrets/other.token"))
    env.b.token = "a-different-token"
    env.a.start()
    env.b.start()
    (alarm,) = wait_for(lambda: active_alarms(env), WAIT_S, what="alarm raised")
    assert alarm["cause"] == "auth_failed"
    r = env.hasync("check", "--nagios")
    assert r.returncode == 2 and r.stdout.startswith("HASYNC CRITICAL - auth_failed")
    assert "a-different-token" not in r.stdout and "a-different-token" not in json.dumps(alarm)


def test_junk_file_on_active_raises_names_path_and_clears(make_pair, store: str) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair(unprivileged=True, interval_s=INTERVAL, extra=store_line(store))
    (env.src / "conf" / "good.yaml").write_text("ok")
    junk = env.src / "conf" / "sedXyZ12"
    junk.touch()
    junk.chmod(0)
    env.chown_all()
    env.a.start()
    env.b.start()
    (alarm,) = wait_for(lambda: active_alarms(env), WAIT_S, what="alarm raised")
    assert alarm["cause"] == "junk_file"
    assert "conf/sedXyZ12" in alarm["additional_info"]
    doc = json.loads(env.hasync("check", "--json").stdout)
    assert doc["cause"] == "junk_file"
    assert {"dir": "conf", "path": "sedXyZ12"}.items() <= doc["out_of_sync"][0].items()
    junk.unlink()
    wait_for(lambda: not active_alarms(env), WAIT_S, what="alarm cleared")
    assert len(alarms(env)) == 1


@pytest.mark.skipif(not ROOT, reason="mounting a tmpfs needs root (CI runs as root)")
def test_standby_disk_full_raises_disk_full(make_pair, store: str) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair(interval_s=INTERVAL, extra=store_line(store))
    mount = env.pair.data_b
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "hasync-test", str(mount)], check=True)
    try:
        (mount / "conf").mkdir()
        (mount / "udf").mkdir()
        (env.src / "udf" / "big.jar").write_bytes(os.urandom(3 << 20))
        (env.src / "conf" / "small.yaml").write_text("fits")
        env.a.start()
        env.b.start()
        (alarm,) = wait_for(lambda: active_alarms(env), WAIT_S, what="alarm raised")
        assert alarm["cause"] == "disk_full"
        assert "udf/big.jar" in alarm["additional_info"]
        assert (mount / "conf" / "small.yaml").read_text() == "fits"
        # The standby has read the change from the feed but cannot apply it: the active's check must not
        # say lag 0 (the feed's view); it takes the standby's.
        a_check = json.loads(env.hasync("check", "--json", node="a").stdout)
        assert a_check["cause"] == "disk_full" and a_check["lag_s"] > 0, a_check
        # Room again: the alarm clears.
        (env.src / "udf" / "big.jar").unlink()
        wait_for(lambda: not active_alarms(env), WAIT_S, what="alarm cleared")
    finally:
        env.stop()
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_check_json_and_nagios_when_in_sync(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair(interval_s=INTERVAL)
    env.a.start()
    env.b.start()
    env.wait_standby_in_sync()
    doc = json.loads(env.hasync("check", "--json", check=True).stdout)
    assert set(doc) == {"in_sync", "cause", "peer_reachable", "lag_s", "out_of_sync", "checked_at"}
    assert doc["in_sync"] is True and doc["cause"] is None and doc["lag_s"] == 0 and doc["out_of_sync"] == []
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$", doc["checked_at"])
    for node in ("a", "b"):
        r = env.hasync("check", "--nagios", node=node)
        assert r.returncode == 0 and r.stdout.strip() == "HASYNC OK - standby in sync | out_of_sync=0 lag=0.000s"
    # /metrics needs the token, and has the series of SPEC §6.
    import urllib.error
    import urllib.request

    url = f"http://127.0.0.1:{env.pair.port_b}/metrics"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url, timeout=5)
    assert e.value.code == 401
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {env.b.token}"})
    text = urllib.request.urlopen(req, timeout=5).read().decode()
    for series in (
        "hasync_in_sync 1.0",
        "hasync_lag_seconds",
        "hasync_out_of_sync_files 0.0",
        'hasync_alarm_active{alarm_id="45641"} 0.0',
        "hasync_transferred_files_total",
        "hasync_transferred_bytes_total",
        "hasync_check_duration_seconds_count",
    ):
        assert series in text, series


def test_nagios_unknown_on_config_error(tmp_path: Path) -> None:
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "hasync", "check", "--nagios", "-c", str(tmp_path / "none.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 3 and r.stdout.startswith("HASYNC UNKNOWN - ")


def test_alarm_survives_standby_kill9_and_clears_once(make_pair, store: str) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair(interval_s=INTERVAL, extra=store_line(store))
    env.a.start()
    env.b.start()
    env.a.stop()
    (alarm,) = wait_for(lambda: active_alarms(env), WAIT_S, what="alarm raised")
    env.b.kill9()
    env.b.start()
    time.sleep(INTERVAL * 1.5)
    assert [a["raised_at"] for a in active_alarms(env)] == [alarm["raised_at"]]  # no duplicate after restart
    env.a.start()
    wait_for(lambda: not active_alarms(env), WAIT_S, what="alarm cleared")
    assert len(alarms(env)) == 1


# -- notifications ---------------------------------------------------------------------------------


@pytest.fixture
def receivers() -> Iterator[tuple[HttpReceiver, SyslogReceiver]]:
    http = HttpReceiver(free_port_both()).start()
    syslog = SyslogReceiver(free_port_both())
    yield http, syslog
    http.close()
    syslog.close()


def notify_lines(http: HttpReceiver, syslog: SyslogReceiver) -> str:
    return f"""
[alarms]
resend_s = 1
[[alarms.notify]]
kind = "webhook"
url = "http://127.0.0.1:{http.port}/hook"
[[alarms.notify]]
kind = "alertmanager"
url = "http://127.0.0.1:{http.port}"
[[alarms.notify]]
kind = "syslog"
url = "syslog+udp://127.0.0.1:{syslog.port}"
[[alarms.notify]]
kind = "syslog"
url = "syslog+tcp://127.0.0.1:{syslog.port}"
"""


def alertmanager_resolved(http: HttpReceiver) -> bool:
    """Alertmanager has been told the alert is over (its last post has endsAt in the past)."""
    alerts = [a for body in http.bodies("/api/v2/alerts") for a in body]
    if not alerts or not alerts[-1].get("endsAt"):
        return False
    return datetime.fromisoformat(alerts[-1]["endsAt"].replace("Z", "+00:00")) <= datetime.now(UTC)


def assert_one_raise_one_clear(http: HttpReceiver, syslog: SyslogReceiver, fingerprint: str, udp: bool = True) -> None:
    hooks = http.bodies("/hook")
    assert [h["event"] for h in hooks] == ["raise", "clear"], hooks
    assert {h["alarm"]["fingerprint"] for h in hooks} == {fingerprint}
    for proto in ("udp", "tcp") if udp else ("tcp",):
        msgs = [m for p, m in syslog.messages if p == proto]
        assert len(msgs) == 2, (proto, msgs)
        assert all(re.match(r"<\d+>1 \S+ \S+ hasync \S+ ALM45641 ", m) for m in msgs), msgs
        assert "raise" in msgs[0].lower() and "clear" in msgs[1].lower(), msgs
    alerts = [a for body in http.bodies("/api/v2/alerts") for a in body]
    assert alerts, "Alertmanager got nothing"
    assert len({json.dumps(a["labels"], sort_keys=True) for a in alerts}) == 1  # one alert, one label set
    labels = alerts[0]["labels"]
    assert labels["alertname"] and labels["alarm_id"] == "45641" and labels["severity"] == "Major"
    assert {labels["source"], labels["service_name"], labels["role_name"], labels["host_name"]} == {
        "demo-cluster",
        "Flink",
        "FlinkServer",
        "node-b",
    }
    last = alerts[-1]
    assert last["endsAt"] and last["endsAt"] >= alerts[0]["startsAt"]
    assert datetime.fromisoformat(last["endsAt"].replace("Z", "+00:00")) <= datetime.now(UTC)  # resolved


def test_notifications_once_even_when_both_nodes_see_the_fault(make_pair, receivers) -> None:  # type: ignore[no-untyped-def]
    http, syslog = receivers
    env: PairEnv = make_pair(unprivileged=True, interval_s=INTERVAL, extra=notify_lines(http, syslog))
    junk = env.src / "conf" / "sedQ"
    junk.touch()
    junk.chmod(0)
    env.chown_all()
    env.a.start()
    env.b.start()
    (alarm,) = wait_for(lambda: active_alarms(env), WAIT_S, what="alarm raised")
    # The active sees the junk file too (its own check reports it); still one raise downstream.
    a_check = json.loads(env.hasync("check", "--json", node="a").stdout)
    assert a_check["cause"] == "junk_file"
    junk.unlink()
    wait_for(lambda: not active_alarms(env), WAIT_S, what="alarm cleared")
    wait_for(
        lambda: len(http.bodies("/hook")) >= 2 and len(syslog.messages) >= 4 and alertmanager_resolved(http),
        20,
        what="clear delivered",
    )
    time.sleep(3)  # nothing more may arrive but Alertmanager re-sends
    assert_one_raise_one_clear(http, syslog, alarm["fingerprint"])


def test_notifications_delivered_when_the_receiver_comes_back(make_pair, receivers) -> None:  # type: ignore[no-untyped-def]
    http, syslog = receivers
    http.stop()
    syslog_port = syslog.port
    syslog.close()
    env: PairEnv = make_pair(interval_s=INTERVAL, extra=notify_lines(http, syslog))
    env.a.start()
    env.b.start()
    env.a.stop()
    (alarm,) = wait_for(lambda: active_alarms(env), WAIT_S, what="alarm raised")
    env.a.start()
    wait_for(lambda: not active_alarms(env), WAIT_S, what="alarm cleared")
    # Receivers come back after both events happened: both are delivered, in order, once.
    http.start()
    syslog2 = SyslogReceiver(syslog_port)
    try:
        # Each notifier retries on its own backoff, so wait for all three, not the first two. Count the TCP
        # messages only (what is asserted): a late UDP clear could otherwise stand in for the TCP clear.
        wait_for(
            lambda: (
                len(http.bodies("/hook")) >= 2
                and len([m for p, m in syslog2.messages if p == "tcp"]) >= 2
                and alertmanager_resolved(http)
            ),
            60,
            what="late delivery",
        )
        time.sleep(3)
        # Syslog over UDP has no delivery receipt: what was sent while nobody listened is lost
        # (docs/operations.md). Over TCP both messages arrive once, in order.
        assert_one_raise_one_clear(http, syslog2, alarm["fingerprint"], udp=False)
    finally:
        syslog2.close()
