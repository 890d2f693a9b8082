"""Roles: which node is active (the providers) and what each role does (the role table).

- `providers`: who is active (`[role]` in the config); `node_role(cfg)` is this node's role.
- `base`: `Role`, what every role carries and answers, and the table `ROLES` each role registers in.
- `active`, `standby`: the two roles, each a small class on `Role` that registers itself.
- `table`: `make_role(name, cfg)`, the table filled (it imports every role module).

Only the providers are imported here: the CLI asks "which role is this node?" without loading
the replication code that the role classes carry.
"""

from hasync.roles.providers import RoleName, RoleProvider, StaticRoles, node_role, provider

__all__ = ["RoleName", "RoleProvider", "StaticRoles", "node_role", "provider"]
