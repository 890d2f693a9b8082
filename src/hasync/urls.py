"""The URLs a config names, parsed and checked: the alarm store (`[alarms].store`) and the notifiers'
receivers (`[[alarms.notify]]`). Light enough for config loading, which checks every URL with these
functions (a bad one is a config error at load, for every command); the store and notifiers parse with them too.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from hasync.masking import mask_url

PG_SCHEMES = ("postgresql", "postgres")

SYSLOG_DEFAULT_PORT = 514
SYSLOG_UDP_SCHEMES = ("syslog+udp", "udp", "syslog")
SYSLOG_TCP_SCHEMES = ("syslog+tcp", "tcp")
NOTIFY_KINDS = ("alertmanager", "webhook", "syslog")

FACILITIES = {
    "kern": 0,
    "user": 1,
    "mail": 2,
    "daemon": 3,
    "auth": 4,
    "syslog": 5,
    "lpr": 6,
    "news": 7,
    "uucp": 8,
    "cron": 9,
    "authpriv": 10,
    "ftp": 11,
    "local0": 16,
    "local1": 17,
    "local2": 18,
    "local3": 19,
    "local4": 20,
    "local5": 21,
    "local6": 22,
    "local7": 23,
}


def facility_code(name: str | int) -> int:
    """A facility given by name (``daemon``, ``local0``...) or number."""
    if isinstance(name, int) or name.isdigit():
        code = int(name)
        if 0 <= code <= 23:
            return code
    elif name.lower() in FACILITIES:
        return FACILITIES[name.lower()]
    raise ValueError(f"unknown syslog facility {name!r}")


def url_port(url: str) -> int | None:
    """The port `url` names (None: none given); ValueError unless it is 1-65535 (`urlsplit` lets 0 through)."""
    port = urlsplit(url).port
    if port == 0:
        raise ValueError("port 0 is out of range 1-65535")
    return port


def is_postgres_url(store: str) -> bool:
    return store.split(":", 1)[0].lower() in PG_SCHEMES and "://" in store


def check_store(store: str) -> None:
    """ValueError (password masked) unless `store` is ``"sqlite"`` or a postgresql:// URL that can be split."""
    if store == "sqlite":
        return
    if not is_postgres_url(store):
        raise ValueError(f'{mask_url(store)!r}: unknown store, expected "sqlite" or a postgresql:// URL')
    if any(ch.isspace() or ord(ch) < 32 for ch in store):
        raise ValueError(f"{mask_url(store)!r}: a URL must not contain spaces or control characters")
    try:
        url_port(store)
    except ValueError as exc:
        raise ValueError(f"{mask_url(store)!r}: not a valid URL ({exc})") from None


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
        facility_code(facility),
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
