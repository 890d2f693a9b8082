"""Where notifications go: the `[[alarms.notify]]` URLs parsed and checked, light enough for config loading.

The config loader checks every notifier URL with `check_notify_url` (a bad one is a config
error at load, for every command), and the notifiers parse them with the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from hasync.alarms import rfc5424
from hasync.alarms.store import mask_url, url_port

SYSLOG_DEFAULT_PORT = 514
SYSLOG_UDP_SCHEMES = ("syslog+udp", "udp", "syslog")
SYSLOG_TCP_SCHEMES = ("syslog+tcp", "tcp")
NOTIFY_KINDS = ("alertmanager", "webhook", "syslog")


@dataclass(frozen=True)
class SyslogTarget:
    transport: str  # "udp" or "tcp"
    host: str
    port: int
    facility: int


def _split(url: str) -> tuple[str, str, int | None, str]:
    """(scheme, host, port, query); ValueError naming what is wrong."""
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise ValueError("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = url_port(url)
    except ValueError as exc:
        raise ValueError(f"not a valid URL ({exc})") from None
    return parts.scheme.lower(), parts.hostname or "", port, parts.query


def http_url(url: str) -> str:
    """`url` if it is an http(s) URL with a host; ValueError otherwise."""
    scheme, host, _, _ = _split(url)
    if scheme not in ("http", "https") or not host:
        raise ValueError("expected an http:// or https:// URL")
    return url


def syslog_target(url: str) -> SyslogTarget:
    """The syslog receiver `url` names: ``syslog+udp://``, ``udp://``, ``syslog://`` (UDP) or ``syslog+tcp://``,
    ``tcp://`` (TCP), default port 514, ``?facility=local0`` (default daemon)."""
    scheme, host, port, query = _split(url)
    if scheme not in SYSLOG_UDP_SCHEMES + SYSLOG_TCP_SCHEMES:
        raise ValueError("expected syslog+udp://, syslog+tcp://, udp:// or tcp://host:port")
    if not host:
        raise ValueError("missing host")
    facility = parse_qs(query).get("facility", ["daemon"])[-1]
    return SyslogTarget(
        "tcp" if scheme in SYSLOG_TCP_SCHEMES else "udp",
        host,
        port or SYSLOG_DEFAULT_PORT,
        rfc5424.facility_code(facility),
    )


def check_notify_url(kind: str, url: str) -> None:
    """ValueError when `url` is not a valid receiver for a notifier of `kind`."""
    if kind == "syslog":
        syslog_target(url)
    else:
        http_url(url)


def notifier_key(kind: str, url: str) -> str:
    """The outbox key of a configured notifier. A changed password keeps the key, so queued items still go."""
    return f"{kind}:{mask_url(url)}"
