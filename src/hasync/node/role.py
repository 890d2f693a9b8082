"""What every role is: its side, its check, its peer client, and its answers to what the routes ask.

A role is chosen from the table `ROLES` by name (`hasync.node.table.make_role`), into which each
role module registers its class, as Syncthing's folder modes register in `folderFactories`. Code
above the roles never asks which role it holds: it asks the role, and a role that does not do what
is asked answers `WrongRole` (HTTP 409 `wrong_role`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, TypeVar

from hasync.check import Verdict
from hasync.config import Config
from hasync.errors import Starting, WrongRole
from hasync.failover import Failover
from hasync.keeper import AlarmDuty
from hasync.peer.client import AgentClient
from hasync.replication.active import ActiveSide
from hasync.replication.base import Side
from hasync.replication.standby import StandbySide
from hasync.roles.providers import RoleName
from hasync.roles.state import Fence


class Check(Protocol):
    """A role's sync check (hasync.check): one verdict on the pair, not yet recorded."""

    async def verdict(self) -> Verdict: ...


R = TypeVar("R", bound="Role")

ROLES: dict[str, type[Role]] = {}


def register(cls: type[R]) -> type[R]:
    """Class decorator: put a role in the table under its name."""
    ROLES[cls.name] = cls
    return cls


class Role:
    """One node's role: the replication side it runs, the check it runs, the client it talks to
    the peer with, and its parts of `/v1/info` and of the status document.

    A role object lives from `start()` to `stop()`; replacing the role at run time (the Node's
    `replace_role`) stops this one and starts a new object of the other class.
    """

    name: ClassVar[RoleName]
    # In a deep check (`hasync check --deep`) this node audits itself before asking the peer to.
    audits_first: ClassVar[bool]
    # The diagnosis runner is given this node's brief status document as the standby's status.
    diagnosis_status: ClassVar[bool] = False
    # How this role takes part in alarm 45641 (the keeper asks this, never the role's name).
    alarm_duty: ClassVar[AlarmDuty]

    side: Side
    check: Check
    peer: AgentClient

    def __init__(self, cfg: Config, fence: Fence) -> None:
        self.cfg = cfg
        self.fence = fence
        self.ready = False  # set once the side has started (the active has scanned its dirs)

    # -- life cycle ----------------------------------------------------------
    async def start(self) -> None:
        """Start the side (watchers, scans, background tasks); the role is ready once it has."""
        await self.side.start()
        self.ready = True

    async def prepare_once(self) -> None:
        """For one check without an agent: know the local trees, start nothing."""
        await self.side.prepare()

    async def look_once_more(self) -> None:
        """Before this role is replaced: bring its trees up to the disk (what the node had is then
        listed whole, hasync.node.switch). Nothing to do but for the active."""

    async def stop(self) -> None:
        """Stop the side and its tasks, close the peer client."""
        self.ready = False
        await self.side.stop()
        await self.close()

    async def close(self) -> None:
        """Close the peer client (a role that was never started has nothing else to stop)."""
        await self.peer.close()

    def client(self) -> AgentClient:
        """A client to the peer agent, fenced by this node's role and epoch."""
        cfg = self.cfg
        limit = cfg.limits.max_response_bytes
        return AgentClient(cfg.peer_url(), cfg.token, cfg.peer.timeout_s, cfg.peer.name, limit, fence=self.fence)

    # -- what the routes and the node ask --------------------------------------
    def require_ready(self) -> None:
        """Starting (503) until the side has started: before its first scan its trees say nothing."""
        if not self.ready:
            raise Starting(f"{self.cfg.node.name} is starting: it is still scanning its sync dirs")

    def serving(self) -> ActiveSide:
        """The side that serves trees, the change feed and file contents: the active's only."""
        raise WrongRole(f"{self.cfg.node.name} is the standby; ask the active node")

    def pulling(self) -> StandbySide:
        """The side that pulls and applies the active's changes: the standby's only."""
        raise WrongRole(f"{self.cfg.node.name} is the active node: sync runs on the standby")

    def listing(self, dir_name: str, dirs: list[str]) -> list[list[object]]:
        """`POST /v1/tree`: listings of `dirs` in this node's tree of `dir_name`."""
        return self.serving().listing(dir_name, dirs)

    async def changes(self, instance: str, since: int, wait: float) -> dict[str, object]:
        """The change feed after `since`, waiting up to `wait` seconds for one."""
        return await self.serving().changes(instance, since, wait)

    def info(self, owner: str | None, since: int | None) -> dict[str, Any]:
        """This role's part of `/v1/info` (none but the active's)."""
        return {}

    async def status(self, brief: bool, last: Verdict | None) -> dict[str, Any]:
        """This role's part of the status document; `last` is the last recorded verdict."""
        raise NotImplementedError

    async def failover(self, last: Verdict | None) -> Failover:
        """The failover verdict (hasync.failover) from what this role holds; `last` is the last
        recorded verdict. Cheap: no scan, at most one brief request to the peer."""
        raise NotImplementedError

    async def failover_alone(self, v: Verdict) -> Failover:
        """The failover verdict of `hasync check --failover` with no agent running, after the check `v`."""
        return await self.failover(v)

    @property
    def standby_hostname(self) -> str | None:
        """The standby's hostname for an alarm this node raises, when it is not this node's own."""
        return None
