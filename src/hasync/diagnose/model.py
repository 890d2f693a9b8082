"""The diagnosis result: steps with verdict, evidence and action; `diagnose --json` prints it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from hasync.errors import Cause

Verdict = Literal["ok", "fault", "skipped", "error"]


@dataclass
class Step:
    id: str
    title: str
    verdict: Verdict = "skipped"
    evidence: str = ""
    action: str | None = None
    cause: Cause | None = None
    elapsed_s: float = 0.0  # wall time of the step: where a slow diagnosis spent it

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "verdict": self.verdict,
            "evidence": self.evidence,
            "action": self.action,
            "elapsed_s": round(self.elapsed_s, 3),
        }


@dataclass
class Diagnosis:
    steps: list[Step] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    cleared: bool | None = None
    alarm: str | None = None  # fingerprint of the alarm diagnosed
    started_at: str = ""
    node: str = ""

    @property
    def cause(self) -> Cause | None:
        """The cause of the first step that found a fault, in the procedure's order."""
        return next((s.cause for s in self.steps if s.verdict == "fault" and s.cause is not None), None)

    def as_json(self) -> dict[str, Any]:
        return {
            "cause": None if self.cause is None else self.cause.value,
            "steps": [s.as_json() for s in self.steps],
            "fixed": list(self.fixed),
            "cleared": self.cleared,
            "alarm": self.alarm,
            "started_at": self.started_at,
            "node": self.node,
        }
