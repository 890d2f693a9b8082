"""The two nodes as a diagnosis sees them: facts and fixes, in-process or through an agent."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

from hasync.diagnose import facts

if TYPE_CHECKING:
    from hasync.agent.client import AgentClient
    from hasync.config import Config

DIAG = "/v1/diag"


class Node(Protocol):
    name: str

    async def call(self, op: str, **args: Any) -> Any:
        """Run `op` (see OPS) on that node and return its JSON result."""
        ...


def run_op(cfg: Config, op: str, args: dict[str, Any]) -> Any:
    """One diagnosis operation on this node (what POST /v1/diag runs in the agent)."""
    if op == "storage":
        return facts.storage_facts(cfg)
    if op == "files":
        return facts.file_facts(cfg)
    if op == "stat":
        return facts.stat_paths(cfg, [(str(d), str(p)) for d, p in args["paths"]])
    if op == "prune_backups":
        return facts.prune_backups(cfg, int(args.get("need_free", 0)))
    if op == "delete_junk":
        return facts.delete_junk(cfg, [(str(d), str(p)) for d, p in args["paths"]])
    if op == "log_summary":
        from datetime import datetime

        from hasync.collect import Masker
        from hasync.diagnose.logsummary import summarize

        start, end = datetime.fromisoformat(args["start"]), datetime.fromisoformat(args["end"])
        return summarize(cfg.node.log_dir, start, end, Masker.for_config(cfg).text)
    if op == "roots":
        return {d.name: str(d.path) for d in cfg.sync.dirs}
    raise ValueError(f"unknown diagnosis operation {op!r}")


class LocalNode:
    """This node, in this process (when its agent is not running)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.name = cfg.node.name

    async def call(self, op: str, **args: Any) -> Any:
        return await asyncio.to_thread(run_op, self.cfg, op, args)


class AgentNode:
    """A node through its agent (the peer, or this node's running agent)."""

    def __init__(self, name: str, client: AgentClient, timeout_s: float = 60.0) -> None:
        self.name = name
        self.client = client
        self.timeout_s = timeout_s

    async def call(self, op: str, **args: Any) -> Any:
        return await self.client.json("POST", DIAG, {"op": op, **args}, timeout=self.timeout_s)
