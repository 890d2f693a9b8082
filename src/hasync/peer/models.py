"""What the peer's answers decode to (docs/protocol.md): small frozen values, made by the decoders in
`hasync.peer.protocol` once every field has been checked, so that no stage after them reads a loose map."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from hasync.errors import Cause, ScanError
from hasync.manifest import Entry

ACTIVE = "active"
STANDBY = "standby"


@dataclass(frozen=True)
class PeerInfo:
    """`GET /v1/info` (§7.2): who the peer is and, when it is the active, its change seq and Merkle roots."""

    node: str
    role: str  # what the peer says it is: "active" or "standby"
    hostname: str | None = None
    time: float | None = None
    # The active's only (zero values from a standby):
    instance: str = ""
    seq: int = 0
    roots: Mapping[str, bytes | None] = field(default_factory=dict)  # None: the sync dir does not exist
    with_owner: bool = False
    lag_s: float | None = None  # asked with `since`: age of the oldest change after it

    @property
    def is_active(self) -> bool:
        return self.role == ACTIVE


@dataclass(frozen=True)
class Change:
    """One change of the feed: a path of sync dir `dir` and its entry now (None: removed).

    Decoded one by one: a change whose path or entry is refused carries why (`refused`, with the `raw`
    path to report), and only that change is dropped."""

    dir: str
    raw: object  # the path as it came, for a refusal's report
    path: str = ""  # "" is the sync dir's root
    entry: Entry | None = None
    refused: Exception | None = None


@dataclass(frozen=True)
class ChangeFeed:
    """`GET /v1/changes` (§7.4): the changes after the standby's seq, or `reset` (start over with a walk)."""

    instance: str
    seq: int
    reset: bool
    changes: tuple[Change, ...]
    roots: Mapping[str, bytes | None]


@dataclass(frozen=True)
class FileHead:
    """F_HEAD (§8): a file's metadata before its bytes, or why its numbers are refused (that file only)."""

    raw: object  # the path as it came: decoded by the receiver (dec_path), which knows what it asked for
    meta: Entry | None  # None when refused
    refused: ValueError | None = None
    offset: int = 0  # resume: the data starts at this byte


@dataclass(frozen=True)
class FileFailed:
    """F_ERR (§8): a requested file the active did not send.

    `vanished`: it is gone (or no longer a regular file) since it was listed. Not a fault: the change
    feed brings its removal. Else `error` says why it could not be read."""

    raw: object
    error: ScanError
    vanished: bool = False


@dataclass(frozen=True)
class PathError:
    """A path the standby reports it could not bring in sync (its status `errors`)."""

    dir: str
    path: str
    cause: Cause
    reason: str
    size: int = 0  # bytes the path needs on the standby, when known (for disk_full)


@dataclass(frozen=True)
class PeerStatus:
    """`GET /v1/status?brief=1` of the standby, as the active's check reads it (§7.6)."""

    role: str | None
    hostname: str | None = None
    in_sync: bool | None = None
    lag_s: float | None = None
    cause: Cause | None = None
    errors: tuple[PathError, ...] = ()
    last_sync_at: str | None = None  # ISO 8601, as the standby's status shows it
    pending: int | None = None

    @property
    def is_standby(self) -> bool:
        return self.role == STANDBY
