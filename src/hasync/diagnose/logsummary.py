"""ERROR and WARN entries of this node's HA run log in a window, grouped by message (`gunzip`, `vi`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from hasync import clock
from hasync.logcut import CutStats, iter_window

MAX_GROUPS = 50


def summarize(log_dir: Path, start: datetime, end: datetime, mask: Callable[[str], str] = str) -> dict[str, Any]:
    """`mask` hides secrets in the example lines (collect's Masker.text for the node's config)."""
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    causes: Counter[str] = Counter()
    stats = CutStats()
    for rec in iter_window(log_dir, start, end, stats=stats):
        if rec.level not in ("ERROR", "WARN"):
            continue
        key = (rec.level, rec.component, rec.event)
        g = groups.get(key)
        when = clock.iso(rec.ts, "milliseconds", rec.ts.tzinfo)
        if g is None:
            groups[key] = {
                "level": rec.level,
                "component": rec.component,
                "event": rec.event,
                "count": 1,
                "first": when,
                "last": when,
                "example": mask(rec.text.splitlines()[0][:400]),
                "source": rec.source,
            }
        else:
            g["count"] += 1
            g["last"] = when
        if rec.level == "ERROR" and (cause := rec.fields().get("cause")):
            causes[cause] += 1
    ordered = sorted(groups.values(), key=lambda g: (g["level"] != "ERROR", -g["count"], g["first"]))
    return {
        "groups": ordered[:MAX_GROUPS],
        "more_groups": max(0, len(ordered) - MAX_GROUPS),
        "errors": sum(g["count"] for g in ordered if g["level"] == "ERROR"),
        "warnings": sum(g["count"] for g in ordered if g["level"] == "WARN"),
        "causes": dict(causes.most_common()),
        "files_read": list(stats.files_read),
        "files_skipped": list(stats.files_skipped),
    }
