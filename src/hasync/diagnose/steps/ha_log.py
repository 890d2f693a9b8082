"""Step 4, ha_log: ERROR and WARN lines of both nodes' HA run logs around the alarm, grouped by message."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hasync import clock
from hasync.diagnose.context import Context
from hasync.diagnose.model import Step
from hasync.errors import Cause, PeerError

TITLE = "View the HA run logs from before to after the alarm"


async def run(ctx: Context) -> Step:
    step = Step("ha_log", TITLE)
    start, end = ctx.window
    evidence = [f"window {clock.iso(start)} .. {clock.iso(end)}"]
    causes: Counter[str] = Counter()
    errors = 0
    looked = 0
    for name, node in ctx.nodes():
        try:
            doc: dict[str, Any] = await node.call("log_summary", start=start.isoformat(), end=end.isoformat())
        except PeerError as exc:
            evidence.append(f"{name}: cannot read its log: {exc.message}")
            continue
        looked += 1
        errors += doc["errors"]
        causes.update(doc["causes"])
        files = ", ".join(doc["files_read"]) or "none"
        evidence.append(f"{name}: {doc['errors']} ERROR and {doc['warnings']} WARN entries (files read: {files})")
        for g in doc["groups"]:
            span = g["first"] if g["count"] == 1 else f"{g['first']} .. {g['last']}"
            evidence.append(
                f"{name} {g['level']} x{g['count']} [{g['component']}] {g['event']} ({span}); e.g. {g['example']}"
            )
        if doc["more_groups"]:
            evidence.append(f"{name}: {doc['more_groups']} more kinds of message")
    if looked == 0:
        step.verdict = "error"
    elif errors and ctx.alarm is None and ctx.standby_status is not None and ctx.standby_status.in_sync is True:
        step.verdict = "ok"  # past errors of a pair that is in sync now: shown, not a fault
        evidence.append("the pair is in sync now: these errors are resolved")
    elif errors:
        step.verdict = "fault"
        known = [c for c, _ in causes.most_common() if c in Cause._value2member_map_]
        step.cause = Cause(known[0]) if known else None
        step.action = (
            "Rectify the fault the ERROR entries name (the most frequent cause: "
            f"{known[0] if known else 'none named'}); the alarm clears by itself once the pair is in sync."
        )
    else:
        step.verdict = "ok"
    step.evidence = "\n".join(evidence)
    return step
