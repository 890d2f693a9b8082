"""Config errors of SPEC §2: exit code 2 and one line naming the file, the key and what is wrong."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hasync.config import load
from hasync.demo import write_pair


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hasync", *args], capture_output=True, text=True, cwd=cwd, timeout=60)


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return write_pair(tmp_path).config_a


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def assert_config_error(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_valid_config_loads_with_defaults_and_resolved_paths(cfg: Path) -> None:
    c = load(cfg)
    assert c.node.name == "node-a" and c.check.interval_s == 60 and c.backup.max_copies == 5
    assert c.node.state_dir == cfg.parent / "state" / "node-a"
    assert c.sync.dirs[0].path == cfg.parent / "data" / "node-a" / "conf"
    assert len(c.token) > 20


@pytest.mark.parametrize(
    ("old", "new", "needles"),
    [
        ("max_copies = 5", 'max_copies = 5\ncolour = "red"', ["backup.colour", "unknown key"]),
        ("max_copies = 5", 'max_copies = "five"', ["backup.max_copies", "integer"]),
        ("interval_s = 60", "interval_s = -1", ["check.interval_s", "greater than 0"]),
        ('name = "udf"', 'name = "conf"', ["sync.dirs", "duplicate dir name 'conf'"]),
        (
            'token_file = "secrets/pair.token"',
            'token_file = "secrets/missing.token"',
            ["security.token_file", "missing.token"],
        ),
        ('address = "127.0.0.1:', 'address = "127.0.0.1', ["peer.address", "host:port"]),
        ('active = "node-a"', 'active = "node-z"', ["role.active", "node-a"]),
        ('[node]\nname = "node-a"', "[node]\nname = 5", ["node.name", "string"]),
        ("[cluster]", "[cluster\n", ["not valid TOML"]),
    ],
)
def test_config_errors_exit_2_with_one_line(cfg: Path, old: str, new: str, needles: list[str]) -> None:
    edit(cfg, old, new)
    r = run("status", "-c", str(cfg), cwd=cfg.parent)
    assert_config_error(r, str(cfg), *needles)


def test_missing_config_file(tmp_path: Path) -> None:
    r = run("status", "-c", "nope.toml", cwd=tmp_path)
    assert_config_error(r, "nope.toml", "not found")


def test_missing_required_section(cfg: Path) -> None:
    text = cfg.read_text()
    cfg.write_text(text[: text.index("[peer]")] + text[text.index("[role]") :])
    assert_config_error(run("status", "-c", str(cfg), cwd=cfg.parent), "peer", "missing required key")


def test_unreadable_token(cfg: Path) -> None:
    token = cfg.parent / "secrets" / "pair.token"
    token.unlink()
    token.mkdir()  # unreadable as a file, even for root
    assert_config_error(run("status", "-c", str(cfg), cwd=cfg.parent), "security.token_file", "cannot read")


def test_port_in_use(cfg: Path) -> None:
    c = load(cfg)
    host, port = c.listen_host_port()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen()
        r = run("agent", "-c", str(cfg), cwd=cfg.parent)
    assert_config_error(r, str(cfg), "node.listen", "already in use")


def test_error_never_prints_the_token(cfg: Path) -> None:
    token = (cfg.parent / "secrets" / "pair.token").read_text().strip()
    edit(cfg, "max_copies = 5", "max_copies = 0")
    r = run("status", "-c", str(cfg), cwd=cfg.parent)
    assert r.returncode == 2 and token not in r.stderr + r.stdout
