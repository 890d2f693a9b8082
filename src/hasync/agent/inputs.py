"""What a request to the agent carries, checked: bodies (size, time, type, depth) and parameters.

Everything here raises BadRequest (400) or TooLarge (413) for input the agent cannot use. The
error middleware answers only those (and the other HasyncErrors) with a 4xx: any other exception
a handler raises is a bug of ours, answered 500 and logged.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from hasync.errors import BadRequest, TooLarge
from hasync.peer.protocol import unpack

MAX_DEPTH = 32  # nesting of a JSON or msgpack body; ours are at most 6 deep
T = TypeVar("T")


async def read_body(request: web.Request, timeout_s: float) -> bytes:
    """The whole body, within `timeout_s` and the app's client_max_size (limits.max_body_bytes)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except TimeoutError:
        raise BadRequest(f"request body not received within {timeout_s:g} s (limits.body_timeout_s)") from None
    except web.HTTPRequestEntityTooLarge:
        raise TooLarge(f"request body over {request.client_max_size} bytes (limits.max_body_bytes)") from None


def check_depth(doc: Any, limit: int = MAX_DEPTH) -> None:
    """Raise BadRequest when lists and objects nest deeper than `limit`."""
    level: list[Any] = [doc]
    for _ in range(limit + 1):
        nxt: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                nxt.extend(item.values())
            elif isinstance(item, (list, tuple)):
                nxt.extend(item)
        if not nxt:
            return
        level = nxt
    raise BadRequest(f"body nested deeper than {limit} levels")


def as_object(doc: Any, what: str = "body") -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise BadRequest(f"{what} must be an object, not {type(doc).__name__}")
    check_depth(doc)
    return doc


async def json_object(request: web.Request, timeout_s: float) -> dict[str, Any]:
    """A JSON object body (an empty body is {})."""
    raw = await read_body(request, timeout_s)
    if not raw.strip():
        return {}
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise BadRequest(f"body is not JSON: {str(exc)[:200]}") from None
    return as_object(doc)


async def msgpack_object(request: web.Request, timeout_s: float) -> dict[str, Any]:
    """A msgpack map body."""
    raw = await read_body(request, timeout_s)
    try:
        doc = unpack(raw)
    except (ValueError, TypeError, RecursionError) as exc:  # msgpack's errors derive from ValueError
        raise BadRequest(f"body is not msgpack: {str(exc)[:200]}") from None
    return as_object(doc)


def field(doc: dict[str, Any], key: str, kind: type[T], default: T | None = None) -> T:
    """`doc[key]`, of type `kind`; missing: `default`, or BadRequest when there is none."""
    value = doc.get(key)
    if value is None:
        if default is None:
            raise BadRequest(f"missing field {key!r}")
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadRequest(f"field {key!r} must be {kind.__name__}, not {type(value).__name__}")
    return value


def query_int(request: web.Request, key: str, default: int, lo: int = 0, hi: int = 1 << 63) -> int:
    """An integer query parameter within [lo, hi]; BadRequest when it does not parse or is out of range."""
    value = _query(request, key, default, int, "an integer")
    if not lo <= value <= hi:  # the default too: a caller's default is within its range
        raise BadRequest(f"query parameter {key}={value} is out of range [{lo}, {hi}]")
    return value


def query_float(request: web.Request, key: str, default: float) -> float:
    """A finite number query parameter; BadRequest when it does not parse."""
    return _query(request, key, default, _finite, "a finite number")


def _query(request: web.Request, key: str, default: T, parse: Callable[[str], T], what: str) -> T:
    """Query parameter `key` as `parse` reads it (ValueError: it is not `what`), or `default` when absent."""
    raw = request.query.get(key)
    if raw is None:
        return default
    try:
        return parse(raw)
    except ValueError:
        raise BadRequest(f"query parameter {key}={raw[:40]!r} is not {what}") from None


def _finite(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(f"{value} is not finite")
    return value
