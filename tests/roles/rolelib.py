"""What the role tests share: a pair's roles and status through the CLI, and config edits."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pairlib import PairEnv


def status(env: PairEnv, node: str) -> dict[str, Any]:
    """`hasync status --json` on node "a" or "b"."""
    doc: dict[str, Any] = json.loads(env.hasync("status", "--json", node=node).stdout)
    return doc


def roles(env: PairEnv) -> tuple[str, str]:
    """(a's role, b's role), as their status says."""
    return status(env, "a")["role"], status(env, "b")["role"]


def run_json(env: PairEnv, node: str, *args: str) -> tuple[int, dict[str, Any]]:
    """A command with --json: its exit code and its document (stdout and stderr when it printed none)."""
    r = env.hasync(*args, "--json", node=node)
    try:
        return r.returncode, json.loads(r.stdout)
    except ValueError:
        return r.returncode, {"ok": False, "stdout": r.stdout, "stderr": r.stderr}


def external(env: PairEnv, initial: str | None) -> None:
    """[role] mode = "external"; without `initial`, both nodes start as standby."""
    for path in (env.pair.config_a, env.pair.config_b):
        text = path.read_text().replace('mode = "static"', 'mode = "external"')
        if initial is None:
            text = "\n".join(line for line in text.splitlines() if not line.startswith("active =")) + "\n"
        path.write_text(text)


def short_timeouts(env: PairEnv) -> None:
    """A peer timeout of 2 s: a takeover from a stopped peer does not wait the default 10 s."""
    for path in (env.pair.config_a, env.pair.config_b):
        text = path.read_text()
        path.write_text(text.replace('[peer]\nname = "', '[peer]\ntimeout_s = 2.0\nname = "'))


def started(make_pair: Callable[..., PairEnv], interval_s: float, **kw: Any) -> PairEnv:
    """A pair with one file, both agents running, the standby in sync."""
    env = make_pair(interval_s=interval_s, **kw)
    (env.src / "conf" / "a.xml").write_text("<a/>")
    env.chown_all()
    env.a.start()
    env.b.start()
    env.wait_standby_in_sync()
    return env
