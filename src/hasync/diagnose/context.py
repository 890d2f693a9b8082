"""What the steps of one diagnosis share: the config, both nodes, the alarm, the window, the fixes made."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hasync.config import Config
from hasync.diagnose.nodes import Node
from hasync.peer.client import AgentClient
from hasync.peer.models import PeerStatus


@dataclass
class Context:
    cfg: Config
    role: str  # this node's role
    local: Node
    peer: Node  # reached through the peer agent
    peer_client: AgentClient
    local_client: AgentClient | None  # this node's running agent, if any
    fix: bool
    window: tuple[datetime, datetime]
    alarm: dict[str, Any] | None = None
    peer_ok: bool = True  # set by the network step
    fixed: list[str] = field(default_factory=list)
    standby_status: PeerStatus | None = None  # the standby's brief status

    @property
    def standby(self) -> Node | None:
        """The standby node, or None when it is the unreachable peer."""
        if self.role == "standby":
            return self.local
        return self.peer if self.peer_ok else None

    @property
    def standby_client(self) -> AgentClient | None:
        if self.role == "standby":
            return self.local_client
        return self.peer_client if self.peer_ok else None

    def nodes(self) -> list[tuple[str, Node]]:
        """(name, node) of both nodes, the peer only when reachable."""
        out = [(self.cfg.node.name, self.local)]
        if self.peer_ok:
            out.append((self.cfg.peer.name, self.peer))
        return out

    def other(self, name: str) -> tuple[str, Node] | None:
        for n, node in self.nodes():
            if n != name:
                return n, node
        return None


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
