"""The role this node holds now and its fencing epoch, kept in `<state_dir>/role.json` (SPEC §10).

The config's `[role]` gives only the initial value (epoch 0). Every role change gives a strictly
larger epoch and is written (atomically, fsynced) before it takes effect, so that a node restarted at
any moment comes back in the role it last took, never in one it had given up.

`Fence` applies the epoch rules to what the peer says (the `Hasync-Epoch` and `Hasync-Role` headers of
every request and answer between the agents, `hasync.peer.client` and the agent's middleware):

- a higher epoch is adopted (kept durably); an active that meets an active of a higher epoch has been
  superseded: it becomes standby at that epoch at once (the Node swaps the role object soon after);
- an answer from a node that says it is active at an older epoch than this standby has seen is
  refused (`StaleEpoch`): a standby takes data only from the active of the highest epoch.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hasync import clock
from hasync.config import Config
from hasync.errors import ConfigError, StaleEpoch
from hasync.fsutil import atomic_write
from hasync.halog import kv
from hasync.roles.providers import RoleName, provider

log = logging.getLogger("hasync.roles")

ROLE_FILE = "role.json"
MAX_EPOCH = 2**53 - 1  # JSON numbers stay exact
MAX_FILE_BYTES = 4096
ROLES: tuple[RoleName, ...] = ("active", "standby")
EPOCH_HEADER = "Hasync-Epoch"
ROLE_HEADER = "Hasync-Role"


@dataclass(frozen=True)
class RoleState:
    """This node's role, its epoch, since when (wall clock) and why."""

    role: RoleName
    epoch: int
    since: float
    reason: str


