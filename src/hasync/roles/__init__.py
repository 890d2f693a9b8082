"""Roles: which node is active, its fencing epoch, and who decides (a role provider).

`node_role(cfg)` is this node's role now: the one kept in `<state_dir>/role.json`, else the config's
initial one. What each role does (its side, its check, its status) is the role table in
`hasync.node`; this package stays below everything that replicates, so the CLI and the bundle ask
"which role is this node?" without loading the replication code.
"""

from hasync.config import Config
from hasync.roles.providers import ExternalRoles, RoleName, RoleProvider, StaticRoles, provider
from hasync.roles.state import Fence, RoleState, load


def node_role(cfg: Config) -> RoleName:
    """This node's role now (ConfigError when its kept role file is damaged or the mode unsupported)."""
    provider(cfg)  # an unsupported mode is refused before any role is read
    return load(cfg).role


__all__ = [
    "ExternalRoles",
    "Fence",
    "RoleName",
    "RoleProvider",
    "RoleState",
    "StaticRoles",
    "node_role",
    "provider",
]
