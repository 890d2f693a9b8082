"""peer/frames.py: the one frame reader and writer, over reads split anywhere, big frames and bad streams."""

from __future__ import annotations

import asyncio
import random

import pytest

from hasync.peer.frames import FRAME_HEADER, MAX_FRAME, READ_SIZE, FrameError, frame, header, read_frames


class Stream:
    """A byte stream as a socket gives it: `read(n)` returns at most `chunk` bytes (b"" at the end),
    `readexactly(n)` raises IncompleteReadError when the stream ends first. Counts the calls."""

    def __init__(self, data: bytes, chunk: int = 1 << 30) -> None:
        self.data = data
        self.pos = 0
        self.chunk = chunk
        self.reads = 0
        self.exact: list[int] = []

    async def read(self, n: int) -> bytes:
        self.reads += 1
        out = self.data[self.pos : self.pos + min(n, self.chunk)]
        self.pos += len(out)
        return out

    async def readexactly(self, n: int) -> bytes:
        self.exact.append(n)
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        if len(out) < n:
            raise asyncio.IncompleteReadError(out, n)
        return out


def collect(stream: Stream, end: bytes = b"Z", max_frame: int = MAX_FRAME) -> list[tuple[bytes, bytes]]:
    async def run() -> list[tuple[bytes, bytes]]:
        return [f async for f in read_frames(stream.read, stream.readexactly, end, max_frame)]

    return asyncio.run(run())


FRAMES = [(b"H", b"head"), (b"D", b""), (b"D", bytes(range(256)) * 3), (b"E", b"x" * 5), (b"Z", b"")]


def test_frame_is_header_and_payload() -> None:
    assert frame(b"D", b"abc") == b"D\x00\x00\x00\x03abc"
    assert header(b"D", 3) + b"abc" == frame(b"D", b"abc")
    assert FRAME_HEADER.unpack(frame(b"Z")) == (b"Z", 0)


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 64, 1 << 20])
def test_frames_come_out_whole_whatever_the_reads_split(chunk: int) -> None:
    data = b"".join(frame(k, p) for k, p in FRAMES)
    assert collect(Stream(data, chunk)) == FRAMES


def test_many_small_frames_are_cut_out_of_one_read() -> None:
    frames = [(b"D", bytes([i % 256]) * (i % 7)) for i in range(1000)] + [(b"Z", b"")]
    s = Stream(b"".join(frame(k, p) for k, p in frames))
    assert collect(s) == frames
    assert s.reads == 1 and s.exact == []


def test_a_big_frame_is_read_once_to_its_end() -> None:
    big = random.Random(7).randbytes(3 * READ_SIZE + 11)
    s = Stream(frame(b"D", big) + frame(b"Z"))
    assert collect(s) == [(b"D", big), (b"Z", b"")]
    # The rest of the payload after the first read comes in one readexactly, not a growing buffer.
    assert s.exact == [len(big) - (READ_SIZE - FRAME_HEADER.size)]


def test_a_frame_of_max_frame_bytes_is_taken_and_one_more_is_refused() -> None:
    assert collect(Stream(frame(b"D", b"x" * 100) + frame(b"Z")), max_frame=100)[0] == (b"D", b"x" * 100)
    s = Stream(frame(b"D", b"x" * 101) + frame(b"Z"))
    with pytest.raises(FrameError, match="101 bytes"):
        collect(s, max_frame=100)
    assert s.exact == []  # refused from its header: the payload is never read


def test_an_announced_length_past_the_default_limit_is_refused() -> None:
    with pytest.raises(FrameError):
        collect(Stream(header(b"D", MAX_FRAME + 1)))


def test_the_reader_stops_at_the_end_frame() -> None:
    s = Stream(frame(b"D", b"a") + frame(b"Z") + frame(b"D", b"after"), chunk=1)
    assert collect(s) == [(b"D", b"a"), (b"Z", b"")]
    assert s.pos == 2 * FRAME_HEADER.size + 1  # nothing after it was read


@pytest.mark.parametrize(
    "data",
    [
        b"",  # nothing at all
        frame(b"D", b"abc")[:3],  # inside a header
        frame(b"D", b"abc"),  # between frames, before the end frame
        frame(b"D", b"abcdef")[:-2],  # inside a payload
        frame(b"D", b"x" * (2 * READ_SIZE))[: READ_SIZE + 10],  # inside a big payload
    ],
)
def test_a_cut_stream_is_an_incomplete_read(data: bytes) -> None:
    with pytest.raises(asyncio.IncompleteReadError):
        collect(Stream(data, chunk=4096))
