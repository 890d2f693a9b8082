"""RFC 5424 syslog messages for alarm events, and RFC 6587 octet-counting framing for TCP."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from typing import Any

from hasync.urls import FACILITIES

APP_NAME = "hasync"
MSGID = "ALM45641"
# SD-ID with the IANA example enterprise number (RFC 5612): hasync has no number of its own.
SD_ID = "alarm@32473"

# Alarm severity -> syslog severity of the raise; a clear is always "notice".
SEVERITIES = {"Critical": 2, "Major": 3, "Minor": 4, "Warning": 4}
CLEAR_SEVERITY = 5
BOM = "\ufeff".encode()
UDP_MAX_BYTES = 2048  # RFC 5426: receivers SHOULD accept 2048 octets
SD_VALUE_MAX = 512

_PRINTUSASCII = re.compile(r"[^\x21-\x7e]")


def _header_field(value: str, max_len: int) -> str:
    value = _PRINTUSASCII.sub("", value)[:max_len]
    return value or "-"


def _sd_value(value: object) -> str:
    text = "" if value is None else str(value)
    text = " ".join(text.splitlines())[:SD_VALUE_MAX]
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def format_event(
    event: str,
    alarm: Mapping[str, Any],
    *,
    hostname: str | None = None,
    facility: int = FACILITIES["daemon"],
    max_bytes: int | None = None,
) -> bytes:
    """One RFC 5424 message for a raise or a clear of `alarm` (its `to_json()` form).

    The timestamp is the event's time (raised_at or cleared_at), so a message
    delivered late still says when it happened. The alarm's parameters are in
    the structured data element ``alarm@32473``.
    """
    clear = event == "clear"
    severity = CLEAR_SEVERITY if clear else SEVERITIES.get(str(alarm.get("severity")), 3)
    stamp = (alarm.get("cleared_at") if clear else None) or alarm.get("raised_at") or "-"
    host = _header_field(hostname if hostname is not None else socket.gethostname(), 255)
    header = f"<{facility * 8 + severity}>1 {_header_field(str(stamp), 64)} {host} {APP_NAME} {os.getpid()} {MSGID} "
    params = {
        "alarmId": alarm.get("alarm_id"),
        "event": event,
        "name": alarm.get("name"),
        "severity": alarm.get("severity"),
        "source": alarm.get("source"),
        "serviceName": alarm.get("service_name"),
        "roleName": alarm.get("role_name"),
        "hostName": alarm.get("host_name"),
        "cause": alarm.get("cause"),
        "fingerprint": alarm.get("fingerprint"),
        "raisedAt": alarm.get("raised_at"),
        "clearedAt": alarm.get("cleared_at") or "",
        "additionalInfo": alarm.get("additional_info"),
    }
    sd = "[" + SD_ID + "".join(f' {k}="{_sd_value(v)}"' for k, v in params.items()) + "]"
    verb = "cleared" if clear else "raised"
    info = " ".join(str(alarm.get("additional_info") or "").splitlines())
    cause = f"cause={alarm.get('cause')}"
    text = f"ALM-{alarm.get('alarm_id')} {verb}: {alarm.get('name')}"
    # additional_info starts with the cause (SPEC §6): say it once.
    text += f"; {info}" if info.startswith(cause) else f"; {cause}" + (f"; {info}" if info else "")
    head = (header + sd + " ").encode("utf-8")
    body = BOM + text.encode("utf-8")
    if max_bytes is not None and len(head) + len(body) > max_bytes:
        # Cut the free-text message (never the header or the parameters) on a character boundary.
        room = max(len(BOM), max_bytes - len(head))
        body = body[:room].decode("utf-8", "ignore").encode("utf-8")
    return head + body


def octet_frame(message: bytes) -> bytes:
    """RFC 6587 octet counting: ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(message)).encode("ascii") + b" " + message
