"""Roles: which node is active, by the word of a role provider (`[role]` in the config today).

`node_role(cfg)` is this node's role. What each role does (its side, its check, its status) is the
role table in `hasync.node`; this package stays below everything that replicates, so the CLI and the
bundle ask "which role is this node?" without loading the replication code.
"""

from hasync.roles.providers import RoleName, RoleProvider, StaticRoles, node_role, provider

__all__ = ["RoleName", "RoleProvider", "StaticRoles", "node_role", "provider"]
