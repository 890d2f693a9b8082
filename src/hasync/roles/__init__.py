"""Role providers: who is active. Static now; ZooKeeper election comes with switchover (SPEC §10)."""

from __future__ import annotations

from typing import Protocol

from hasync.config import Config


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
    from hasync.errors import ConfigError

    raise ConfigError(f"{cfg.path}: role.mode: 'zookeeper' is not supported yet, use 'static'")
