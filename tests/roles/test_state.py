"""roles/state.py: the kept role and epoch, and the epoch rules (the Fence), without processes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hasync import config
from hasync.config import Config, ensure_dirs
from hasync.demo import write_pair
from hasync.errors import ConfigError, StaleEpoch
from hasync.roles import node_role
from hasync.roles.state import EPOCH_HEADER, ROLE_HEADER, Fence, RoleState, load, parse_epoch, role_path, save


def pair_cfg(tmp_path: Path, node: str = "b", extra: str = "") -> Config:
    pair = write_pair(tmp_path, extra=extra)
    cfg = config.load(pair.config_a if node == "a" else pair.config_b)
    ensure_dirs(cfg)
    return cfg


def test_without_a_kept_file_the_role_is_the_configs_at_epoch_0(tmp_path: Path) -> None:
    a, b = pair_cfg(tmp_path, "a"), pair_cfg(tmp_path, "b")
    assert (load(a).role, load(a).epoch) == ("active", 0)
    assert (load(b).role, load(b).epoch) == ("standby", 0)
    assert not role_path(b).exists()  # reading never writes


def test_a_kept_role_wins_over_the_config_and_survives(tmp_path: Path) -> None:
    cfg = pair_cfg(tmp_path)
    save(cfg, RoleState("active", 7, 1_700_000_000.5, "switchover"))
    assert node_role(cfg) == "active"
    kept = load(cfg)
    assert (kept.role, kept.epoch, kept.since, kept.reason) == ("active", 7, 1_700_000_000.5, "switchover")
    assert oct(os.stat(role_path(cfg)).st_mode & 0o777) == "0o644"


@pytest.mark.parametrize(
    "content",
    [
        b"{",
        b"[]",
        json.dumps({"role": "master", "epoch": 1, "since_ts": 1.0}).encode(),
        json.dumps({"role": "active", "epoch": -1, "since_ts": 1.0}).encode(),
        json.dumps({"role": "active", "epoch": True, "since_ts": 1.0}).encode(),
        json.dumps({"role": "active", "epoch": 2**60, "since_ts": 1.0}).encode(),
        json.dumps({"role": "active", "epoch": 1, "since_ts": "x"}).encode(),
        b" " * 5000,
    ],
)
def test_a_damaged_kept_role_stops_with_one_line_naming_the_file(tmp_path: Path, content: bytes) -> None:
    cfg = pair_cfg(tmp_path)
    role_path(cfg).write_bytes(content)
    with pytest.raises(ConfigError) as e:
        load(cfg)
    assert str(role_path(cfg)) in e.value.message and "\n" not in e.value.message
    assert role_path(cfg).read_bytes() == content  # left as it was, for the operator


def test_external_mode_without_an_initial_active_starts_both_as_standby(tmp_path: Path) -> None:
    pair = write_pair(tmp_path)
    for path in (pair.config_a, pair.config_b):
        text = path.read_text().replace('mode = "static"', 'mode = "external"')
        text = "\n".join(line for line in text.splitlines() if not line.startswith("active ="))
        path.write_text(text + "\n")
        cfg = config.load(path)
        assert cfg.role.mode == "external" and cfg.role.active is None
        assert node_role(cfg) == "standby"


@pytest.mark.parametrize("raw", ["", "-1", "1.5", "0x10", "99999999999999999", " 1"])
def test_parse_epoch_refuses_what_is_not_a_small_integer(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_epoch(raw)


def test_set_keeps_before_it_takes_effect_and_never_goes_back(tmp_path: Path) -> None:
    cfg = pair_cfg(tmp_path)
    fence = Fence(cfg)
    fence.set("active", 3, "test")
    assert load(cfg).epoch == 3 and fence.headers() == {EPOCH_HEADER: "3", ROLE_HEADER: "active"}
    with pytest.raises(StaleEpoch):
        fence.set("standby", 2, "older")
    assert (load(cfg).role, load(cfg).epoch) == ("active", 3)
    assert fence.next_epoch(peer_epoch=9) == 11 and fence.next_epoch() == 5  # node-b: odd epochs


def test_an_active_that_hears_a_newer_active_becomes_standby_at_its_epoch(tmp_path: Path) -> None:
    cfg = pair_cfg(tmp_path, "a")
    fence = Fence(cfg)
    told: list[RoleState] = []
    fence.on_superseded = told.append
    fence.heard(0, "standby", answer=True)  # the same epoch: nothing
    fence.heard(0, "active", answer=True)  # an active at the same epoch, whose name sorts last: a stays
    assert (fence.role, fence.epoch) == ("active", 0) and not told
    with pytest.raises(StaleEpoch):
        fence.heard(3, "active", answer=True)
    assert (fence.role, fence.epoch) == ("standby", 3)
    assert (load(cfg).role, load(cfg).epoch) == ("standby", 3)  # kept before anyone is told
    fence.set("active", 4, "test")
    fence.heard(5, "active", answer=False)  # a newer active's request: served, by a standby now
    assert (fence.role, fence.epoch) == ("standby", 5)
    fence.set("active", 6, "test")
    fence.heard(7, "standby", answer=False)  # any newer epoch ends this active's term, a standby's too
    assert (fence.role, fence.epoch) == ("standby", 7)
    assert [(s.role, s.epoch) for s in told] == [("standby", 3), ("standby", 5), ("standby", 7)]


def test_two_actives_at_one_epoch_the_name_that_sorts_last_yields(tmp_path: Path) -> None:
    fence = Fence(pair_cfg(tmp_path, "b"))
    fence.set("active", 4, "test")
    with pytest.raises(StaleEpoch):
        fence.heard(4, "active", answer=True)
    assert (fence.role, fence.epoch) == ("standby", 4)


def test_epochs_a_node_takes_alone_never_equal_the_peers(tmp_path: Path) -> None:
    a, b = Fence(pair_cfg(tmp_path, "a")), Fence(pair_cfg(tmp_path, "b"))
    for mine, peer in [(0, 0), (1, 0), (0, 5), (7, 7), (2**53 - 3, 0)]:
        a.state = b.state = RoleState("standby", mine, 0.0, "")
        assert a.next_epoch(peer) % 2 == 0 and b.next_epoch(peer) % 2 == 1
        assert min(a.next_epoch(peer), b.next_epoch(peer)) > max(mine, peer)


def test_an_epoch_past_the_largest_is_never_kept(tmp_path: Path) -> None:
    cfg = pair_cfg(tmp_path, "a")
    fence = Fence(cfg)
    fence.set("standby", 2**53 - 1, "test")
    with pytest.raises(StaleEpoch):
        fence.set("active", fence.next_epoch(), "test")
    assert load(cfg).epoch == 2**53 - 1


def test_a_standby_refuses_the_answers_of_an_active_of_an_older_epoch(tmp_path: Path) -> None:
    cfg = pair_cfg(tmp_path, "b")
    fence = Fence(cfg)
    fence.set("standby", 5, "learned")
    with pytest.raises(StaleEpoch) as e:
        fence.heard(4, "active", answer=True)
    assert "older than epoch 5" in e.value.message
    fence.heard(4, "active", answer=False)  # its request is answered (the answer tells it epoch 5)
    fence.heard(4, "standby", answer=True)
    fence.heard(5, "active", answer=True)
    assert (fence.role, fence.epoch) == ("standby", 5)
