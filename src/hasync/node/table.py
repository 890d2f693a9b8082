"""The role table, filled: importing this module imports every role module, each registering itself."""

from __future__ import annotations

from hasync.config import Config
from hasync.node.active import ActiveRole
from hasync.node.role import ROLES, Role
from hasync.node.standby import StandbyRole

REGISTERED = (ActiveRole, StandbyRole)  # their modules are imported for their registration in ROLES


def make_role(name: str, cfg: Config) -> Role:
    """A new role object of the class registered under `name` ("active" or "standby")."""
    return ROLES[name](cfg)
