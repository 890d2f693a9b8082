"""The agent's routes, one module per group, each handler taking the Node: `add_routes(app, node)`.

- `status`: liveness, metrics, the status document, a check or an audit now.
- `replication`: what the standby fetches from the active (info, tree, changes, files), and sync.
- `alarms`: this node's alarms, and keeping a diagnosis with its alarm.
- `diagnose`: one diagnosis fact or fix, and the whole procedure.
- `collect`: what a collecting peer fetches for the fault-information bundle.
"""
