"""Step 2, storage: free space of the backup dir and the sync dirs' file systems (`df -hl`); prune backups."""

from __future__ import annotations

from typing import Any

from hasync.diagnose.context import Context, human_bytes
from hasync.diagnose.model import Step
from hasync.errors import Cause, PeerError
from hasync.peer.models import PathError

TITLE = "Check whether the storage space of the backup directory and the sync directories is full"


def _places(name: str, doc: dict[str, Any]) -> list[str]:
    lines = []
    seen: set[int] = set()
    for p in doc["places"]:
        if "error" in p:
            lines.append(f"{name} {p['name']} {p['path']}: cannot measure: {p['error']}")
            continue
        used = 100 * (1 - p["free"] / p["total"]) if p["total"] else 100.0
        dup = " (same file system as above)" if p["device"] in seen else ""
        seen.add(p["device"])
        lines.append(
            f"{name} {p['name']} {p['path']}: {human_bytes(p['free'])} free of "
            f"{human_bytes(p['total'])} ({used:.0f}% used){dup}"
        )
    sets = doc["backup_sets"]
    total = sum(s["bytes"] for s in sets)
    lines.append(
        f"{name} backup sets: {len(sets)} (max_copies {doc['max_copies']}), {human_bytes(total)}"
        + (f", oldest {sets[0]['name']}, newest {sets[-1]['name']}" if sets else "")
    )
    return lines


def _short(doc: dict[str, Any], errors: list[PathError], min_free: int) -> list[str]:
    """Why the standby lacks space: its disk_full errors, and places under the minimum."""
    out = [f"could not write {e.dir}/{e.path} ({human_bytes(e.size)}): {e.reason}" for e in errors]
    out += [
        f"{p['name']} has {human_bytes(p['free'])} free, less than the minimum {human_bytes(min_free)}"
        for p in doc["places"]
        if "free" in p and p["free"] < min_free and p.get("exists", True)
    ]
    return out


async def run(ctx: Context) -> Step:
    step = Step("storage", TITLE)
    evidence: list[str] = []
    standby_doc: dict[str, Any] | None = None
    for name, node in ctx.nodes():
        try:
            doc = await node.call("storage")
        except PeerError as exc:
            evidence.append(f"{name}: cannot measure: {exc.message}")
            continue
        evidence += _places(name, doc)
        if node is ctx.standby:
            standby_doc = doc
    if standby_doc is None:
        step.verdict = "error" if ctx.standby is not None else "skipped"
        step.evidence = "\n".join([*evidence, "the standby could not be measured"])
        return step
    st = ctx.standby_status
    errors = [e for e in st.errors if e.cause is Cause.DISK_FULL] if st is not None else []
    min_free = ctx.cfg.diagnose.min_free_bytes
    short = _short(standby_doc, errors, min_free)
    if not short:
        step.verdict = "ok"
        step.evidence = "\n".join(evidence)
        return step
    step.verdict, step.cause = "fault", Cause.DISK_FULL
    evidence += short
    need = sum(e.size for e in errors) + min_free
    if ctx.fix and ctx.standby is not None:
        removed = await ctx.standby.call("prune_backups", need_free=need)
        ctx.fixed += removed
        after = await ctx.standby.call("storage")
        still = _short(after, [], min_free)
        backup_free = next((p["free"] for p in after["places"] if p["kind"] == "backup" and "free" in p), 0)
        evidence.append(f"after pruning {len(removed)} backup set(s): " + "; ".join(_places("standby", after)))
        if still or (errors and backup_free < need):
            step.action = (
                f"Pruned {len(removed)} backup set(s), still short of space ({human_bytes(need)} needed): "
                f"free space on the standby's file systems by hand, or lower [backup] max_copies."
            )
        else:
            step.action = f"Pruned {len(removed)} backup set(s) (the newest kept); space is sufficient now."
    else:
        step.action = (
            "Run `hasync diagnose --fix` to prune the backup sets to [backup] max_copies (further, "
            "oldest first, if still full; never the newest), or free space on the standby; "
            f"{human_bytes(need)} are needed."
        )
    step.evidence = "\n".join(evidence)
    return step
