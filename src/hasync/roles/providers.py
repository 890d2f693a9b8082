"""Role providers: which node of the pair is active. Static now; ZooKeeper election comes with switchover (SPEC §10)."""

from __future__ import annotations

from typing import Literal, Protocol

from hasync.config import Config
from hasync.errors import ConfigError

RoleName = Literal["active", "standby"]


class RoleProvider(Protocol):
    """Answers which node of the pair is active."""

    def active_node(self) -> str: ...


class StaticRoles:
    """The config's `[role] active` names the active node."""

    def __init__(self, cfg: Config) -> None:
        assert cfg.role.active is not None
        self._active = cfg.role.active

    def active_node(self) -> str:
        return self._active


def provider(cfg: Config) -> RoleProvider:
    if cfg.role.mode == "static":
        return StaticRoles(cfg)
    raise ConfigError(f"{cfg.path}: role.mode: 'zookeeper' is not supported yet, use 'static'")


def node_role(cfg: Config) -> RoleName:
    """This node's role, as the role provider says now (ConfigError when it cannot say)."""
    return "active" if provider(cfg).active_node() == cfg.node.name else "standby"
