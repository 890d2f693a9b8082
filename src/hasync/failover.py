"""The failover verdict (SPEC §10): would a switchover now lose nothing?

Safe only when the standby is in sync with the active, has nothing pending, has no file it
could not apply, and has heard from the active recently. An active the standby cannot reach is
never safe: the standby cannot know what it lacks.

The standby decides from its own state (`standby_verdict`), which it holds in memory: the cost
of a verdict is a few attribute reads, never a scan. The active relays the standby's verdict
from the standby's brief status (`active_verdict`), adding its own unreadable files; a standby
it cannot reach is not safe. `hasync check --failover` with no agent running decides from a
check run now (`from_check`): safe only when that check shows the pair in sync.

The JSON (docs/protocol.md §7.6): `failover_safe` (bool), `failover_reason` (null when safe,
else one short line), `failover_detail` (the figures behind it; DETAIL_KEYS, null = not known).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DETAIL_KEYS = (
    "in_sync",
    "pending_files",
    "pending_bytes",
    "apply_errors",
    "unreadable_on_active",
    "oldest_missing_s",
    "active_heard_s",
    "peer_reachable",
)


def _detail(**given: Any) -> dict[str, Any]:
    return {k: given.get(k) for k in DETAIL_KEYS}


@dataclass(frozen=True)
class Failover:
    """One failover verdict: safe, or the reason a switchover now would lose something."""

    safe: bool
    reason: str | None
    detail: dict[str, Any] = field(default_factory=_detail)

    def to_json(self) -> dict[str, Any]:
        return {"failover_safe": self.safe, "failover_reason": self.reason, "failover_detail": self.detail}


def _verdict(reasons: list[str], detail: dict[str, Any]) -> Failover:
    if not reasons:
        return Failover(True, None, detail)
    return Failover(False, "; ".join(reasons), detail)


def _age(seconds: float | None) -> str:
    return "" if seconds is None else f", the oldest missing change is {seconds:.0f} s old"


@dataclass(frozen=True)
class StandbyState:
    """What the standby knows of itself, read from memory (replication.standby.StandbySide)."""

    in_sync: bool | None  # its trees equal the active's roots as last heard (None: not yet synced)
    pending_files: int  # changes being applied now
    pending_bytes: int  # bytes of the files being fetched now
    apply_errors: int  # files it could not apply (or the active could not read)
    first_error: str | None  # "dir/path: cause" of the first of them
    peer_error: str | None  # why the active cannot be reached (None: reachable)
    heard_s: float | None  # seconds since it last heard from the active (None: never)
    max_silence_s: float  # past this without a word the active counts as unreachable
    oldest_missing_s: float | None = None  # age of the oldest change it lacks, when known


def standby_verdict(s: StandbyState) -> Failover:
    """The standby's verdict on itself: every reason a switchover now would lose something."""
    silent = s.heard_s is None or s.heard_s > s.max_silence_s
    reachable = s.peer_error is None and not silent
    detail = _detail(
        in_sync=s.in_sync,
        pending_files=s.pending_files,
        pending_bytes=s.pending_bytes,
        apply_errors=s.apply_errors,
        oldest_missing_s=None if s.oldest_missing_s is None else round(s.oldest_missing_s, 3),
        active_heard_s=None if s.heard_s is None else round(s.heard_s, 3),
        peer_reachable=reachable,
    )
    reasons = []
    if s.peer_error is not None:
        reasons.append(f"the active is unreachable ({s.peer_error}): the standby cannot know what it lacks")
    elif s.heard_s is None:
        reasons.append("the standby has not heard from the active since it started")
    elif silent:
        reasons.append(f"the standby has not heard from the active for {s.heard_s:.0f} s: it cannot know what it lacks")
    if s.apply_errors:
        first = f" (first: {s.first_error})" if s.first_error else ""
        reasons.append(f"{s.apply_errors} file(s) not applied on the standby{first}{_age(s.oldest_missing_s)}")
    if s.pending_files:
        reasons.append(f"{s.pending_files} change(s) pending ({s.pending_bytes} bytes to fetch)")
    if not s.in_sync and not reasons:
        what = "has not synced since it started" if s.in_sync is None else "differs from the active"
        reasons.append(f"the standby {what}{_age(s.oldest_missing_s)}")
    return _verdict(reasons, detail)


def relayed(doc: Any) -> Failover | None:
    """The standby's verdict as its status document carries it; None when it carries none."""
    if not isinstance(doc, dict) or not isinstance(doc.get("failover_safe"), bool):
        return None
    reason = doc.get("failover_reason")
    raw = doc.get("failover_detail")
    given = raw if isinstance(raw, dict) else {}
    # Figures only: a key this version does not know, or a value that is not a figure, is left out.
    detail = _detail(**{k: v for k, v in given.items() if k in DETAIL_KEYS and isinstance(v, bool | int | float)})
    safe = doc["failover_safe"]
    if not safe and not isinstance(reason, str):
        reason = "the standby says a switchover now is not safe"
    return Failover(safe, reason[:1000] if isinstance(reason, str) and not safe else None, detail)


def active_verdict(standby_doc: Any, peer_error: str | None, unreadable: int, first_unreadable: str | None) -> Failover:
    """The active's verdict: the standby's own (from its brief status `standby_doc`, None when
    `peer_error` says why it could not be had), and the active's files it cannot read."""
    reasons = []
    theirs = None if peer_error is not None else relayed(standby_doc)
    if peer_error is not None:
        reasons.append(f"the standby is unreachable ({peer_error}): what it lacks is not known")
        detail = _detail(peer_reachable=False)
    elif theirs is None:
        reasons.append("the standby reports no failover verdict (an older hasync?)")
        detail = _detail(peer_reachable=True)
    else:
        detail = {**theirs.detail, "peer_reachable": True}
        if theirs.reason:
            reasons.append(theirs.reason)
    detail["unreadable_on_active"] = unreadable
    if unreadable:
        first = f" (first: {first_unreadable})" if first_unreadable else ""
        reasons.append(f"{unreadable} file(s) cannot be read on the active{first}")
    return _verdict(reasons, detail)


def from_check(
    in_sync: bool, peer_reachable: bool, cause: str | None, first: str | None, lag_s: float | None
) -> Failover:
    """With no agent running: the verdict of a check run now (nothing syncs meanwhile, so any
    difference is lost in a switchover): safe only when it shows the pair in sync."""
    detail = _detail(
        in_sync=in_sync,
        oldest_missing_s=None if in_sync or lag_s is None else round(lag_s, 3),
        peer_reachable=peer_reachable,
    )
    if in_sync:
        return Failover(True, None, detail)
    where = f" ({first})" if first else ""
    return Failover(False, f"a check now finds the pair out of sync: {cause or 'unknown'}{where}", detail)


__all__ = ["DETAIL_KEYS", "Failover", "StandbyState", "active_verdict", "from_check", "relayed", "standby_verdict"]
