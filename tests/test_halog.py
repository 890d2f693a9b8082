"""The HA run log (SPEC §8): line format, header with the UTC offset, size rotation to .gz, retention."""

from __future__ import annotations

import gzip
import logging
import re
from pathlib import Path

from hasync import halog
from hasync.halog import Throttle, clip

LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARN|ERROR|DEBUG) \[\w+\] .+")


def test_format_rotation_and_retention(tmp_path: Path) -> None:
    halog.setup(tmp_path, max_bytes=2000, backup_count=3, stderr=False)
    log = logging.getLogger("hasync.standby")
    for i in range(200):
        log.warning("sync failed %s", halog.kv(dir="conf", path=f"a b/{i}.yaml", cause="permission_denied"))
    logging.getLogger("hasync").handlers[0].close()
    rotated = halog.rotated_logs(tmp_path)
    assert len(rotated) == 3  # retention: the oldest went
    for f in [*rotated, tmp_path / "ha.log"]:
        opener = gzip.open if f.suffix == ".gz" else open
        with opener(f, "rt") as fh:
            lines = fh.read().splitlines()
        assert re.fullmatch(r"# hasync HA run log; times are local, UTC offset [+-]\d\d:\d\d", lines[0])
        assert all(LINE.fullmatch(x) for x in lines[1:]), lines[1:3]
    assert (
        'WARN [standby] sync failed dir=conf path="a b/199.yaml" cause=permission_denied'
        in (tmp_path / "ha.log").read_text()
    )
    assert all(re.fullmatch(r"ha\.log\.\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d(-\d+)?\.gz", f.name) for f in rotated)


def test_rotated_order_puts_second_rotation_of_a_second_after_the_first(tmp_path: Path) -> None:
    for name in (
        "ha.log.2026-11-25_10-00-00-1.gz",
        "ha.log.2026-11-25_10-00-00.gz",
        "ha.log.2026-11-25_09-59-59.gz",
        "ha.log.2026-11-25_10-00-00-2.gz",
    ):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in halog.rotated_logs(tmp_path)] == [
        "ha.log.2026-11-25_09-59-59.gz",
        "ha.log.2026-11-25_10-00-00.gz",
        "ha.log.2026-11-25_10-00-00-1.gz",
        "ha.log.2026-11-25_10-00-00-2.gz",
    ]


def test_throttle_logs_first_then_counts() -> None:
    t = Throttle[str](10.0, overflow="other", max_keys=2)
    assert t.hit("a", 0.0) and not t.hit("a", 1.0) and not t.hit("a", 2.0)
    assert t.hit(t.key("b"), 0.5) and t.key("c") == "other"
    assert t.next_due() == 10.0 and t.due(5.0) == []
    assert t.due(10.5) == [("a", 2, 10.5)]
    assert t.due(21.0) == [] and t.hit("a", 21.0)  # quiet interval: forgotten, logged in full again
    assert clip("x" * 500).startswith("x" * 200) and clip("x" * 500).endswith("(+300 chars)")
