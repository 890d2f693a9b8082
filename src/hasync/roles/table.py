"""The role table, filled: importing this module imports every role module, each registering itself."""

from __future__ import annotations

from hasync.config import Config
from hasync.roles import active, standby
from hasync.roles.base import ROLES, Role

MODULES = (active, standby)  # imported for their registration in ROLES


def make_role(name: str, cfg: Config) -> Role:
    """A new role object of the class registered under `name` ("active" or "standby")."""
    return ROLES[name](cfg)
