"""Notifiers and the outbox dispatcher against small real receivers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from hasync.alarms import rfc5424
from hasync.alarms.backends import open_store
from hasync.alarms.model import Event, Identity, OutboxItem
from hasync.alarms.notify import (
    ALERTNAME,
    AlertmanagerNotifier,
    Dispatcher,
    Notifier,
    NotifyError,
    SyslogNotifier,
    WebhookNotifier,
    build_notifiers,
)
from hasync.alarms.store import AlarmStore
from hasync.config import NotifySection
from hasync.errors import Cause, ConfigError
from hasync.urls import facility_code

from .conftest import Stores
from .receivers import (
    FakeClock,
    HttpReceiver,
    SyslogTcpReceiver,
    SyslogUdpReceiver,
    free_port,
    parse_rfc5424,
    wait_for,
)

IDENT = Identity("cluster-1", "Flink", "FlinkServer", "node-b")
FP = IDENT.fingerprint
LABELS = {"alertname", "alarm_id", "severity", "source", "service_name", "role_name", "host_name"}


def now() -> datetime:
    return datetime.now(UTC)


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro_fn(), 60))


def dispatcher(store: AlarmStore, *notifiers: Notifier, clock: FakeClock | None = None) -> Dispatcher:
    return Dispatcher(store, notifiers, clock=clock or FakeClock(), backoff_initial_s=5, poll_s=0.05)


async def raise_(store: AlarmStore, notifier: Notifier, cause: Cause = Cause.PEER_AGENT_DOWN) -> None:
    await asyncio.to_thread(store.raise_alarm, IDENT, cause, f"cause={cause} conf/a.yaml", now(), notify=[notifier.key])


async def clear(store: AlarmStore, notifier: Notifier) -> None:
    assert await asyncio.to_thread(store.clear, FP, now(), notify=[notifier.key]) is not None


# -- webhook -------------------------------------------------------------


def test_webhook_gets_one_raise_and_one_clear(stores: Stores) -> None:
    store = stores.open()

    async def main() -> None:
        rx = HttpReceiver()
        await rx.start()
        hook = WebhookNotifier(rx.url + "/hooks/alarm")
        d = dispatcher(store, hook)
        await raise_(store, hook)
        assert await d.flush_once() == 1
        await raise_(store, hook, cause=Cause.JUNK_FILE)  # still active: nothing new to say
        await clear(store, hook)
        assert await d.flush_once() == 1
        assert await d.flush_once() == 0
        await rx.stop()
        assert [(r.path, r.body["event"]) for r in rx.requests] == [
            ("/hooks/alarm", "raise"),
            ("/hooks/alarm", "clear"),
        ]
        raised, cleared = (r.body["alarm"] for r in rx.requests)
        assert set(rx.requests[0].body) == {"event", "alarm"}
        assert raised["fingerprint"] == cleared["fingerprint"] == FP
        assert raised["cleared_at"] is None and cleared["cleared_at"] is not None
        assert cleared == store.history()[0].to_json()
        assert rx.requests[0].headers["Idempotency-Key"].startswith(FP)
        assert store.pending() == []

    run(main)


def test_webhook_down_during_the_raise_gets_it_after_a_restart(stores: Stores) -> None:
    async def main() -> None:
        rx = HttpReceiver()  # not started: connection refused
        hook = WebhookNotifier(rx.url)
        clock = FakeClock()
        store = stores.open()
        d = dispatcher(store, hook, clock=clock)
        await raise_(store, hook)
        assert await d.flush_once() == 0
        (item,) = store.pending()
        assert item.attempts == 1 and item.last_error and "127.0.0.1" in item.last_error
        clock.advance(1)
        assert await d.flush_once() == 0  # backing off: not tried again yet
        assert store.pending()[0].attempts == 1
        store.close()  # the agent restarts while the receiver is down

        store = stores.open()
        await rx.start()
        clock.advance(60)
        d = dispatcher(store, hook, clock=clock)
        assert await d.flush_once() == 1
        await clear(store, hook)
        assert await d.flush_once() == 1
        await rx.stop()
        assert [r.body["event"] for r in rx.requests] == ["raise", "clear"]

    run(main)


def test_raise_and_clear_queued_while_down_arrive_in_order(tmp_path: Path) -> None:
    store = open_store("sqlite", tmp_path)

    async def main() -> None:
        rx = HttpReceiver()
        hook = WebhookNotifier(rx.url)
        clock = FakeClock()
        d = dispatcher(store, hook, clock=clock)
        await raise_(store, hook)
        await clear(store, hook)
        assert await d.flush_once() == 0
        assert [i.attempts for i in store.pending()] == [1, 0]  # the clear waits behind its raise
        await rx.start()
        clock.advance(3600)
        assert await d.flush_once() == 2
        await rx.stop()
        assert [r.body["event"] for r in rx.requests] == ["raise", "clear"]

    run(main)
    store.close()


def test_receiver_error_status_is_retried_with_backoff(sqlite_store: AlarmStore) -> None:
    async def main() -> None:
        rx = HttpReceiver(status=503)
        await rx.start()
        hook = WebhookNotifier(rx.url)
        clock = FakeClock()
        d = dispatcher(sqlite_store, hook, clock=clock)
        await raise_(sqlite_store, hook)
        waits = []
        for _ in range(4):
            assert await d.flush_once() == 0
            (item,) = sqlite_store.pending()
            assert item.last_error is not None and "HTTP 503" in item.last_error
            waits.append((item.next_try_at - clock()).total_seconds())
            clock.advance_to(item.next_try_at)
        rx.status = 200
        assert await d.flush_once() == 1
        await rx.stop()
        # 5 s doubling, with jitter
        for wait, base in zip(waits, (5, 10, 20, 40), strict=True):
            assert base * 0.85 <= wait <= base * 1.15
        assert len(rx.requests) == 5

    run(main)


def test_both_nodes_detecting_the_fault_make_one_message(stores: Stores) -> None:
    # Two agents sharing one store (PostgreSQL in scale-out) see the same fault at the same time.
    node_a, node_b = stores.open(), stores.open()

    async def main() -> None:
        rx = HttpReceiver()
        await rx.start()
        hook = WebhookNotifier(rx.url)
        results = await asyncio.gather(
            asyncio.to_thread(node_a.raise_alarm, IDENT, Cause.PEER_AGENT_DOWN, "seen by a", now(), notify=[hook.key]),
            asyncio.to_thread(node_b.raise_alarm, IDENT, Cause.PEER_AGENT_DOWN, "seen by b", now(), notify=[hook.key]),
        )
        assert sorted(created for _, created in results) == [False, True]
        da, db = dispatcher(node_a, hook), dispatcher(node_b, hook)
        assert sum(await asyncio.gather(da.flush_once(), db.flush_once())) == 1
        cleared = await asyncio.gather(
            asyncio.to_thread(node_a.clear, FP, now(), notify=[hook.key]),
            asyncio.to_thread(node_b.clear, FP, now(), notify=[hook.key]),
        )
        assert len([c for c in cleared if c is not None]) == 1
        assert sum(await asyncio.gather(da.flush_once(), db.flush_once())) == 1
        await rx.stop()
        assert [r.body["event"] for r in rx.requests] == ["raise", "clear"]

    run(main)


def test_webhook_basic_auth_from_the_url_and_no_password_in_errors(sqlite_store: AlarmStore) -> None:
    async def main() -> None:
        rx = HttpReceiver()
        await rx.start()
        hook = WebhookNotifier(f"http://alarms:T0pS3cret@127.0.0.1:{rx.port}/in")
        assert "T0pS3cret" not in hook.key and hook.key == f"webhook:http://alarms:***@127.0.0.1:{rx.port}/in"
        await raise_(sqlite_store, hook)
        assert await dispatcher(sqlite_store, hook).flush_once() == 1
        assert rx.requests[0].headers["Authorization"].startswith("Basic ")
        await rx.stop()

        down = WebhookNotifier(f"http://alarms:T0pS3cret@127.0.0.1:{free_port()}/in")
        (item,) = await asyncio.to_thread(sqlite_store.history)
        with pytest.raises(NotifyError) as err:
            await down.send(fake_item(item.to_json(), "raise"))
        assert "T0pS3cret" not in str(err.value) and "***" in str(err.value)

    run(main)


def fake_item(payload: dict[str, object], event: Event = "raise") -> OutboxItem:
    t = now()
    return OutboxItem(
        id=1,
        alarm_row=1,
        event=event,
        notifier="x",
        payload=dict(payload),
        created_at=t,
        next_try_at=t,
    )


# -- never in the way ----------------------------------------------------


def test_a_hung_receiver_does_not_hold_up_the_round(sqlite_store: AlarmStore) -> None:
    async def main() -> None:
        slow, fast = HttpReceiver(delay_s=30), HttpReceiver()
        await slow.start()
        await fast.start()
        hung = WebhookNotifier(slow.url, timeout_s=0.5)
        ok = WebhookNotifier(fast.url)
        d = dispatcher(sqlite_store, hung, ok)
        await asyncio.to_thread(sqlite_store.raise_alarm, IDENT, Cause.DISK_FULL, "x", now(), notify=[hung.key, ok.key])
        started = time.monotonic()
        assert await d.flush_once() == 1
        assert time.monotonic() - started < 5
        (left,) = sqlite_store.pending()
        assert left.notifier == hung.key and "no answer within 0.5 s" in (left.last_error or "")
        assert len(fast.requests) == 1
        await fast.stop()
        await slow.stop()

    run(main)


def test_run_delivers_on_wake_and_stops_promptly(sqlite_store: AlarmStore) -> None:
    async def main() -> None:
        rx = HttpReceiver()
        await rx.start()
        slow = HttpReceiver(delay_s=30)
        await slow.start()
        hook = WebhookNotifier(rx.url)
        hung = WebhookNotifier(slow.url, timeout_s=20)
        d = Dispatcher(sqlite_store, [hook, hung], poll_s=30)
        stop = asyncio.Event()
        task = asyncio.create_task(d.run(stop))
        await asyncio.sleep(0.2)
        await asyncio.to_thread(sqlite_store.raise_alarm, IDENT, Cause.DISK_FULL, "x", now(), notify=[hook.key])
        d.wake()
        await wait_for(lambda: len(rx.requests) == 1)
        # a send stuck on a dead receiver does not delay the stop
        await asyncio.to_thread(sqlite_store.clear, FP, now(), notify=[hook.key, hung.key])
        d.wake()
        await wait_for(lambda: len(rx.requests) == 2)
        started = time.monotonic()
        stop.set()
        # Far below the hung send's 20 s timeout (and its receiver's 30 s), with room for a loaded machine.
        await asyncio.wait_for(task, 15)
        assert time.monotonic() - started < 10
        await rx.stop()
        await slow.stop()
        # the interrupted item stays queued, leased for a later retry
        assert [i.notifier for i in sqlite_store.pending()] == [hung.key]

    run(main)


def test_run_survives_store_errors(tmp_path: Path) -> None:
    store = open_store("sqlite", tmp_path)

    async def main() -> None:
        d = Dispatcher(store, [WebhookNotifier("http://127.0.0.1:9/")], poll_s=0.05)
        store.close()  # every round now fails with StoreError
        stop = asyncio.Event()
        task = asyncio.create_task(d.run(stop))
        await asyncio.sleep(0.3)
        assert not task.done()
        stop.set()
        await asyncio.wait_for(task, 2)

    run(main)


def test_cancelling_run_leaves_no_task_behind(sqlite_store: AlarmStore) -> None:
    async def main() -> None:
        slow = HttpReceiver(delay_s=30)
        await slow.start()
        hung = WebhookNotifier(slow.url, timeout_s=20)
        await asyncio.to_thread(sqlite_store.raise_alarm, IDENT, Cause.DISK_FULL, "x", now(), notify=[hung.key])
        task = asyncio.create_task(Dispatcher(sqlite_store, [hung], poll_s=30).run(asyncio.Event()))
        await wait_for(lambda: bool(slow.requests) or sqlite_store.pending()[0].attempts == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 2)
        await asyncio.sleep(0.05)
        ours = [t for t in asyncio.all_tasks() if "hasync/alarms" in str(getattr(t.get_coro(), "cr_code", ""))]
        assert ours == []
        await slow.stop()

    run(main)


def test_items_of_unconfigured_notifiers_are_left_alone(sqlite_store: AlarmStore) -> None:
    async def main() -> None:
        rx = HttpReceiver()
        await rx.start()
        hook = WebhookNotifier(rx.url)
        await asyncio.to_thread(
            sqlite_store.raise_alarm,
            IDENT,
            Cause.DISK_FULL,
            "x",
            now(),
            notify=["webhook:http://removed.example", hook.key],
        )
        assert await dispatcher(sqlite_store, hook).flush_once() == 1
        assert [i.notifier for i in sqlite_store.pending()] == ["webhook:http://removed.example"]
        await rx.stop()

    run(main)


# -- Alertmanager --------------------------------------------------------


def test_alertmanager_gets_one_alert_that_fires_then_resolves(stores: Stores) -> None:
    store = stores.open()

    async def main() -> None:
        am = HttpReceiver()
        await am.start()
        clock = FakeClock()
        notifier = AlertmanagerNotifier(
            am.url + "/", resend_s=60, resolved_retention_s=900, generator_url="http://node-b:28443/"
        )
        d = dispatcher(store, notifier, clock=clock)
        await raise_(store, notifier)
        assert await d.flush_once() == 1
        assert await d.resend_once() == 1  # re-sent while firing
        clock.advance(30)
        assert await d.resend_once() == 0  # not before resend_s
        clock.advance(31)
        assert await d.resend_once() == 1
        firing = [a for r in am.requests for a in r.body]
        assert len(firing) == 3 and all(r.path == "/api/v2/alerts" for r in am.requests)
        for alert in firing:
            ends = datetime.fromisoformat(alert["endsAt"])
            assert ends > now() + timedelta(seconds=200)  # 4 x resend_s ahead
            assert alert["generatorURL"] == "http://node-b:28443/"

        await clear(store, notifier)
        assert await d.flush_once() == 1
        cleared_at = store.history()[0].to_json()["cleared_at"]
        assert cleared_at is not None
        clock.advance(61)
        assert await d.resend_once() == 1  # resolved, re-sent for a while
        clock.advance(1000)
        assert await d.resend_once() == 0  # past the retention
        await am.stop()

        alerts = [a for r in am.requests for a in r.body]
        assert len(alerts) == 5
        label_sets = {tuple(sorted(a["labels"].items())) for a in alerts}
        assert len(label_sets) == 1  # one alert, from firing to resolved
        labels = alerts[0]["labels"]
        assert set(labels) == LABELS
        assert labels == {
            "alertname": ALERTNAME,
            "alarm_id": "45641",
            "severity": "Major",
            "source": "cluster-1",
            "service_name": "Flink",
            "role_name": "FlinkServer",
            "host_name": "node-b",
        }
        assert len({a["startsAt"] for a in alerts}) == 1
        for resolved in alerts[3:]:
            assert resolved["endsAt"] == cleared_at
            assert datetime.fromisoformat(resolved["endsAt"]) <= now()
        assert alerts[0]["annotations"]["summary"] == IDENT.name
        assert alerts[0]["annotations"]["cause"] == "peer_agent_down"

    run(main)


def test_alertmanager_down_during_the_raise(sqlite_store: AlarmStore) -> None:
    async def main() -> None:
        am = HttpReceiver()
        clock = FakeClock()
        notifier = AlertmanagerNotifier(am.url)
        d = dispatcher(sqlite_store, notifier, clock=clock)
        await raise_(sqlite_store, notifier)
        assert await d.flush_once() == 0
        assert await d.resend_once() == 0  # nothing re-sent before the first send went through
        await am.start()
        clock.advance(600)
        assert await d.flush_once() == 1
        await clear(sqlite_store, notifier)
        assert await d.flush_once() == 1
        await am.stop()
        alerts = [a for r in am.requests for a in r.body]
        assert len(alerts) == 2
        assert alerts[0]["labels"] == alerts[1]["labels"]
        assert datetime.fromisoformat(alerts[0]["endsAt"]) > now()
        assert datetime.fromisoformat(alerts[1]["endsAt"]) <= now()

    run(main)


# -- syslog --------------------------------------------------------------


def check_syslog(messages: list[bytes], hostname: str) -> None:
    assert len(messages) == 2
    raised, cleared = (parse_rfc5424(m) for m in messages)
    for msg, event in ((raised, "raise"), (cleared, "clear")):
        assert (msg.app_name, msg.msgid, msg.hostname) == ("hasync", "ALM45641", hostname)
        assert msg.facility == 3  # daemon
        params = msg.sd[rfc5424.SD_ID]
        assert params["event"] == event
        assert params["alarmId"] == "45641" and params["severity"] == "Major"
        assert (params["source"], params["serviceName"], params["roleName"], params["hostName"]) == (
            "cluster-1",
            "Flink",
            "FlinkServer",
            "node-b",
        )
        assert params["fingerprint"] == FP and params["cause"] == "peer_agent_down"
        assert params["name"] == IDENT.name
        assert msg.bom and "ALM-45641" in msg.msg
    assert raised.severity == 3  # err: a Major alarm
    assert cleared.severity == 5  # notice
    assert "raised" in raised.msg and "cleared" in cleared.msg
    assert raised.sd[rfc5424.SD_ID]["clearedAt"] == ""
    assert cleared.timestamp == datetime.fromisoformat(cleared.sd[rfc5424.SD_ID]["clearedAt"])
    assert raised.timestamp == datetime.fromisoformat(raised.sd[rfc5424.SD_ID]["raisedAt"])


def test_syslog_udp_one_raise_one_clear(sqlite_store: AlarmStore) -> None:
    async def main() -> None:
        rx = SyslogUdpReceiver()
        await rx.start()
        notifier = SyslogNotifier(rx.url, hostname="node-a")
        d = dispatcher(sqlite_store, notifier)
        await raise_(sqlite_store, notifier)
        assert await d.flush_once() == 1
        await clear(sqlite_store, notifier)
        assert await d.flush_once() == 1
        await wait_for(lambda: len(rx.messages) >= 2)
        await asyncio.sleep(0.2)
        await rx.stop()
        check_syslog(rx.messages, "node-a")

    run(main)


def test_syslog_tcp_one_raise_one_clear_also_when_down_at_first(stores: Stores) -> None:
    store = stores.open()

    async def main() -> None:
        rx = SyslogTcpReceiver()
        notifier = SyslogNotifier(f"tcp://127.0.0.1:{rx.port}", hostname="node-a")
        assert notifier.transport == "tcp"
        clock = FakeClock()
        d = dispatcher(store, notifier, clock=clock)
        await raise_(store, notifier)
        assert await d.flush_once() == 0  # connection refused
        await rx.start()
        clock.advance(600)
        assert await d.flush_once() == 1
        await clear(store, notifier)
        assert await d.flush_once() == 1
        await wait_for(lambda: len(rx.messages) >= 2)
        await asyncio.sleep(0.2)
        await rx.stop()
        assert rx.bad_frames == 0
        check_syslog(rx.messages, "node-a")

    run(main)


def test_syslog_structured_data_is_escaped_and_udp_size_bounded() -> None:
    alarm = {
        "alarm_id": 45641,
        "name": IDENT.name,
        "severity": "Major",
        "auto_clear": True,
        "source": 'c"1]\\x',
        "service_name": "Flink",
        "role_name": "FlinkServer",
        "host_name": "node-b",
        "cause": "junk_file",
        "additional_info": "cause=junk_file\nconf/sed\u00e9\u4e2d" + "x" * 5000,
        "raised_at": "2026-11-25T09:00:00.000+00:00",
        "cleared_at": None,
        "fingerprint": FP,
    }
    msg = rfc5424.format_event(
        "raise",
        alarm,
        hostname="node a\u00e9",
        facility=facility_code("local0"),
        max_bytes=rfc5424.UDP_MAX_BYTES,
    )
    assert len(msg) <= rfc5424.UDP_MAX_BYTES
    parsed = parse_rfc5424(msg)
    assert parsed.facility == 16 and parsed.hostname == "nodea"
    params = parsed.sd[rfc5424.SD_ID]
    assert params["source"] == 'c"1]\\x'
    assert params["additionalInfo"].startswith("cause=junk_file conf/sed\u00e9\u4e2d")
    assert "\n" not in parsed.msg
    assert rfc5424.octet_frame(b"abc") == b"3 abc"
    with pytest.raises(ValueError):
        facility_code("nope")


# -- configuration -------------------------------------------------------


def test_build_notifiers_from_the_config_section() -> None:
    sections = [
        NotifySection(kind="alertmanager", url="http://127.0.0.1:9093"),
        NotifySection(kind="webhook", url="https://user:pw@hooks.example/alarm"),
        NotifySection(kind="syslog", url="syslog+udp://127.0.0.1:5514"),
        NotifySection(kind="syslog", url="syslog+tcp://127.0.0.1:5514?facility=local3"),
    ]
    built = build_notifiers(sections, hostname="node-a")
    assert [type(n) for n in built] == [AlertmanagerNotifier, WebhookNotifier, SyslogNotifier, SyslogNotifier]
    assert [n.key for n in built] == [
        "alertmanager:http://127.0.0.1:9093",
        "webhook:https://user:***@hooks.example/alarm",
        "syslog:syslog+udp://127.0.0.1:5514",
        "syslog:syslog+tcp://127.0.0.1:5514?facility=local3",
    ]
    assert isinstance(built[0], AlertmanagerNotifier) and built[0].url == "http://127.0.0.1:9093/api/v2/alerts"
    assert isinstance(built[3], SyslogNotifier) and (built[3].transport, built[3].facility) == ("tcp", 19)

    # The config refuses a bad URL at load (tests/test_config.py); build_notifiers still does on its own.
    with pytest.raises(ValidationError, match="expected an http") as bad:
        NotifySection(kind="webhook", url="ftp://u:Secr3t@host/x")
    assert "Secr3t" not in str(bad.value.errors()[0]["msg"])
    with pytest.raises(ConfigError, match=r"hasync.toml: alarms.notify\[0\].url") as err:
        build_notifiers(
            [NotifySection.model_construct(kind="webhook", url="ftp://u:Secr3t@host/x")], config_path="hasync.toml"
        )
    assert "Secr3t" not in str(err.value)
    with pytest.raises(ConfigError, match=r"alarms.notify\[0\].url"):
        build_notifiers([NotifySection.model_construct(kind="syslog", url="http://127.0.0.1:514")])
    with pytest.raises(ConfigError, match="configured twice"):
        build_notifiers(
            [NotifySection(kind="webhook", url="http://a/"), NotifySection(kind="webhook", url="http://a/")]
        )
