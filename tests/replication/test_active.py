"""replication/active.py: the periodic full rescan (no processes, no agent)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from hasync.config import load
from hasync.demo import write_pair
from hasync.replication.active import ActiveSide


def test_full_rescan_repeats_past_a_failure_until_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = load(write_pair(tmp_path).config_a)
    cfg = cfg.model_copy(update={"sync": cfg.sync.model_copy(update={"full_reconcile_s": 0.001})})
    side = ActiveSide(cfg)
    runs = 0

    async def rescan_all(initial: bool = False, only: str | None = None) -> None:
        nonlocal runs
        runs += 1
        assert not initial and only is None  # a full rescan of every sync dir
        if runs == 1:
            raise OSError("disk on fire")
        if runs == 3:
            side._stop_event.set()

    monkeypatch.setattr(side, "rescan_all", rescan_all)
    with caplog.at_level(logging.ERROR, logger="hasync.active"):
        asyncio.run(asyncio.wait_for(side._periodic_rescan(), 5))
    assert runs == 3  # a failed rescan is logged, the next one still comes
    [failed] = caplog.records
    assert failed.getMessage() == "full rescan failed" and "disk on fire" in str(failed.exc_info)


def test_full_rescan_stops_promptly_during_its_wait(tmp_path: Path) -> None:
    side = ActiveSide(load(write_pair(tmp_path).config_a))  # full_reconcile_s: 300 s

    async def scenario() -> None:
        task = asyncio.create_task(side._periodic_rescan())
        for _ in range(10):
            await asyncio.sleep(0)
        side._stop_event.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
