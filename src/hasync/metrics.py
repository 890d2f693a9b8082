"""Prometheus metrics of one agent (SPEC §6), served at /metrics behind the token."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from collections.abc import Iterator

    from hasync.audit import Auditor
    from hasync.replication.base import Side

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Transfers(Collector):
    """Transferred files and bytes, read from the side's counters at scrape time."""

    def __init__(self, side: Side) -> None:
        self.side = side

    def collect(self) -> Iterator[CounterMetricFamily]:
        files = CounterMetricFamily("hasync_transferred_files", "Files transferred", labels=["direction"])
        files.add_metric(["sent"], self.side.sent_files)
        files.add_metric(["received"], self.side.received_files)
        yield files
        data = CounterMetricFamily("hasync_transferred_bytes", "Bytes transferred", labels=["direction"])
        data.add_metric(["sent"], self.side.sent_bytes)
        data.add_metric(["received"], self.side.received_bytes)
        yield data


class _LastSync(Collector):
    """`hasync_last_sync_timestamp_seconds`: when a check last found the pair in sync (Unix time).
    Left out until one has since the agent started: 0 would claim a sync in 1970."""

    def __init__(self) -> None:
        self.value: float | None = None

    def set(self, ts: float) -> None:
        self.value = ts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.value is not None:
            yield GaugeMetricFamily(
                "hasync_last_sync_timestamp_seconds",
                "Unix time of the last check that found the pair in sync",
                value=self.value,
            )


class _Watcher(Collector):
    """The file watcher's health (replication/watcher.py), read at scrape time."""

    def __init__(self, side: Side) -> None:
        self.side = side

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        h = self.side.watcher_health()
        yield GaugeMetricFamily(
            "hasync_watcher_ok", "1 while every directory of the sync dirs is watched", 1 if h.ok else 0
        )
        yield GaugeMetricFamily("hasync_watched_dirs", "Directories with an inotify watch", h.watched_dirs)
        yield GaugeMetricFamily(
            "hasync_polled_dirs", "Directories polled because they cannot be watched", h.polled_dirs
        )
        yield CounterMetricFamily(
            "hasync_watcher_overflows", "inotify queue overflows (each rescans its sync dir)", h.overflows
        )
        yield CounterMetricFamily("hasync_watcher_restarts", "File watcher restarts after a failure", h.restarts)


class _Audit(Collector):
    """The audit's findings and last pass (hasync.audit), read at scrape time."""

    def __init__(self, auditor: Auditor) -> None:
        self.auditor = auditor

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        a = self.auditor
        yield CounterMetricFamily(
            "hasync_audit_mismatches", "Paths the audit found differing from what the node believed", a.mismatches_total
        )
        yield GaugeMetricFamily(
            "hasync_audit_last_pass_timestamp_seconds",
            "When the last full audit pass ended (0: none yet)",
            a.last_pass_at or 0.0,
        )


class Metrics:
    """One agent's metrics registry: the check's figures (set by the Node), and collectors read at scrape time."""

    def __init__(self, side: Side) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.in_sync = Gauge("hasync_in_sync", "1 when the last check found the pair in sync", registry=r)
        self.lag = Gauge("hasync_lag_seconds", "Age of the oldest change the standby does not have", registry=r)
        self.out_of_sync = Gauge("hasync_out_of_sync_files", "Paths reported out of sync by the last check", registry=r)
        self.alarm_active = Gauge("hasync_alarm_active", "1 while the alarm is active", ["alarm_id"], registry=r)
        self.checks = Counter("hasync_checks", "Sync checks run", ["result"], registry=r)
        self.check_duration = Histogram(
            "hasync_check_duration_seconds",
            "Wall time of one sync check",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 15),
            registry=r,
        )
        self.check_cpu = Gauge("hasync_check_cpu_seconds", "CPU time of the last sync check", registry=r)
        self.alarm_active.labels(alarm_id="45641").set(0)
        self.alarm_store_up = Gauge(
            "hasync_alarm_store_up", "1 while the alarm store works; 0 while alarms are kept in memory", registry=r
        )
        self._transfers = _Transfers(side)
        r.register(self._transfers)
        # Through outages too: the last in-sync time keeps ageing while the lag is unknown (NaN), and
        # which node is active (one series per agent, value 1) lets rules and dashboards join on it.
        self.last_sync = _LastSync()
        r.register(self.last_sync)
        self._role = Gauge("hasync_role", "This agent's node and role (always 1)", ["node", "role"], registry=r)
        # Set to read the node's fence at scrape time (hasync.node): a larger value after every role change.
        self.epoch = Gauge("hasync_role_epoch", "This node's fencing epoch (larger at each role change)", registry=r)
        self._watcher = _Watcher(side)
        r.register(self._watcher)
        self._audit: _Audit | None = None
        self.follow(side)

    def follow(self, side: Side) -> None:
        """Read transfers and watcher health from `side`, and label the node with its role (at start,
        and when the node's role is replaced)."""
        self._transfers.side = side
        self._watcher.side = side
        self._role.clear()
        self._role.labels(node=side.cfg.node.name, role=side.role).set(1)

    def watch_audit(self, auditor: Auditor) -> None:
        """Read the audit's figures from `auditor` (it replaces the one watched before)."""
        if self._audit is None:
            self._audit = _Audit(auditor)
            self.registry.register(self._audit)
        else:
            self._audit.auditor = auditor

    def render(self) -> bytes:
        return generate_latest(self.registry)
