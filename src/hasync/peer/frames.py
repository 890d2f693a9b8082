"""Frame streams (file contents, log cuts): one writer and one reader of the format in docs/protocol.md §8.

A frame is 1 byte of type, 4 bytes of big-endian payload length, then the payload. The writer is
`frame`; the reader is `read_frames`, which every client of a frame stream uses (the standby's file
fetch, the collect log stream), with the same limit on a frame's length.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

FRAME_HEADER = struct.Struct(">cI")
MAX_FRAME = 4 << 20
READ_SIZE = 1 << 20  # small frames are parsed out of reads this large (few awaits)


class FrameError(ValueError):
    """A frame longer than the reader's limit: the sender does not speak the protocol."""


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    """One frame: header and payload."""
    return FRAME_HEADER.pack(kind, len(payload)) + payload


def header(kind: bytes, length: int) -> bytes:
    """A frame's header alone, for a payload the writer sends as it is (no copy of a big chunk)."""
    return FRAME_HEADER.pack(kind, length)


async def read_frames(
    read: Callable[[int], Awaitable[bytes]],
    readexactly: Callable[[int], Awaitable[bytes]],
    end: bytes,
    max_frame: int = MAX_FRAME,
) -> AsyncIterator[tuple[bytes, bytes]]:
    """The frames of a stream as (type, payload), through the frame of type `end` (included).

    `read(n)` returns up to n bytes (b"" at the end of the stream), `readexactly(n)` exactly n bytes.
    Small frames are cut out of large reads; a big frame's payload is read once to its end (no growing
    buffer). FrameError for a frame longer than `max_frame`; asyncio.IncompleteReadError when the stream
    ends before `end` (the sender went away, as for a cut payload)."""
    buf = bytearray()
    while True:
        while len(buf) < FRAME_HEADER.size:
            more = await read(READ_SIZE)
            if not more:  # the sender went away: as readexactly says it for a cut payload
                raise asyncio.IncompleteReadError(bytes(buf), None)
            buf += more
        kind, n = FRAME_HEADER.unpack_from(buf, 0)
        if n > max_frame:
            raise FrameError(f"a frame of {n} bytes (at most {max_frame})")
        start = FRAME_HEADER.size
        if len(buf) - start >= n:
            payload = bytes(buf[start : start + n])
            del buf[: start + n]
        else:
            head = bytes(buf[start:])
            buf.clear()
            payload = head + await readexactly(n - len(head))
        yield kind, payload
        if kind == end:
            return
