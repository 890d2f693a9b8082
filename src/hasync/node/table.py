"""The role table, filled: importing this module imports every role module, each registering itself."""

from __future__ import annotations

from hasync.config import Config
from hasync.node.active import ActiveRole
from hasync.node.role import ROLES, Role
from hasync.node.standby import StandbyRole
from hasync.roles.state import Fence

REGISTERED = (ActiveRole, StandbyRole)  # their modules are imported for their registration in ROLES


def make_role(name: str, cfg: Config, fence: Fence) -> Role:
    """A new role object of the class registered under `name` ("active" or "standby"), its peer client
    fenced by `fence` (this node's role and epoch)."""
    return ROLES[name](cfg, fence)
