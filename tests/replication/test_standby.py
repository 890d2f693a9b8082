"""replication/standby.py: the standby's feed loop, over the in-memory transport on a real config."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hasync import config
from hasync.config import ensure_dirs
from hasync.demo import write_pair
from hasync.peer.client import AgentClient
from hasync.peer.transport import MemoryRequest, MemoryResponse, MemoryTransport
from hasync.replication.standby import StandbySide
from hasync.tasks import Backoff


def test_the_feed_loop_resumes_when_the_peer_is_heard_again_not_when_its_backoff_ends(tmp_path: Path) -> None:
    """After a long outage the loop's wait has grown (up to 5 s). When the check hears the active again
    (peer_ok), the loop tries at once: sleeping out its wait left the feed behind a recovered peer, the
    active's new changes ageing there until the check raised `unknown` (the netns test 10's flake)."""
    cfg = config.load(write_pair(tmp_path).config_b)
    ensure_dirs(cfg)

    async def unreachable(req: MemoryRequest) -> MemoryResponse:
        raise TimeoutError  # the transport's timeout: peer_unreachable

    transport = MemoryTransport(unreachable)
    client = AgentClient("http://a:1", "t", 1.0, "node-a", transport=transport)

    async def scenario() -> list[str]:
        side = StandbySide(cfg, client=client)
        side.retry = Backoff(600.0, 600.0)  # a wait no test would sit out
        await side.load_local()
        loop = asyncio.create_task(side._run())
        try:
            async with asyncio.timeout(30):
                while len(transport.requests) < 2:  # the reconcile's info, then the change feed: both failed
                    await asyncio.sleep(0.01)
                assert side.peer_error is not None and side.peer_error.cause.value == "peer_unreachable"
                while len(transport.requests) < 3:  # what the check does each interval, until the loop tries
                    side.peer_ok()
                    await asyncio.sleep(0.05)
        finally:
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)
            await client.close()
            side.fetcher.close()
        return [r.path for r in transport.requests[:3]]

    assert asyncio.run(scenario()) == ["/v1/info", "/v1/changes", "/v1/info"]
