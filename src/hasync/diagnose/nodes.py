"""The two nodes as a diagnosis sees them: facts and fixes, in-process or through an agent."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from hasync.config import Config
from hasync.diagnose import facts
from hasync.diagnose.logsummary import summarize
from hasync.errors import BadRequest, PathRefused
from hasync.fsutil import validate_relpath
from hasync.logcut import window_time
from hasync.peer.client import AgentClient

DIAG = "/v1/diag"


class Node(Protocol):
    name: str

    async def call(self, op: str, **args: Any) -> Any:
        """Run `op` (see OPS) on that node and return its JSON result."""
        ...


MAX_PATHS = 10_000  # per request: the diagnosis sends at most 2 x 200 findings


def path_args(cfg: Config, raw: Any) -> list[tuple[str, str]]:
    """The ``paths`` argument of `stat` and `delete_junk`: ``[[dir, path], ...]``, each path checked by
    the rules every path from a peer obeys (fsutil.validate_relpath, docs/protocol.md §9). One bad
    path refuses the whole request (PathRefused: 400 path_refused) before anything is done. A dir
    name this node does not know is kept (its path is then absent here: null, or not deleted)."""
    if not isinstance(raw, list) or len(raw) > MAX_PATHS:
        raise PathRefused(f"paths must be a list of at most {MAX_PATHS} [dir, path] pairs")
    out: list[tuple[str, str]] = []
    for pair in raw:
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise PathRefused(f"{pair!r:.80} is not a [dir, path] pair of strings")
        dir_name, rel = pair
        try:
            validate_relpath(rel)
        except PathRefused as exc:
            raise PathRefused(f"dir {dir_name!r:.40}: {exc.message}") from None
        out.append((dir_name, rel))
    return out


def run_op(cfg: Config, op: str, args: dict[str, Any]) -> Any:
    """One diagnosis operation on this node (what POST /v1/diag runs in the agent). Bad arguments
    raise BadRequest (400); any other exception is a bug (500)."""
    if op == "storage":
        return facts.storage_facts(cfg)
    if op == "files":
        return facts.file_facts(cfg)
    if op == "stat":
        return facts.stat_paths(cfg, path_args(cfg, args.get("paths")))
    if op == "prune_backups":
        need_free = args.get("need_free", 0)
        if not isinstance(need_free, int) or need_free < 0:
            raise BadRequest('"need_free" must be a number of bytes')
        return facts.prune_backups(cfg, need_free)
    if op == "delete_junk":
        return facts.delete_junk(cfg, path_args(cfg, args.get("paths")))
    if op == "log_summary":
        start, end = window_time(args.get("start"), '"start"'), window_time(args.get("end"), '"end"')
        return summarize(cfg.node.log_dir, start, end, cfg.masker().text)
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
