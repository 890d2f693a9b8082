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
    └── PeerError               exit 1, HTTP 502: talking to the peer agent failed
        ├── PeerUnreachable     the peer host does not answer
        ├── PeerAgentDown       the host answers, the agent does not
        └── AuthFailed          the peer rejects our credentials (HTTP 401)

Lower-level exceptions (OSError, aiohttp, msgpack) are mapped to these at the
module boundaries with ``raise ... from exc``; `cause_of_oserror` maps an
errno to the cause the spec names for it.
"""

from __future__ import annotations

import enum
import errno


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


class PeerError(HasyncError):
    code = "peer_error"
    http_status = 502
    cause = Cause.SYNC_ERROR


class PeerUnreachable(PeerError):
    code = "peer_unreachable"
    cause = Cause.PEER_UNREACHABLE


class PeerAgentDown(PeerError):
    code = "peer_agent_down"
    cause = Cause.PEER_AGENT_DOWN


class PeerStarting(PeerAgentDown):
    """The peer's agent runs but is still scanning its sync dirs (it answers 503 `starting`)."""


class AuthFailed(PeerError):
    code = "auth_failed"
    http_status = 401
    cause = Cause.AUTH_FAILED


JUNK_PREFIX = "sed"


def is_junk(name: str, size: int, mode: int) -> bool:
    """The reference page's junk file: named ``sed*``, size 0, no permission bits."""
    return name.startswith(JUNK_PREFIX) and size == 0 and (mode & 0o7777) == 0


def cause_of_oserror(exc: OSError) -> Cause:
    """The spec's cause for a failed file operation."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return Cause.DISK_FULL
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return Cause.PERMISSION_DENIED
    return Cause.SYNC_ERROR
