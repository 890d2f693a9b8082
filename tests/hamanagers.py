"""Helpers of the HA-manager tests (packaging/: the OCF agent for Pacemaker, keepalived's scripts).

The shipped scripts call a `hasync` command; the tests give them one that runs this checkout's code
with the test's interpreter, in a directory of its own that the plain test user can reach."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PACKAGING = REPO / "packaging"
OCF_AGENT = PACKAGING / "ocf" / "hasync"
NOTIFY = PACKAGING / "keepalived" / "hasync-notify"
VRRP_CHECK = PACKAGING / "keepalived" / "hasync-vrrp-check"
KEEPALIVED_EXAMPLE = PACKAGING / "keepalived" / "keepalived.conf.example"


def hasync_command() -> Path:
    """An executable `hasync` (a sh wrapper: `exec python -m hasync`), root-owned in a 0755 temp dir:
    keepalived's script security accepts it, and the plain user can run it. The caller removes it."""
    d = Path(tempfile.mkdtemp(prefix="hasync-bin-", dir=os.environ.get("HASYNC_TEST_TMP", "/tmp")))
    d.chmod(0o755)
    src = REPO / "src"
    path = d / "hasync"
    path.write_text(f'#!/bin/sh\nPYTHONPATH={src}${{PYTHONPATH:+:$PYTHONPATH}} exec {sys.executable} -m hasync "$@"\n')
    path.chmod(0o755)
    return path


def external_mode(config: Path, active: str | None = None, peer_timeout_s: float | None = None) -> None:
    """Turn write_pair's static `[role]` into `mode = "external"` (with `active` as the initial active
    node, or none: both start standby); `peer_timeout_s` sets [peer] timeout_s."""
    text = config.read_text()
    old = '[role]\nmode = "static"\nactive = "node-a"\n'
    assert text.count(old) == 1, f"{config.name}: no static [role] section"
    new = '[role]\nmode = "external"\n' + (f'active = "{active}"\n' if active else "")
    text = text.replace(old, new)
    if peer_timeout_s is not None:
        text, n = re.subn(r'^(address = "[^"]+")$', rf"\1\ntimeout_s = {peer_timeout_s}", text, flags=re.M)
        assert n == 1, f"{config.name}: no [peer] address"
    config.write_text(text)


def status_role(doc_text: str) -> str | None:
    """`role` of `hasync status --json` (None when it printed no document)."""
    try:
        doc: Any = json.loads(doc_text)
    except ValueError:
        return None
    return doc.get("role") if isinstance(doc, dict) else None


def run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
