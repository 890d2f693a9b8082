"""hasync.check: verdicts carry typed causes; a peer's unknown cause is sync_error, its text kept."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hasync.check import ActiveCheck, OutOfSync, Verdict, _Grace
from hasync.errors import Cause, ScanError
from hasync.manifest import ERROR, Entry, Tree
from hasync.peer.client import AgentClient
from hasync.peer.transport import MemoryRequest, MemoryResponse, MemoryTransport


def _peer(status: dict[str, Any]) -> AgentClient:
    """The standby's agent answering `status` to GET /v1/status (JSON), over the in-memory transport."""

    async def handler(req: MemoryRequest) -> MemoryResponse:
        assert (req.path, dict(req.params)) == ("/v1/status", {"brief": "1"})
        return MemoryResponse(200, json.dumps(status).encode())

    return AgentClient("http://b:1", "t", 5.0, "b", transport=MemoryTransport(handler))


def _check(tmp_path: Path, status: dict[str, Any], trees: dict[str, Tree | None]) -> ActiveCheck:
    cfg = SimpleNamespace(
        node=SimpleNamespace(state_dir=tmp_path),
        peer=SimpleNamespace(name="b", hostname=None, timeout_s=5.0),
    )
    side = SimpleNamespace(cfg=cfg, trees=trees, oldest_change_after=lambda seq: None)
    return ActiveCheck(side, _peer(status), 60.0)  # type: ignore[arg-type]


def test_an_unknown_cause_from_the_standby_is_sync_error_with_its_text(tmp_path: Path) -> None:
    status: dict[str, Any] = {
        "role": "standby",
        "hostname": "hb",
        "in_sync": False,
        "errors": [
            {"dir": "conf", "path": "a", "cause": "newer_cause", "reason": "boom"},
            {"dir": "conf", "path": "b", "cause": "junk_file", "reason": "sed"},
        ],
    }
    v = asyncio.run(_check(tmp_path, status, {"conf": Tree()}).verdict())
    assert not v.in_sync and v.cause is Cause.JUNK_FILE
    assert v.out_of_sync == (
        OutOfSync("conf", "a", "newer_cause: boom", Cause.SYNC_ERROR),
        OutOfSync("conf", "b", "sed", Cause.JUNK_FILE),
    )
    status["errors"] = status["errors"][:1]
    v = asyncio.run(_check(tmp_path, status, {"conf": Tree()}).verdict())
    assert v.cause is Cause.SYNC_ERROR and type(v.out_of_sync[0].cause) is Cause


def test_the_actives_own_unreadable_files_keep_cause_and_message(tmp_path: Path) -> None:
    tree = Tree()
    tree.put("sed1", Entry(ERROR, 0, error=ScanError(Cause.JUNK_FILE, "Permission denied: x")))
    check = _check(tmp_path, {}, {"conf": tree, "udf": None})
    assert check.own_errors() == [
        OutOfSync("conf", "sed1", "cannot be read on the active: Permission denied: x", Cause.JUNK_FILE),
        OutOfSync("udf", "", "sync dir does not exist on the active", Cause.SOURCE_MISSING),
    ]


def test_a_verdict_read_back_names_an_unknown_cause_sync_error() -> None:
    doc = Verdict(False, Cause.DISK_FULL, True, 0.0).to_json()
    assert Verdict.from_json(doc).cause is Cause.DISK_FULL
    doc["cause"] = "newer_cause"
    assert Verdict.from_json(doc).cause is Cause.SYNC_ERROR


def test_a_malformed_status_is_a_sync_error_verdict(tmp_path: Path) -> None:
    status = {"role": "standby", "errors": [{"dir": "conf"}]}
    v = asyncio.run(_check(tmp_path, status, {"conf": Tree()}).verdict())
    assert not v.in_sync and v.cause is Cause.SYNC_ERROR and v.peer_reachable
    assert v.out_of_sync[0].reason.startswith("refused the status of b: ")


def test_status_items_keep_an_empty_cause_when_there_is_none() -> None:
    assert OutOfSync("", "", "the standby reports it is not in sync (61 s)").status_json() == {
        "dir": "",
        "path": "",
        "cause": "",
        "reason": "the standby reports it is not in sync (61 s)",
    }
    assert OutOfSync("conf", "a", "x", Cause.JUNK_FILE).status_json()["cause"] == "junk_file"


def test_a_difference_ages_only_while_it_is_the_same_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The standby's grace: a difference at the same seq of the active ages; once the active has moved
    on, the difference seen is a new one (a steady stream of changes is not one old difference)."""
    now = [100.0]
    monkeypatch.setattr("hasync.check.time.monotonic", lambda: now[0])
    g = _Grace()
    assert g.age(True, 7) == 0.0
    now[0] = 103.0
    assert g.age(True, 7) == 3.0  # the same difference, 3 s old: past a 2-s interval
    assert g.age(True, 8) == 0.0  # the active moved on: a new difference
    now[0] = 104.0
    assert g.age(True, 8) == 1.0
    assert g.age(False, 8) == 0.0 and g.age(True, 8) == 0.0  # in sync in between: aged anew