def parse_epoch(value: object) -> int:
    """An epoch as it arrives (a header's text, a JSON number): ValueError unless 0..MAX_EPOCH."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"epoch {value!r:.40} is not an integer")
    if isinstance(value, str):
        if not value.isascii() or not value.isdigit() or len(value) > 16:
            raise ValueError(f"epoch {value!r:.40} is not an integer")
        value = int(value)
    if not 0 <= value <= MAX_EPOCH:
        raise ValueError(f"epoch {value} is out of range 0..{MAX_EPOCH}")
    return value


def parse_role(value: object) -> RoleName:
    if value == "active":
        return "active"
    if value == "standby":
        return "standby"
    raise ValueError(f"role {value!r:.40} is neither 'active' nor 'standby'")


def role_path(cfg: Config) -> Path:
    return cfg.node.state_dir / ROLE_FILE


def initial(cfg: Config) -> RoleState:
    """The role the config gives a node that has never changed role (epoch 0)."""
    active = provider(cfg).initial_active()
    role: RoleName = "active" if active == cfg.node.name else "standby"
    why = f"initial: [role] active = {active!r}" if active else "initial: no [role] active, waiting for `role set`"
    return RoleState(role, 0, clock.now(), why)


def load(cfg: Config) -> RoleState:
    """The kept role, else the initial one. A kept file that is not what this module writes stops
    the program with one line (ConfigError): guessing a role could make a second active."""
    path = role_path(cfg)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return initial(cfg)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the kept role: {exc.strerror or exc}") from None
    try:
        if len(raw) > MAX_FILE_BYTES:
            raise ValueError(f"more than {MAX_FILE_BYTES} bytes")
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        since = doc.get("since_ts")
        if isinstance(since, bool) or not isinstance(since, int | float):
            raise ValueError("since_ts is not a number")
        reason = doc.get("reason", "")
        if not isinstance(reason, str):
            raise ValueError("reason is not a string")
        return RoleState(parse_role(doc.get("role")), parse_epoch(doc.get("epoch")), float(since), reason[:500])
    except ValueError as exc:
        raise ConfigError(
            f"{path}: the kept role is damaged ({exc}); restore it, or delete it to start from [role] in the config"
        ) from None


def save(cfg: Config, state: RoleState) -> None:
    """Keep `state` (atomic and durable: a crash leaves the old file or the new one)."""
    doc = {"role": state.role, "epoch": state.epoch, "since_ts": state.since, "reason": state.reason}
    atomic_write(role_path(cfg), (json.dumps(doc, sort_keys=True) + "\n").encode(), mode=0o644)


class Fence:
    """This node's role and epoch, and the epoch rules applied to what the peer says.

    `on_superseded(state)` is called (once per epoch) when this active met an active of a higher epoch:
    the new state (standby) is already kept; the Node swaps the role object."""

    def __init__(self, cfg: Config, state: RoleState | None = None) -> None:
        self.cfg = cfg
        self.state = load(cfg) if state is None else state
        self.on_superseded: Callable[[RoleState], None] | None = None
        self._lock = threading.Lock()  # set() may run in a worker thread (a CLI's one-off)

    @property
    def epoch(self) -> int:
        return self.state.epoch

    @property
    def role(self) -> RoleName:
        return self.state.role

    def headers(self) -> dict[str, str]:
        """What every request and answer of this node carries."""
        return {EPOCH_HEADER: str(self.state.epoch), ROLE_HEADER: self.state.role}

    def set(self, role: RoleName, epoch: int, reason: str) -> RoleState:
        """Take `role` at `epoch` (never lower than the current one, at most MAX_EPOCH), kept before it
        is used. A standby state that cannot be kept (a full or read-only state dir) is taken all the
        same, with an ERROR: giving up the active role is the safe direction, and a node restarted on
        its old kept "active" yields again when it hears the newer epoch. Becoming active is refused
        (OSError) when it cannot be kept."""
        with self._lock:
            if epoch < self.state.epoch:
                raise StaleEpoch(f"epoch {epoch} is older than this node's epoch {self.state.epoch}")
            if epoch > MAX_EPOCH:
                raise StaleEpoch(f"epoch {epoch} is past the largest epoch {MAX_EPOCH}")
            if (role, epoch) == (self.state.role, self.state.epoch):
                return self.state
            new = RoleState(role, epoch, clock.now() if role != self.state.role else self.state.since, reason)
            try:
                save(self.cfg, new)
            except OSError as exc:
                if role == "active":
                    raise
                log.error(
                    "cannot keep the role, taken in memory only %s",
                    kv(path=role_path(self.cfg), role=role, epoch=epoch, error=exc.strerror or exc),
                )
            old, self.state = self.state, new
        log.info(
            "role kept %s",
            kv(node=self.cfg.node.name, role=role, epoch=epoch, was=old.role, was_epoch=old.epoch, reason=reason),
        )
        return new

    @property
    def parity(self) -> int:
        """The parity of the epochs this node takes (0 for the name that sorts first): two nodes that
        each change role alone (forced, on both sides of a partition) never take the same epoch."""
        return 0 if self.cfg.node.name < self.cfg.peer.name else 1

    def next_epoch(self, peer_epoch: int = 0) -> int:
        """The epoch of a role change this node makes: above this node's and the peer's, of its parity."""
        epoch = max(self.state.epoch, peer_epoch) + 1
        return epoch if epoch % 2 == self.parity else epoch + 1

    def heard(self, epoch: int, peer_role: str, answer: bool) -> None:
        """Apply the epoch rules to the peer's `epoch` and role. `answer`: it came with an answer to this
        node (refused, StaleEpoch, when it is a stale active's, or when it superseded this active: the
        call it answered was made as the active), not with a request the peer sent (served)."""
        mine = self.state
        peer = self.cfg.peer.name
        # Two actives at one epoch (not made by this protocol, whose epochs differ by parity): the node
        # whose name sorts last yields, so that the pair never stays with two.
        tie = epoch == mine.epoch and mine.role == "active" and peer_role == "active" and peer < self.cfg.node.name
        if epoch > mine.epoch or tie:
            if mine.role == "active":  # any newer epoch: this node's term is over, whatever the peer is now
                new = self.set("standby", epoch, f"superseded: {peer} is {peer_role} at epoch {epoch}")
                log.warning(
                    "this node is the active no more %s",
                    kv(node=self.cfg.node.name, peer=peer, peer_epoch=epoch, was_epoch=mine.epoch),
                )
                if self.on_superseded is not None:
                    self.on_superseded(new)
                if not answer:  # a request of the new active (its hand-over, its check): served as standby
                    return
                raise StaleEpoch(
                    f"{self.cfg.node.name} was active at epoch {mine.epoch}; {peer} is {peer_role} at epoch "
                    f"{epoch}: {self.cfg.node.name} becomes standby"
                )
            self.set(mine.role, epoch, f"epoch {epoch} learned from {peer} ({peer_role})")
        elif answer and epoch < mine.epoch and peer_role == "active" and mine.role == "standby":
            raise StaleEpoch(
                f"{peer} says it is active at epoch {epoch}, older than epoch {mine.epoch}: its data is refused"
            )
