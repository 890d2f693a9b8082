"""The two nodes as a diagnosis sees them: facts and fixes, in-process or through an agent."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from hasync.diagnose import facts
from hasync.errors import BadRequest

if TYPE_CHECKING:
    from hasync.agent.client import AgentClient
    from hasync.config import Config

DIAG = "/v1/diag"


class Node(Protocol):
    name: str

    async def call(self, op: str, **args: Any) -> Any:
        """Run `op` (see OPS) on that node and return its JSON result."""
        ...


def _pairs(args: dict[str, Any]) -> list[tuple[str, str]]:
    """The "paths" argument: [[dir, path], ...] of strings (BadRequest otherwise)."""
    paths = args.get("paths")
    if not isinstance(paths, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in paths
    ):
        raise BadRequest('"paths" must be a list of [dir, path] strings')
    return [(d, p) for d, p in paths]


def _time(args: dict[str, Any], key: str) -> datetime:
    try:
        return datetime.fromisoformat(args[key])
    except (KeyError, TypeError, ValueError):
        raise BadRequest(f'"{key}" must be an ISO 8601 time') from None


def run_op(cfg: Config, op: str, args: dict[str, Any]) -> Any:
    """One diagnosis operation on this node (what POST /v1/diag runs in the agent). Bad arguments
    raise BadRequest (400); any other exception is a bug (500)."""
    if op == "storage":
        return facts.storage_facts(cfg)
    if op == "files":
        return facts.file_facts(cfg)
    if op == "stat":
        return facts.stat_paths(cfg, _pairs(args))
    if op == "prune_backups":
        need_free = args.get("need_free", 0)
        if not isinstance(need_free, int) or need_free < 0:
            raise BadRequest('"need_free" must be a number of bytes')
        return facts.prune_backups(cfg, need_free)
    if op == "delete_junk":
        return facts.delete_junk(cfg, _pairs(args))
    if op == "log_summary":
        from hasync.collect import Masker
        from hasync.diagnose.logsummary import summarize

        start, end = _time(args, "start"), _time(args, "end")
        return summarize(cfg.node.log_dir, start, end, Masker.for_config(cfg).text)
    if op == "roots":
        return {d.name: str(d.path) for d in cfg.sync.dirs}
    raise BadRequest(f"unknown diagnosis operation {op[:40]!r}")


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
