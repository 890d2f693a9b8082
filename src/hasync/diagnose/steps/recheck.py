"""Step 5, recheck: after a fix, sync and check again, and say whether the alarm cleared."""

from __future__ import annotations

import json

from hasync.diagnose.context import Context
from hasync.diagnose.model import Step
from hasync.errors import PeerError
from hasync.peer.protocol import API

TITLE = "Wait for the sync and check whether the alarm is cleared"


async def run(ctx: Context) -> tuple[Step, bool | None]:
    step = Step("recheck", TITLE)
    client = ctx.standby_client
    if client is None:
        step.verdict = "error"
        step.evidence = "the standby's agent is not reachable: cannot sync and check"
        return step, None
    if not ctx.fixed and not ctx.peer_ok:
        # Nothing was changed and the network step found the peer down: a check now could only wait
        # for the same timeout to say the same thing.
        step.evidence = "no fix was made and the peer did not answer in the network step: nothing to recheck"
        step.action = "Restore the link or the peer's agent (see the network step); the alarm clears by itself then."
        return step, None
    evidence = []
    try:
        if ctx.fixed:
            result: dict[str, object] = {}
            async for event in client.stream_json("POST", f"{API}/sync", timeout=600):
                if event.get("event") == "result":
                    result = event
            evidence.append(
                f"sync: {'in sync' if result.get('in_sync') else 'not in sync'}, "
                f"{result.get('files', 0)} files transferred"
            )
        else:
            evidence.append("no fix was made: check only")
        verdict = await client.json("POST", f"{API}/check", timeout=60)
        evidence.append(f"check: {'in sync' if verdict['in_sync'] else 'out of sync, cause ' + str(verdict['cause'])}")
        cleared: bool | None = bool(verdict["in_sync"])
        if ctx.alarm is not None:
            docs = await client.json("GET", f"{API}/alarms?all=1&pair=1", timeout=30)
            mine = [
                d
                for d in docs
                if d["fingerprint"] == ctx.alarm["fingerprint"] and d["raised_at"] == ctx.alarm["raised_at"]
            ]
            cleared = bool(mine) and mine[0]["cleared_at"] is not None
            evidence.append(
                f"alarm {ctx.alarm['fingerprint']}: "
                + (f"cleared at {mine[0]['cleared_at']}" if cleared else "still active")
            )
    except (PeerError, KeyError, json.JSONDecodeError) as exc:
        step.verdict = "error"
        step.evidence = "\n".join([*evidence, f"failed: {exc}"])
        return step, None
    step.verdict = "ok" if cleared else "fault"
    step.evidence = "\n".join(evidence)
    if not cleared:
        step.action = (
            "The fix did not bring the pair in sync: see the ha_log step and collect the fault information."
            if ctx.fixed
            else "Apply the actions above (or `hasync diagnose --fix`), then check again."
        )
    return step, cleared if ctx.fixed else None
