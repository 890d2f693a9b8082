"""The exception tree and the cause identifiers of the spec (SPEC §3).

    HasyncError                 exit 1, HTTP 500, code "error"
    ├── ConfigError             exit 2: a bad config file, key or value
    ├── UsageError              exit 2: a bad command-line argument
    ├── PathRefused             HTTP 400: a path from a peer failed validation
    ├── BadRequest              HTTP 400: a request the agent cannot use (malformed, wrong type)
    │   └── TooLarge            HTTP 413: a request body over limits.max_body_bytes
    ├── LockHeld                exit 1: another process writes this node's state
    ├── WrongRole               HTTP 409: the request is for the other role
    ├── Starting                HTTP 503: the agent has not finished starting
    ├── StoreError              exit 1, HTTP 503: the alarm store cannot be opened, read or written
    │   └── StoreUnavailable    its database failed (connect, lock, damage): the agent goes on without it
    ├── NotifyError             HTTP 502: a notifier could not deliver (the dispatcher retries)
    └── PeerError               exit 1, HTTP 502: talking to the peer agent failed
        ├── MalformedAnswer     the peer answered, not as the protocol says (sync_error)
        ├── PeerUnreachable     the peer host does not answer
        ├── PeerAgentDown       the host answers, the agent does not
        │   └── PeerStarting    the agent answers 503 `starting`
        └── AuthFailed          the peer rejects our credentials (HTTP 401)

Every class carries `code` (the stable identifier in JSON errors), `exit_code`
and `http_status`; a PeerError also its `cause`.

Lower-level exceptions (OSError, aiohttp, msgpack, sqlite3, psycopg) are
mapped to these at the module boundaries with ``raise ... from exc``.

Causes (SPEC §3) are the `Cause` enum and nothing else: `cause_of_oserror`
maps an errno to one, `unreadable_cause` says why a path cannot be read (a
junk file, `is_junk`, or the errno's cause), `cause_of` reads one named by
another process (unknown names become `sync_error`, their text kept), and
`CAUSE_ORDER` / `first_cause` pick the one to report. `ScanError` (a value,
not an exception) is a cause with its message: why a path could not be read.
"""

from __future__ import annotations

import enum
import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass


class Cause(enum.StrEnum):
    """Why the standby is out of sync. The values are the spec's identifiers."""

    PEER_UNREACHABLE = "peer_unreachable"
    PEER_AGENT_DOWN = "peer_agent_down"
    AUTH_FAILED = "auth_failed"
    DISK_FULL = "disk_full"
    JUNK_FILE = "junk_file"
    PERMISSION_DENIED = "permission_denied"
    SOURCE_MISSING = "source_missing"
    SYNC_ERROR = "sync_error"
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return self.value


# When several causes are present, the one named first is reported (check, status, alarm).
CAUSE_ORDER = (
    Cause.PEER_UNREACHABLE,
    Cause.PEER_AGENT_DOWN,
    Cause.AUTH_FAILED,
    Cause.SOURCE_MISSING,
    Cause.DISK_FULL,
    Cause.JUNK_FILE,
    Cause.PERMISSION_DENIED,
    Cause.SYNC_ERROR,
    Cause.UNKNOWN,
)
_CAUSES = {c.value: c for c in Cause}


def first_cause(causes: Iterable[Cause]) -> Cause | None:
    """The cause to report of several (CAUSE_ORDER), None of none."""
    present = set(causes)
    return next((c for c in CAUSE_ORDER if c in present), None)


def cause_of(value: object) -> Cause:
    """A cause named by another process (the peer's frames, entries and status, a shared store's row).
    One rule for a name this version does not know (a newer peer's cause, or garbage): `sync_error`,
    never an exception. `cause_and_message` keeps such a name's text in the message."""
    return _CAUSES.get(value, Cause.SYNC_ERROR) if isinstance(value, str) else Cause.SYNC_ERROR


def cause_and_message(cause: object, message: str) -> tuple[Cause, str]:
    """A (cause, message) pair named by another process: an unknown cause becomes `sync_error`
    (see `cause_of`) and its text goes in front of the message, so that nothing is lost."""
    known = cause_of(cause)
    if isinstance(cause, str) and cause == known.value:
        return known, message
    return known, f"{cause}: {message}"


