"""Role providers: who decides which node of the pair is active (SPEC §10).

`static`: the config's `[role] active` names the initial active; after that, only `hasync switchover`
changes the roles. `external`: an HA manager (keepalived, Pacemaker, the platform's arbiter) decides
and says so with `hasync role set`; `[role] active` is optional there (without it both nodes start as
standby). ZooKeeper election is the next provider; `provider()` refuses it until then.

The role a node holds now is not the provider's initial word but the kept one (`hasync.roles.state`).
"""

from __future__ import annotations

from typing import Literal, Protocol

from hasync.config import Config
from hasync.errors import ConfigError

RoleName = Literal["active", "standby"]


class RoleProvider(Protocol):
    """Says which node is active at first, and whether an outside manager sets the roles."""

    # `hasync role set` is how this provider's decisions arrive (else it is refused: use switchover).
    external: bool

    def initial_active(self) -> str | None: ...


class StaticRoles:
    """The config's `[role] active` names the initial active node."""

    external = False

    def __init__(self, cfg: Config) -> None:
        assert cfg.role.active is not None  # config.load checks it in static mode
        self._active = cfg.role.active

    def initial_active(self) -> str | None:
        return self._active


class ExternalRoles:
    """An HA manager sets the roles (`hasync role set`); `[role] active`, if given, is the first word."""

    external = True

    def __init__(self, cfg: Config) -> None:
        self._active = cfg.role.active

    def initial_active(self) -> str | None:
        return self._active


def provider(cfg: Config) -> RoleProvider:
    if cfg.role.mode == "static":
        return StaticRoles(cfg)
    if cfg.role.mode == "external":
        return ExternalRoles(cfg)
    raise ConfigError(f"{cfg.path}: role.mode: 'zookeeper' is not supported yet, use 'static' or 'external'")
