"""replication/active.py: the periodic full rescan (no processes, no agent)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from hasync import hashcache
from hasync.config import load
from hasync.demo import write_pair
from hasync.manifest import Tree
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


def test_the_first_scan_reuses_the_adopted_trees_not_the_hash_cache(tmp_path: Path) -> None:
    """A promoted standby's trees are the first scan's hash cache: a digest they hold for a file whose stat
    is unchanged is taken as it is (a real one would be the file's BLAKE3), and the cache file is not read."""
    pair = write_pair(tmp_path)
    (pair.data_a / "conf" / "a.xml").write_text("<a/>")
    cfg = load(pair.config_a)
    standby = ActiveSide(cfg)  # the standby's tree of the same files: what a scan makes
    asyncio.run(standby.prepare())
    old = standby.trees["conf"]
    assert old is not None
    real = old.get("a.xml")
    assert real is not None
    # (its inode: the entry of a file older than the racy window, which a cache's digest may stand for)
    ino = (pair.data_a / "conf" / "a.xml").stat().st_ino
    old.put("a.xml", real._replace(digest=b"\x01" * 32, ino=ino))
    hashcache.save(old, standby.cache_path("conf"))  # the cache file says the same...
    hashcache.save(Tree(), standby.cache_path("conf"))  # ...or not: it is not read

    side = ActiveSide(cfg)
    side.adopt({"conf": old, "udf": None})
    asyncio.run(side.prepare())
    tree = side.trees["conf"]
    got = None if tree is None else tree.get("a.xml")
    assert got is not None and got.digest == b"\x01" * 32
    assert len(old) == 0  # consumed as the scan went: two big trees are never held at once
    # Without adopted trees, the cache file is the first scan's: here an empty one, so the file is hashed.
    fresh = ActiveSide(cfg)
    asyncio.run(fresh.prepare())
    again = fresh.trees["conf"]
    got = None if again is None else again.get("a.xml")
    assert got is not None and got.digest == real.digest
