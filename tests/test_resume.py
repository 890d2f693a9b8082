"""Partial transfers: a big file cut off by `kill -9` of the standby is resumed, not sent again whole;
a partial that is not a prefix of the active's file (damaged, or the file changed) is sent again whole."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from hasync.replication.partials import RESUME_MIN
from pairlib import PairEnv, temp_files, wait_for

BIG = 96 << 20


def write_random(path: Path, size: int) -> None:
    staging = path.with_name(".staging")
    with open(staging, "wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))
    os.rename(staging, path)  # appears whole on the active


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def cut_mid_transfer(env: PairEnv) -> Path:
    """Start both agents; freeze, then kill -9, the standby while big.bin is partly written."""
    env.a.start()
    env.b.start()

    def partial() -> Path | None:
        temps = [Path(t) for t in temp_files(env.dst / "udf")]
        return next((t for t in temps if t.stat().st_size >= BIG // 6), None)

    tmp: Path = wait_for(partial, 60, interval=0.001, what="a partly received big.bin")
    assert env.b.proc is not None
    os.kill(env.b.proc.pid, signal.SIGSTOP)  # nothing more is written from here
    env.b.kill9()
    assert tmp.exists() and RESUME_MIN <= tmp.stat().st_size < BIG, tmp.stat().st_size
    assert not (env.dst / "udf" / "big.bin").exists()
    return tmp


def received(env: PairEnv) -> tuple[int, int]:
    t = json.loads(env.hasync("status", "--json", check=True).stdout)["transferred"]
    return t["files_received"], t["bytes_received"]


def restart_and_converge(env: PairEnv) -> int:
    """Restart the standby; when in sync, the bytes it received for its one file."""
    env.b.start()
    env.wait_in_sync(120)
    assert temp_files(env.dst) == []
    assert not list((env.pair.base / "state" / "node-b" / "partials").glob("*")), "a partial record outlived it"
    _, data = wait_for(lambda: (r := received(env))[0] == 1 and r, 30, what="the standby's transfer counters")
    return int(data)


def damage_prefix(env: PairEnv, tmp: Path) -> None:
    with open(tmp, "r+b") as f:
        f.write(b"\0" * 4096)


def change_active_file(env: PairEnv, tmp: Path) -> None:
    write_random(env.src / "udf" / "big.bin", BIG)


def forget_temp(env: PairEnv, tmp: Path) -> None:
    tmp.unlink()


def test_a_cut_transfer_is_resumed_from_where_it_stopped(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair()
    write_random(env.src / "udf" / "big.bin", BIG)
    tmp = cut_mid_transfer(env)
    have = tmp.stat().st_size
    data = restart_and_converge(env)
    # Only what was missing came over the wire; the file is whole and its digest was checked.
    assert data == BIG - have, (data, BIG, have)
    assert sha(env.dst / "udf" / "big.bin") == sha(env.src / "udf" / "big.bin")
    log = (env.pair.base / "logs" / "node-b" / "ha.log").read_text()
    assert "partial transfers kept to resume" in log and f"transfer resumed dir=udf path=big.bin at={have}" in log


@pytest.mark.parametrize("spoil", [damage_prefix, change_active_file, forget_temp], ids=lambda f: f.__name__)
def test_a_partial_that_is_not_the_files_prefix_is_sent_again_whole(
    make_pair: Callable[..., PairEnv],
    spoil: Callable[[PairEnv, Path], None],
) -> None:
    env: PairEnv = make_pair()
    write_random(env.src / "udf" / "big.bin", BIG)
    tmp = cut_mid_transfer(env)
    spoil(env, tmp)
    data = restart_and_converge(env)
    assert data == BIG
    assert sha(env.dst / "udf" / "big.bin") == sha(env.src / "udf" / "big.bin")
    assert "transfer resumed" not in (env.pair.base / "logs" / "node-b" / "ha.log").read_text()


def test_a_partial_whose_file_is_gone_from_the_active_is_removed(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair()
    write_random(env.src / "udf" / "big.bin", BIG)
    tmp = cut_mid_transfer(env)
    (env.src / "udf" / "big.bin").unlink()
    (env.src / "conf" / "after.yaml").write_text("x")
    env.b.start()
    wait_for(lambda: (env.dst / "conf" / "after.yaml").exists(), 60, what="the standby to reconcile")
    env.wait_in_sync(60)
    # The first reconcile had nothing to resume it into: neither the temp file nor its record is left.
    wait_for(lambda: not tmp.exists(), 30, what="the partial temp file removed")
    assert temp_files(env.dst) == []
    assert not list((env.pair.base / "state" / "node-b" / "partials").glob("*"))
    assert (
        "partial transfers not needed any more, removed count=1"
        in (env.pair.base / "logs" / "node-b" / "ha.log").read_text()
    )
