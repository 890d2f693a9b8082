"""Step 3, sync_files: missing sync dirs, junk `sed*` files and unreadable files on both nodes; delete junk."""

from __future__ import annotations

import shlex
from typing import Any

from hasync.diagnose.context import Context
from hasync.diagnose.model import Step
from hasync.errors import Cause, PeerError

TITLE = "Check whether the synchronization files exist and whether their permissions are valid"


def _ll(f: dict[str, Any]) -> str:
    return f"{f['ls']} {f['owner']}:{f['group']} size {f['size']}"


async def run(ctx: Context) -> Step:
    step = Step("sync_files", TITLE)
    evidence: list[str] = []
    actions: list[str] = []
    found: dict[str, dict[str, Any]] = {}
    roots: dict[str, dict[str, str]] = {}
    for name, node in ctx.nodes():
        try:
            doc, where = await node.call("files"), await node.call("roots")
            found[name], roots[name] = doc, where
        except PeerError as exc:
            evidence.append(f"{name}: cannot look: {exc.message}")
    causes: list[Cause] = []
    for name, doc in found.items():
        other = ctx.other(name)
        for m in doc["missing"]:
            causes.append(Cause.SOURCE_MISSING)
            evidence.append(f"{name}: sync dir {m['dir']!r} does not exist: {m['path']}")
            actions.append(
                f"on {name}: create {m['path']} (mkdir -p {shlex.quote(m['path'])}) with the owner "
                f"and mode of the other node's, or correct [[sync.dirs]] path"
            )
        listed = [("junk", f) for f in doc["junk"]] + [("unreadable", f) for f in doc["unreadable"]]
        if not listed:
            continue
        theirs: list[dict[str, Any] | None] = [None] * len(listed)
        if other is not None:
            try:
                theirs = await other[1].call("stat", paths=[[f["dir"], f["path"]] for _, f in listed])
            except PeerError:
                pass
        junk_paths = []
        for (what, f), their in zip(listed, theirs, strict=True):
            where = f"{roots[name].get(f['dir'], f['dir'])}/{f['path']}"
            on_other = f"on {other[0]}: " + (_ll(their) if their else "absent") if other else ""
            if what == "junk":
                causes.append(Cause.JUNK_FILE)
                evidence.append(f"{name}: junk file {where}: {_ll(f)} (name sed*, size 0, mode 0000); {on_other}")
                junk_paths.append([f["dir"], f["path"]])
                continue
            causes.append(Cause.PERMISSION_DENIED)
            evidence.append(f"{name}: unreadable {f['type']} {where}: {_ll(f)}; {on_other}")
            q = shlex.quote(where)
            if their:
                actions.append(f"on {name}: chmod {their['mode']} {q} && chown {their['owner']}:{their['group']} {q}")
            else:
                actions.append(
                    f"on {name}: chmod u+r{'x' if f['type'] == 'dir' else ''} {q} "
                    f"(the other node has no such path to copy the mode from)"
                )
        if junk_paths:
            if ctx.fix:
                node = ctx.local if name == ctx.cfg.node.name else ctx.peer
                done = await node.call("delete_junk", paths=junk_paths)
                ctx.fixed += [f"{name}: {d}" for d in done]
                actions.append(f"deleted {len(done)} junk file(s) on {name}")
            else:
                actions.append(
                    f"run `hasync diagnose --fix` to delete the {len(junk_paths)} junk file(s) on {name}"
                    f" (only files named sed*, of size 0 and mode 0000 are deleted)"
                )
    # What the standby itself failed to write for lack of permission.
    for e in ctx.standby_status.errors if ctx.standby_status is not None else ():
        if e.cause is Cause.PERMISSION_DENIED and "(on the standby)" in e.reason:
            causes.append(Cause.PERMISSION_DENIED)
            evidence.append(f"standby cannot write {e.dir}/{e.path}: {e.reason}")
    order = (Cause.SOURCE_MISSING, Cause.JUNK_FILE, Cause.PERMISSION_DENIED)
    cause = next((c for c in order if c in causes), None)
    if cause is None:
        step.verdict = "ok" if found else "error"
        evidence.append("no missing sync dir, no junk file, no unreadable path" if found else "")
    else:
        step.verdict, step.cause = "fault", cause
        step.action = "; ".join(actions) or None
    step.evidence = "\n".join(e for e in evidence if e)
    return step
