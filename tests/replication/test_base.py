"""replication/base.py: the watcher supervisor's round every every_s (no processes, no agent)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from hasync.config import SyncDir, load
from hasync.demo import write_pair
from hasync.replication.base import Side


def test_supervisor_rounds_go_on_past_a_failing_dir_until_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    side = Side(load(write_pair(tmp_path).config_a))
    assert [d.name for d in side.cfg.sync.dirs] == ["conf", "udf"]
    seen: list[str] = []

    async def supervise(d: SyncDir) -> None:
        seen.append(d.name)
        if len(seen) == 1:
            raise RuntimeError("inotify on fire")
        if len(seen) == 6:
            side._stop_event.set()

    monkeypatch.setattr(side, "_supervise", supervise)
    with caplog.at_level(logging.ERROR, logger="hasync.replication"):
        asyncio.run(asyncio.wait_for(side._poll_roots(every_s=0.001), 5))
    # The first round's failure on conf is logged, udf is still looked at, and the rounds go on.
    assert seen == ["conf", "udf"] * 3
    [failed] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert failed.getMessage() == "watching sync dir failed dir=conf"


def test_supervisor_stops_promptly_during_its_wait(tmp_path: Path) -> None:
    side = Side(load(write_pair(tmp_path).config_a))

    async def scenario() -> None:
        task = asyncio.create_task(side._poll_roots(every_s=3600))
        for _ in range(10):
            await asyncio.sleep(0)
        side._stop_event.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