@dataclass(frozen=True)
class ScanError:
    """Why a path could not be read (as Syncthing's ScanResult carries an error with its path): a value
    carried by the manifest's ERROR entries, not an exception.

    Its text form, `str()`, is "<cause>: <message>": what the Merkle record, the hash cache and the
    wire hold (docs/protocol.md §5); `from_text` reads it back at those boundaries only."""

    cause: Cause
    message: str

    def __str__(self) -> str:
        return f"{self.cause.value}: {self.message}"

    @classmethod
    def from_text(cls, text: str) -> ScanError:
        """The error of an entry's text form; a cause this version does not know is `sync_error`,
        its text kept in the message (cause_and_message)."""
        cause, sep, message = text.partition(": ")
        if not sep:
            return cls(Cause.SYNC_ERROR, text)
        return cls(*cause_and_message(cause, message))


class HasyncError(Exception):
    """Base of every error hasync raises on purpose."""

    code = "error"
    exit_code = 1
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(HasyncError):
    """The config file is missing, malformed or names something unusable."""

    code = "config_error"
    exit_code = 2


class UsageError(HasyncError):
    code = "usage_error"
    exit_code = 2
    http_status = 400


class PathRefused(HasyncError):
    """A relative path received from a peer is unsafe: it is never written."""

    code = "path_refused"
    http_status = 400


class BadRequest(HasyncError):
    """A request to the agent that fails its own validation (never a bug of ours: that is a 500)."""

    code = "bad_request"
    http_status = 400


class TooLarge(BadRequest):
    code = "too_large"
    http_status = 413


class LockHeld(HasyncError):
    code = "lock_held"


class WrongRole(HasyncError):
    code = "wrong_role"
    http_status = 409


class Starting(HasyncError):
    code = "starting"
    http_status = 503


class StoreError(HasyncError):
    """The alarm store cannot be opened, read or written. The message never holds a password."""

    code = "store_error"
    exit_code = 1
    http_status = 503


class StoreUnavailable(StoreError):
    """The store's database failed (cannot connect, locked, damaged, closed): a fault of the store, not of
    the request. The agent keeps working without it (`hasync.alarms.guard`). Same code and exit as StoreError."""


class NotifyError(HasyncError):
    """A notifier could not deliver a message; the dispatcher retries it later."""

    code = "notify_error"
    http_status = 502


class PeerError(HasyncError):
    code = "peer_error"
    http_status = 502
    cause = Cause.SYNC_ERROR


class MalformedAnswer(PeerError):
    """The peer answered, but not as the protocol says (a decoder refused its answer): sync_error.
    `reason` is what the decoder refused, for a caller that tells it in its own words."""

    def __init__(self, route: str, reason: str) -> None:
        super().__init__(f"malformed {route} answer: {reason}")
        self.reason = reason


class PeerUnreachable(PeerError):
    code = "peer_unreachable"
    cause = Cause.PEER_UNREACHABLE


class PeerAgentDown(PeerError):
    code = "peer_agent_down"
    cause = Cause.PEER_AGENT_DOWN


class PeerWrongRole(PeerError):
    """The peer answers, but not in the role this node needs (cause sync_error): it is not the active
    node, or it refused a call as the wrong role (409 `wrong_role`): no node is active, or the two nodes
    disagree on which one is."""


class StaleEpoch(PeerError):
    """A fencing epoch refused (SPEC §10): data from an active of an older epoch than this node has
    seen, or a request to an active that a newer epoch has superseded (it becomes standby)."""

    code = "stale_epoch"
    http_status = 409


class PeerStarting(PeerAgentDown):
    """The peer's agent runs but is still scanning its sync dirs (it answers 503 `starting`)."""


class AuthFailed(PeerError):
    code = "auth_failed"
    http_status = 401
    cause = Cause.AUTH_FAILED


JUNK_PREFIX = "sed"


def is_junk(name: str, st: os.stat_result) -> bool:
    """The reference page's junk file (ALM-45641 step 11, `ll` shows ``----------`` and size 0):
    a regular file named ``sed*``, of size 0, with no permission bits. The one rule, for the scan,
    the file stream and the diagnosis."""
    return (
        name.startswith(JUNK_PREFIX) and stat.S_ISREG(st.st_mode) and st.st_size == 0 and stat.S_IMODE(st.st_mode) == 0
    )


def cause_of_oserror(exc: OSError) -> Cause:
    """The spec's cause for a failed file operation."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return Cause.DISK_FULL
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return Cause.PERMISSION_DENIED
    return Cause.SYNC_ERROR


def unreadable_cause(name: str, st: os.stat_result, exc: OSError) -> Cause:
    """Why path `name` (whose lstat is `st`) could not be read: a junk file when it is one and the
    read was refused for lack of permission (root reads it: then it is no fault), else the errno's cause."""
    cause = cause_of_oserror(exc)
    if cause is Cause.PERMISSION_DENIED and is_junk(name, st):
        return Cause.JUNK_FILE
    return cause
