"""An alarm the active took over always clears, and carries the standby's hostname where the active
knows it (issue 10, defect 1): two real agents, a real Alertmanager."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pairlib import PairEnv, wait_for
from realprogs import Alertmanager, alertmanager
from receivers import HttpReceiver, free_port_both

INTERVAL = 1.0
STANDBY_HOST = "standby-host-b"  # the standby's [node] hostname, unlike its node name (node-b)


def all_alarms(env: PairEnv, node: str) -> list[dict[str, Any]]:
    r = env.hasync("alarms", "--json", "--all", node=node)
    assert r.returncode == 0, r.stderr
    return list(json.loads(r.stdout))


def store_alarms(env: PairEnv, node: str) -> list[dict[str, Any]]:
    """The alarms in `node`'s own store (the agent's /v1/alarms without the peer's)."""
    import urllib.request

    port = env.pair.port_a if node == "a" else env.pair.port_b
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/alarms?all=1", headers={"Authorization": f"Bearer {env.a.token}"}
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        return list(json.loads(r.read()))


@pytest.fixture
def am(base: Path) -> Iterator[tuple[Alertmanager, HttpReceiver]]:
    hook = HttpReceiver(free_port_both()).start()
    config = f"""route:
  receiver: hook
  group_by: [alertname, host_name]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: http://127.0.0.1:{hook.port}/am
        send_resolved: true
"""
    with alertmanager(base / "alertmanager", config) as a:
        yield a, hook
    hook.close()


def takeover_pair(make_pair: Any, am: Alertmanager, peer_hostname: str | None = None) -> PairEnv:
    extra = f"""
[alarms]
resend_s = 1
[[alarms.notify]]
kind = "alertmanager"
url = "{am.url}"
"""
    env: PairEnv = make_pair(interval_s=INTERVAL, extra=extra)
    a, b = env.pair.config_a, env.pair.config_b
    check = f"[check]\ninterval_s = {INTERVAL}\n"
    a.write_text(a.read_text().replace(check, check + "takeover_after = 2\n"))
    if peer_hostname is not None:
        a.write_text(
            a.read_text().replace('address = "127.0.0.1', f'hostname = "{peer_hostname}"\naddress = "127.0.0.1')
        )
    b.write_text(b.read_text().replace('hostname = "node-b"', f'hostname = "{STANDBY_HOST}"', 1))
    (env.src / "conf" / "a.yaml").write_text("a")
    return env


def resolved_by_alertmanager(hook: HttpReceiver, host: str) -> bool:
    """Alertmanager sent its receiver the resolve of the alert of `host`."""
    return any(
        body.get("status") == "resolved" and any(a["labels"].get("host_name") == host for a in body["alerts"])
        for body in hook.bodies("/am")
    )


def test_taken_over_alarm_clears_although_the_hostname_was_learned_after(make_pair, am) -> None:  # type: ignore[no-untyped-def]
    manager, hook = am
    env = takeover_pair(make_pair, manager)
    env.a.start()  # the standby was never reachable since: the active knows no hostname but the peer's name
    (alarm,) = wait_for(lambda: [x for x in store_alarms(env, "a") if x["cleared_at"] is None], 15, what="takeover")
    assert alarm["cause"] == "peer_agent_down" and alarm["host_name"] == "node-b"
    (alert,) = wait_for(manager.alerts, 10, what="alert in Alertmanager")
    assert alert["labels"]["host_name"] == "node-b"
    assert alert["generatorURL"] == f"http://127.0.0.1:{env.pair.port_a}/v1/status"

    env.b.start()
    env.wait_in_sync()
    # The active learned the standby's real hostname meanwhile; still it clears the alarm it raised.
    wait_for(lambda: all(x["cleared_at"] for x in store_alarms(env, "a")), 15, what="takeover alarm cleared")
    assert [x["fingerprint"] for x in store_alarms(env, "a")] == [alarm["fingerprint"]]
    assert store_alarms(env, "b") == []  # the standby left the alarm to the active: no second one
    wait_for(lambda: manager.alerts() == [], 15, what="alert resolved in Alertmanager")
    wait_for(lambda: resolved_by_alertmanager(hook, "node-b"), 15, what="Alertmanager's resolved notification")
    time.sleep(3 * INTERVAL)  # later checks in sync raise nothing new
    assert [x["cleared_at"] is not None for x in all_alarms(env, "a")] == [True]


def test_takeover_uses_the_learned_standby_hostname_after_a_restart(make_pair, am) -> None:  # type: ignore[no-untyped-def]
    manager, hook = am
    env = takeover_pair(make_pair, manager)
    env.a.start()
    env.b.start()
    env.wait_in_sync()
    wait_for(lambda: (env.pair.base / "state" / "node-a" / "peer_hostname").exists(), 10, what="hostname kept")
    env.b.stop()
    env.a.stop()
    env.a.start()  # restarted while the standby is down: it knows the hostname from its state dir
    (alarm,) = wait_for(lambda: [x for x in store_alarms(env, "a") if x["cleared_at"] is None], 15, what="takeover")
    assert alarm["host_name"] == STANDBY_HOST
    (alert,) = wait_for(manager.alerts, 10, what="alert in Alertmanager")
    assert alert["labels"]["host_name"] == STANDBY_HOST
    env.b.start()
    wait_for(lambda: all(x["cleared_at"] for x in store_alarms(env, "a")), 15, what="takeover alarm cleared")
    assert store_alarms(env, "b") == []
    wait_for(lambda: resolved_by_alertmanager(hook, STANDBY_HOST), 15, what="Alertmanager's resolved notification")
