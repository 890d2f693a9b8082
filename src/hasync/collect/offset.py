"""The peer's clock offset, measured NTP-style over ``GET /v1/collect/info``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from hasync.peer.client import AgentClient
from hasync.peer.protocol import API

INFO_SAMPLES = 5


@dataclass(frozen=True)
class ClockOffset:
    """The peer's clock minus ours, NTP-style: the peer's time against the midpoint of the request."""

    offset_s: float
    rtt_s: float
    samples: int

    @property
    def applied_s(self) -> float:
        """What the peer's window is shifted by: the offset to the millisecond of the log stamps, or 0 when it
        is within the measurement's uncertainty (then the clocks agree as far as we can tell, and shifting by
        noise would only move the window's edges at random)."""
        return 0.0 if abs(self.offset_s) <= self.rtt_s / 2 else round(self.offset_s, 3)

    def as_json(self) -> dict[str, Any]:
        return {
            "peer_minus_local_s": round(self.offset_s, 4),
            "uncertainty_s": round(self.rtt_s / 2, 4),
            "rtt_s": round(self.rtt_s, 4),
            "samples": self.samples,
            "method": f"GET /v1/collect/info: the peer's time minus the midpoint of the request, "
            f"the sample of lowest round trip of {self.samples}",
            "applied_to_peer_window_s": self.applied_s,
        }


async def measure_offset(peer: AgentClient, samples: int = INFO_SAMPLES) -> tuple[ClockOffset, dict[str, Any]]:
    """The peer's clock offset and its identity (from ``GET /v1/collect/info``)."""
    best: tuple[float, float] | None = None
    info: dict[str, Any] = {}
    for _ in range(samples):
        t0, m0 = time.time(), time.monotonic()
        info = await peer.json("GET", f"{API}/collect/info")
        m1 = time.monotonic()
        rtt = m1 - m0
        offset = float(info["time"]) - (t0 + rtt / 2)
        if best is None or rtt < best[0]:
            best = (rtt, offset)
    assert best is not None
    return ClockOffset(best[1], best[0], samples), info
