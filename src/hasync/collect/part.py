"""What the bundle holds of one node (`NodePart`), gathered before anything is written."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hasync.collect.offset import ClockOffset
from hasync.collect.spool import LogSpool
from hasync.collect.window import Window

ProgressFn = Callable[[str, int, int | None], None]  # (what, done, total or None)


@dataclass
class NodePart:
    """One node's log spool, documents, notes and warnings, and what the manifest says of it."""

    name: str
    local: bool
    window: Window
    hostname: str | None = None
    role: str | None = None
    reachable: bool | None = None
    spool: LogSpool | None = None
    docs: dict[str, bytes] = field(default_factory=dict)  # alarms.json, status.json, config.toml
    log: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    offset: ClockOffset | None = None

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "name": self.name,
            "hostname": self.hostname,
            "role": self.role,
            "local": self.local,
            "reachable": self.reachable,
            "clock_offset_s": 0.0 if self.local else (None if self.offset is None else self.offset.applied_s),
            "window": self.window.as_json(),
        }
        if self.spool is not None:
            doc["log"] = self.log
        return doc


def json_bytes(doc: Any) -> bytes:
    """A bundle member's JSON: indented, UTF-8, with a final newline."""
    return (json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n").encode("utf-8")
