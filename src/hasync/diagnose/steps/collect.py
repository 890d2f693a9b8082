"""Step 6, collect: when the alarm did not clear, the exact `hasync collect` command to run."""

from __future__ import annotations

import shlex

from hasync import clock
from hasync.diagnose.context import Context
from hasync.diagnose.model import Step

TITLE = "Collect fault information"


def command(ctx: Context) -> str:
    cfg = shlex.quote(str(ctx.cfg.path.resolve()))
    if ctx.alarm is not None:
        return f"hasync collect -c {cfg} --alarm {ctx.alarm['fingerprint']}"
    at = shlex.quote(clock.iso(ctx.window[1], tz=ctx.window[1].tzinfo))
    minutes = max(1, round((ctx.window[1] - ctx.window[0]).total_seconds() / 60))
    return f"hasync collect -c {cfg} --at {at} --before {minutes}m --after 0m"


def run(ctx: Context, unresolved: bool, cleared: bool | None) -> Step:
    step = Step("collect", TITLE)
    if cleared:
        step.evidence = "the alarm cleared after the fix: nothing to collect"
        return step
    if not unresolved:
        step.verdict = "ok"
        step.evidence = "no fault left: nothing to collect"
        return step
    step.verdict = "fault"
    step.evidence = "the fault is not resolved"
    step.action = (
        f"Run `{command(ctx)}` and give the bundle (the logs of both nodes for the minutes around the "
        "alarm, the alarm records, a status snapshot and the configs with secrets masked) to O&M."
    )
    return step
