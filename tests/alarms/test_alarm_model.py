"""The alarm values: name, fingerprint and the `alarms --json` object of SPEC §3."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from hasync.alarms.model import ALARM_ID, SEVERITY, Alarm, Identity, additional_info, alarm_name, iso
from hasync.errors import Cause

IDENT = Identity("cluster-1", "Flink", "FlinkServer", "node-b")
T0 = datetime(2026, 11, 25, 9, 0, 0, 123456, tzinfo=UTC)


def test_constants_and_name() -> None:
    assert ALARM_ID == 45641
    assert SEVERITY == "Major"
    assert alarm_name("FlinkServer") == (
        "Data Synchronization Exception Between the Active and Standby FlinkServer Nodes"
    )
    assert IDENT.alarm_id == 45641


def test_fingerprint_is_stable_and_per_identity() -> None:
    expected = hashlib.sha256(b"45641\0cluster-1\0Flink\0FlinkServer\0node-b").hexdigest()[:16]
    assert IDENT.fingerprint == expected
    assert Identity("cluster-1", "Flink", "FlinkServer", "node-b").fingerprint == expected
    others = {
        Identity("cluster-2", "Flink", "FlinkServer", "node-b"),
        Identity("cluster-1", "Flink2", "FlinkServer", "node-b"),
        Identity("cluster-1", "Flink", "JobServer", "node-b"),
        Identity("cluster-1", "Flink", "FlinkServer", "node-a"),
        # NUL separation: moving a character between fields changes the fingerprint
        Identity("cluster-1F", "link", "FlinkServer", "node-b"),
    }
    assert len({o.fingerprint for o in others} | {expected}) == 6
    assert len(expected) == 16 and int(expected, 16) >= 0


def test_to_json_is_exactly_the_spec_object() -> None:
    alarm = Alarm(
        id=7,
        source="cluster-1",
        service_name="Flink",
        role_name="FlinkServer",
        host_name="node-b",
        cause=Cause.PEER_AGENT_DOWN,
        additional_info="cause=peer_agent_down",
        raised_at=T0,
    )
    out = alarm.to_json()
    assert list(out) == [
        "alarm_id",
        "name",
        "severity",
        "auto_clear",
        "source",
        "service_name",
        "role_name",
        "host_name",
        "cause",
        "additional_info",
        "raised_at",
        "cleared_at",
        "fingerprint",
    ]
    assert out["alarm_id"] == 45641
    assert out["name"] == alarm_name("FlinkServer")
    assert out["severity"] == "Major"
    assert out["auto_clear"] is True
    assert out["raised_at"] == "2026-11-25T09:00:00.123+00:00"
    assert out["cleared_at"] is None
    assert out["fingerprint"] == IDENT.fingerprint
    assert alarm.identity == IDENT and alarm.active
    json.dumps(out)

    cleared = Alarm(**{**alarm.__dict__, "cleared_at": T0 + timedelta(minutes=2), "diagnosis": {"cause": None}})
    out = cleared.to_json(diagnosis=True)
    assert out["cleared_at"] == "2026-11-25T09:02:00.123+00:00"
    assert datetime.fromisoformat(out["cleared_at"]).utcoffset() == timedelta(0)
    assert out["diagnosis"] == {"cause": None}
    assert not cleared.active


def test_times_are_converted_to_utc_and_naive_times_refused() -> None:
    local = datetime(2026, 11, 25, 17, 0, tzinfo=timezone(timedelta(hours=8)))
    assert iso(local) == "2026-11-25T09:00:00.000+00:00"
    with pytest.raises(ValueError, match="naive"):
        iso(datetime(2026, 11, 25, 9, 0))


def test_additional_info_names_the_cause_and_the_first_paths() -> None:
    assert additional_info(Cause.PEER_AGENT_DOWN) == "cause=peer_agent_down"
    assert additional_info(Cause.JUNK_FILE, ["conf/sedXyZ12"]) == "cause=junk_file; out of sync: conf/sedXyZ12"
    many = [f"conf/f{i}" for i in range(8)]
    assert additional_info(Cause.SYNC_ERROR, many, limit=3) == (
        "cause=sync_error; out of sync: conf/f0, conf/f1, conf/f2 (+5 more)"
    )
