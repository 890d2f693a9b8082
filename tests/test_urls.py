"""The URLs a config names (hasync.urls): the alarm store, http receivers, syslog targets, notifier keys."""

from __future__ import annotations

import pytest

from hasync.urls import (
    SyslogTarget,
    check_notify_url,
    check_store,
    facility_code,
    http_url,
    notifier_key,
    syslog_target,
    url_port,
)

PW = "Pw-S3cret-9"


@pytest.mark.parametrize(
    "store", ["sqlite", "postgresql://u:pw@db:5432/alarms", "postgres://db/a", "POSTGRESQL://h/db"]
)
def test_check_store_accepts_sqlite_and_postgresql_urls(store: str) -> None:
    check_store(store)


def test_check_store_names_sqlite_exactly() -> None:
    with pytest.raises(ValueError, match="unknown store"):
        check_store("SQLite")


@pytest.mark.parametrize(
    ("store", "why"),
    [
        (f"mysql://u:{PW}@h/db", "unknown store"),
        (f"postgresql:/u:{PW}@h/db", "unknown store"),  # a mistyped scheme
        (f"postgresql://u:{PW}@h/d b", "spaces or control characters"),
        (f"postgresql://u:{PW}@h/db\x07", "spaces or control characters"),
        (f"postgresql://u:{PW}@h:0/db", "not a valid URL (port 0"),
        (f"postgresql://u:{PW}@h:99999/db", "not a valid URL"),
        (f"postgresql://u:{PW}@[::1/db", "not a valid URL"),
    ],
)
def test_check_store_refuses_with_the_password_masked(store: str, why: str) -> None:
    with pytest.raises(ValueError, match=r"\*\*\*") as err:
        check_store(store)
    assert why in str(err.value) and PW not in str(err.value)


@pytest.mark.parametrize("url", ["http://h", "https://h:8443/x?y=1", "HTTP://am:9093"])
def test_http_url_returns_a_good_url_as_is(url: str) -> None:
    assert http_url(url) == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://h", "expected an http:// or https:// URL"),
        ("http:///x", "expected an http:// or https:// URL"),  # no host
        ("h:9093", "expected an http:// or https:// URL"),
        ("http://h:0/x", "port 0 is out of range"),
        ("http://h:65536/x", "not a valid URL"),
        ("http://h /x", "spaces or control characters"),
    ],
)
def test_http_url_refuses(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        http_url(url)


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("syslog://h", SyslogTarget("udp", "h", 514, 3)),  # UDP, port 514, facility daemon by default
        ("udp://h:5514", SyslogTarget("udp", "h", 5514, 3)),
        ("syslog+udp://h?facility=local0", SyslogTarget("udp", "h", 514, 16)),
        ("tcp://h:601?facility=local3", SyslogTarget("tcp", "h", 601, 19)),
        ("syslog+tcp://h?facility=4", SyslogTarget("tcp", "h", 514, 4)),
        ("UDP://H:5514?facility=LOCAL7", SyslogTarget("udp", "h", 5514, 23)),
    ],
)
def test_syslog_target(url: str, target: SyslogTarget) -> None:
    assert syslog_target(url) == target


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://h", "expected syslog"),
        ("udp://:514", "missing host"),
        ("udp://h?facility=nope", "unknown syslog facility"),
        ("udp://h?facility=24", "unknown syslog facility"),
        ("udp://h:0", "port 0"),
        ("udp://h\n", "spaces or control characters"),
    ],
)
def test_syslog_target_refuses(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        syslog_target(url)


def test_facility_code_by_name_or_number() -> None:
    assert facility_code("daemon") == facility_code("3") == facility_code(3) == 3
    assert facility_code(0) == 0 and facility_code(23) == 23
    for bad in (-1, 24, "24", "local8", ""):
        with pytest.raises(ValueError):
            facility_code(bad)


def test_check_notify_url_by_kind() -> None:
    check_notify_url("syslog", "syslog+tcp://h:601")
    check_notify_url("alertmanager", "http://am:9093")
    check_notify_url("webhook", "https://u:pw@hooks.example/alarm")
    with pytest.raises(ValueError, match="expected syslog"):
        check_notify_url("syslog", "http://h")
    for kind in ("webhook", "alertmanager"):
        with pytest.raises(ValueError, match="expected an http"):
            check_notify_url(kind, "syslog://h")


def test_notifier_key_keeps_its_value_when_the_password_changes() -> None:
    key = notifier_key("webhook", f"https://u:{PW}@h/x")
    assert key == "webhook:https://u:***@h/x"
    assert notifier_key("webhook", "https://u:other@h/x") == key
    assert notifier_key("alertmanager", "https://u:other@h/x") != key
    assert notifier_key("webhook", "https://u:pw@other/x") != key


def test_url_port() -> None:
    assert url_port("http://h") is None
    assert url_port("http://h:1") == 1 and url_port("http://h:65535") == 65535
    with pytest.raises(ValueError, match="port 0 is out of range 1-65535"):
        url_port("http://h:0")  # urlsplit lets it through
    with pytest.raises(ValueError):
        url_port("http://h:65536")
