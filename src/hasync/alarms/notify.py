"""Notifiers of alarm 45641 (Alertmanager, JSON webhook, syslog) and the dispatcher that delivers the outbox.

Delivery is durable and never in the way: `AlarmStore.raise_alarm` and
`AlarmStore.clear` put one outbox item per notifier in the same transaction as
the state change, and the `Dispatcher` (its own asyncio task) sends the items
with exponential backoff, in order per alarm and notifier, at least once.
A receiver that is down delays only its own items; they are delivered when it
comes back, also after an agent restart, since the outbox is in the store.

Alertmanager (API v2) also needs what its clients do: every firing alert is
re-sent every `resend_s` (default 60 s) with ``endsAt`` = now + 4 * `resend_s`
(as Prometheus does), so Alertmanager resolves it by itself if hasync
disappears; a resolved alert is re-sent with its ``endsAt`` = clear time for
`resolved_retention_s` (default 15 min). Its label set is the same from
the first firing to the last resolved message:
``alertname="hasync_45641"`` (a stable identifier for routing rules; the
human-readable alarm name is the ``summary`` annotation), ``alarm_id``,
``severity``, ``source``, ``service_name``, ``role_name``, ``host_name``.
``generatorURL`` is the sending agent's status page (``Agent.status_url``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, runtime_checkable

import aiohttp

from hasync.alarms import rfc5424
from hasync.alarms.model import ALARM_ID, Alarm, OutboxItem, iso
from hasync.alarms.store import AlarmStore, StoreError
from hasync.config import NotifySection
from hasync.errors import ConfigError, HasyncError, NotifyError
from hasync.masking import mask_url, one_line, url_secrets
from hasync.tasks import Backoff
from hasync.urls import http_url, notifier_key, syslog_target

log = logging.getLogger("hasync.notify")

ALERTNAME = f"hasync_{ALARM_ID}"
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_RESEND_S = 60.0
DEFAULT_RESOLVED_RETENTION_S = 15 * 60.0

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Notifier(Protocol):
    """Sends one outbox item (a raise or a clear) to one receiver; raises NotifyError on failure."""

    key: str  # stable across restarts, safe to log: "<kind>:<url with the password masked>"
    kind: str

    async def send(self, item: OutboxItem) -> None: ...


@runtime_checkable
class Resender(Protocol):
    """A notifier whose receiver must be told the current state again periodically (Alertmanager)."""

    key: str
    resend_s: float
    resolved_retention_s: float

    async def resend(self, alarms: Sequence[Alarm]) -> None: ...


async def _post_json(url: str, body: Any, *, timeout_s: float, headers: dict[str, str] | None = None) -> None:
    where = mask_url(url)
    secrets = url_secrets(url)
    try:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, json=body, headers=headers) as resp,
        ):
            if resp.status // 100 != 2:
                text = one_line((await resp.text(errors="replace"))[:200] or resp.reason or "", secrets)
                raise NotifyError(f"{where}: HTTP {resp.status}: {text}")
    except NotifyError:
        raise
    except TimeoutError as exc:
        raise NotifyError(f"{where}: no answer within {timeout_s:g} s") from exc
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        raise NotifyError(f"{where}: {one_line(exc, secrets)}") from exc


class WebhookNotifier:
    """``POST {url}`` with ``{"event": "raise"|"clear", "alarm": <alarms --json object>}``: one per event.

    The ``Idempotency-Key`` header (fingerprint, store row, event) lets a receiver drop the rare duplicate
    of at-least-once delivery.
    """

    kind = "webhook"

    def __init__(self, url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.url = http_url(url)
        self.key = notifier_key(self.kind, url)
        self.timeout_s = timeout_s

    async def send(self, item: OutboxItem) -> None:
        headers = {"Idempotency-Key": f"{item.payload.get('fingerprint')}:{item.alarm_row}:{item.event}"}
        await _post_json(
            self.url, {"event": item.event, "alarm": item.payload}, timeout_s=self.timeout_s, headers=headers
        )


class AlertmanagerNotifier:
    """Alertmanager API v2: ``POST {url}/api/v2/alerts`` with a list of alerts (see the module docstring)."""

    kind = "alertmanager"

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        resend_s: float = DEFAULT_RESEND_S,
        resolved_retention_s: float = DEFAULT_RESOLVED_RETENTION_S,
        generator_url: str | None = None,
        clock: Clock = utcnow,
    ) -> None:
        http_url(url)
        self.url = url.rstrip("/") + "/api/v2/alerts"
        self.key = notifier_key(self.kind, url)
        self.timeout_s = timeout_s
        self.resend_s = resend_s
        self.resolved_retention_s = resolved_retention_s
        self.firing_ttl_s = 4 * resend_s
        self.generator_url = generator_url
        self._clock = clock

    def alert(self, alarm: dict[str, Any]) -> dict[str, Any]:
        """The v2 alert of an alarm in its `to_json()` form: firing while `cleared_at` is null, else resolved."""
        ends = alarm.get("cleared_at") or iso(self._clock() + timedelta(seconds=self.firing_ttl_s))
        out: dict[str, Any] = {
            "labels": {
                "alertname": ALERTNAME,
                "alarm_id": str(alarm["alarm_id"]),
                "severity": str(alarm["severity"]),
                "source": str(alarm["source"]),
                "service_name": str(alarm["service_name"]),
                "role_name": str(alarm["role_name"]),
                "host_name": str(alarm["host_name"]),
            },
            "annotations": {
                "summary": str(alarm["name"]),
                "cause": str(alarm["cause"]),
                "additional_info": str(alarm["additional_info"]),
                "fingerprint": str(alarm["fingerprint"]),
            },
            "startsAt": alarm["raised_at"],
            "endsAt": ends,
        }
        if self.generator_url:
            out["generatorURL"] = self.generator_url
        return out

    async def post(self, alerts: list[dict[str, Any]]) -> None:
        await _post_json(self.url, alerts, timeout_s=self.timeout_s)

    async def send(self, item: OutboxItem) -> None:
        await self.post([self.alert(item.payload)])

    async def resend(self, alarms: Sequence[Alarm]) -> None:
        if alarms:
            await self.post([self.alert(a.to_json()) for a in alarms])


class SyslogNotifier:
    """RFC 5424 over UDP (``syslog+udp://``, ``udp://``, ``syslog://``) or TCP with octet-counting framing
    (``syslog+tcp://``, ``tcp://``); default port 514; ``?facility=local0`` picks the facility (default daemon).

    Over UDP a message to a receiver that is down is lost without an error (UDP has no acknowledgement);
    use TCP when delivery must survive a receiver outage.
    """

    kind = "syslog"

    def __init__(self, url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, hostname: str | None = None) -> None:
        target = syslog_target(url)
        self.transport = target.transport
        self.host = target.host
        self.port = target.port
        self.facility = target.facility
        self.key = notifier_key(self.kind, url)
        self.timeout_s = timeout_s
        self.hostname = hostname or socket.gethostname()

    def message(self, item: OutboxItem) -> bytes:
        max_bytes = rfc5424.UDP_MAX_BYTES if self.transport == "udp" else None
        return rfc5424.format_event(
            item.event, item.payload, hostname=self.hostname, facility=self.facility, max_bytes=max_bytes
        )

    async def send(self, item: OutboxItem) -> None:
        msg = self.message(item)
        where = f"{self.transport}://{self.host}:{self.port}"
        try:
            async with asyncio.timeout(self.timeout_s):
                if self.transport == "tcp":
                    await self._send_tcp(msg)
                else:
                    await self._send_udp(msg)
        except TimeoutError as exc:
            raise NotifyError(f"syslog {where}: no answer within {self.timeout_s:g} s") from exc
        except OSError as exc:
            raise NotifyError(f"syslog {where}: {one_line(exc.strerror or exc)}") from exc

    async def _send_tcp(self, msg: bytes) -> None:
        _, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(rfc5424.octet_frame(msg))
            await writer.drain()
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass

    async def _send_udp(self, msg: bytes) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=(self.host, self.port))
        try:
            transport.sendto(msg)
        finally:
            transport.close()


def build_notifiers(
    sections: Sequence[NotifySection],
    *,
    hostname: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    resend_s: float = DEFAULT_RESEND_S,
    resolved_retention_s: float = DEFAULT_RESOLVED_RETENTION_S,
    config_path: str | None = None,
    generator_url: str | None = None,
) -> list[Notifier]:
    """The notifiers of ``[[alarms.notify]]``; a bad URL is a ConfigError naming its key (password masked).
    `generator_url` is the ``generatorURL`` of Alertmanager alerts (where to look at the alarm)."""
    out: list[Notifier] = []
    seen: set[str] = set()
    prefix = f"{config_path}: " if config_path else ""
    for i, section in enumerate(sections):
        where = f"{prefix}alarms.notify[{i}].url"
        notifier: Notifier
        try:
            if section.kind == "alertmanager":
                notifier = AlertmanagerNotifier(
                    section.url,
                    timeout_s=timeout_s,
                    resend_s=resend_s,
                    resolved_retention_s=resolved_retention_s,
                    generator_url=generator_url,
                )
            elif section.kind == "webhook":
                notifier = WebhookNotifier(section.url, timeout_s=timeout_s)
            elif section.kind == "syslog":
                notifier = SyslogNotifier(section.url, timeout_s=timeout_s, hostname=hostname)
            else:  # pragma: no cover - the config model allows only the three kinds
                raise ValueError(f"unknown notifier kind {section.kind!r}")
        except ValueError as exc:
            raise ConfigError(f"{where}: {mask_url(section.url)}: {one_line(exc, url_secrets(section.url))}") from None
        if notifier.key in seen:
            raise ConfigError(f"{where}: {notifier.key} is configured twice")
        seen.add(notifier.key)
        out.append(notifier)
    return out


class Dispatcher:
    """Delivers the store's outbox: an asyncio task beside the check, never in its way.

    Each round claims the due items (`AlarmStore.due`: oldest pending per alarm and
    notifier, leased so that other dispatchers on a shared store leave them alone),
    sends them concurrently with a timeout each, and marks them sent, or failed with
    the next try after an exponential backoff (`backoff_initial_s` doubling up to
    `backoff_max_s`, ±10 % jitter). Items wait for their notifier forever: a raise
    or clear is delivered whenever the receiver comes back. Alertmanager alerts are
    re-sent every `resend_s` (see the module docstring). `wake()` starts a round now,
    e.g. right after a raise; otherwise a round runs every `poll_s`.
    """

    def __init__(
        self,
        store: AlarmStore,
        notifiers: Sequence[Notifier],
        *,
        poll_s: float = 2.0,
        backoff_initial_s: float = 2.0,
        backoff_max_s: float = 300.0,
        send_timeout_s: float = DEFAULT_TIMEOUT_S + 5.0,
        lease_s: float | None = None,
        batch: int = 50,
        prune_after_s: float = 7 * 86400.0,
        clock: Clock = utcnow,
    ) -> None:
        self.store = store
        self.notifiers = {n.key: n for n in notifiers}
        self.poll_s = poll_s
        self.backoff = Backoff(backoff_initial_s, backoff_max_s, jitter=0.1)
        self.send_timeout_s = send_timeout_s
        self.lease_s = lease_s if lease_s is not None else max(60.0, 4 * send_timeout_s)
        self.batch = batch
        self.prune_after_s = prune_after_s
        self._clock = clock
        self._wake = asyncio.Event()
        self._last_resend: dict[str, datetime] = {}
        self._last_prune: datetime | None = None
        self._failing: dict[str, str] = {}  # notifier key -> last error, while failing
        self._store_error: str | None = None

    def wake(self) -> None:
        """Run a round now (call from the event loop's thread)."""
        self._wake.set()

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    def _note_failure(self, key: str, error: str) -> None:
        if self._failing.get(key) != error:
            log.warning("notifier failing notifier=%s error=%s (retrying with backoff)", key, error)
        self._failing[key] = error

    def _note_success(self, key: str) -> None:
        if self._failing.pop(key, None) is not None:
            log.info("notifier recovered notifier=%s", key)

    async def _deliver(self, item: OutboxItem) -> bool:
        notifier = self.notifiers[item.notifier]
        try:
            await asyncio.wait_for(notifier.send(item), self.send_timeout_s)
        except Exception as exc:  # a notifier bug must not stop delivery to the others
            error = exc.message if isinstance(exc, HasyncError) else f"{type(exc).__name__}: {one_line(exc)}"
            if isinstance(exc, TimeoutError):
                error = f"no answer within {self.send_timeout_s:g} s"
            self._note_failure(item.notifier, error)
            retry_at = self._clock() + timedelta(seconds=self.backoff.after(item.attempts))
            await self._call(self.store.mark_failed, item.id, retry_at, error)
            return False
        await self._call(self.store.mark_sent, item.id, self._clock())
        self._note_success(item.notifier)
        log.info(
            "alarm notified event=%s fingerprint=%s notifier=%s attempts=%d",
            item.event,
            item.payload.get("fingerprint"),
            item.notifier,
            item.attempts,
        )
        return True

    async def flush_once(self) -> int:
        """Deliver every item that is due now (following each success with the alarm's next item);
        return how many were delivered. Store errors propagate as StoreError."""
        delivered = 0
        keys = list(self.notifiers)
        if not keys:
            return 0
        for _ in range(1000):
            items: list[OutboxItem] = await self._call(
                self.store.due, self._clock(), self.batch, notifiers=keys, lease_s=self.lease_s
            )
            if not items:
                break
            results = await asyncio.gather(*(self._deliver(i) for i in items), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result  # a store error: every other delivery of the batch has finished
            ok = sum(r is True for r in results)
            delivered += ok
            if ok == 0:
                break
        return delivered

    async def resend_once(self, *, force: bool = False) -> int:
        """Re-send the current state to each Alertmanager whose period is up (all when `force`);
        return how many alerts were sent."""
        now = self._clock()
        sent = 0
        for key, notifier in self.notifiers.items():
            if not isinstance(notifier, Resender):
                continue
            last = self._last_resend.get(key)
            if not force and last is not None and (now - last).total_seconds() < notifier.resend_s:
                continue
            self._last_resend[key] = now
            since = now - timedelta(seconds=notifier.resolved_retention_s)
            alarms: list[Alarm] = await self._call(self.store.resend_candidates, key, since)
            if not alarms:
                continue
            try:
                await asyncio.wait_for(notifier.resend(alarms), self.send_timeout_s)
            except Exception as exc:
                error = exc.message if isinstance(exc, HasyncError) else f"{type(exc).__name__}: {one_line(exc)}"
                self._note_failure(key, error)
                continue
            self._note_success(key)
            sent += len(alarms)
        return sent

    async def _prune(self) -> None:
        now = self._clock()
        if self._last_prune is not None and (now - self._last_prune).total_seconds() < 3600:
            return
        self._last_prune = now
        removed: int = await self._call(self.store.prune, now - timedelta(seconds=self.prune_after_s))
        if removed:
            log.info("alarm outbox pruned removed=%d", removed)

    async def round(self) -> None:
        """One round: deliver what is due, re-send to Alertmanager, prune old sent items."""
        await self.flush_once()
        await self.resend_once()
        await self._prune()

    async def run(self, stop: asyncio.Event) -> None:
        """Run rounds until `stop` is set; return promptly then (an interrupted send is retried later)."""
        stopper = asyncio.ensure_future(stop.wait())
        pending: set[asyncio.Future[Any]] = {stopper}
        try:
            while not stop.is_set():
                self._wake.clear()
                task = asyncio.ensure_future(self.round())
                pending.add(task)
                await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if not task.done():
                    break
                pending.discard(task)
                self._log_round(task)
                waker = asyncio.ensure_future(self._wake.wait())
                pending.add(waker)
                await asyncio.wait({waker, stopper}, timeout=self.poll_s, return_when=asyncio.FIRST_COMPLETED)
                waker.cancel()
                pending.discard(waker)
        finally:
            # Also when run() itself is cancelled: no round keeps going behind the caller's back.
            for fut in pending:
                fut.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _log_round(self, task: asyncio.Future[None]) -> None:
        exc = task.exception()
        if exc is None:
            if self._store_error is not None:
                log.info("alarm store reachable again, delivering notifications")
                self._store_error = None
            return
        error = exc.message if isinstance(exc, StoreError) else f"{type(exc).__name__}: {one_line(exc)}"
        if error != self._store_error:
            if isinstance(exc, StoreError):
                log.warning("notification round failed error=%s", error)
            else:
                log.error("notification round failed", exc_info=exc)
        self._store_error = error


__all__ = [
    "ALERTNAME",
    "AlertmanagerNotifier",
    "Dispatcher",
    "Notifier",
    "NotifyError",
    "Resender",
    "SyslogNotifier",
    "WebhookNotifier",
    "build_notifiers",
    "notifier_key",
]
