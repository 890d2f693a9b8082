"""Defects found by the review of issues 9 and 10 from outside (real agent processes, real sockets).

Each test fails on the reviewed snapshot; see the review report for the reproduction by hand.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hasync.demo import write_pair


@pytest.mark.parametrize(
    "args,message",
    [
        (("--bogus", "check", "--nagios"), "--bogus"),  # an option error before the command name
        (("check", "--nagios=1"), "--nagios"),  # the flag itself given a value
    ],
)
def test_nagios_option_errors_anywhere_are_unknown_on_stdout(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    """Issue 10 #3, variants: these exited 2 with nothing on stdout (Nagios: "(No output on stdout)")."""
    r = subprocess.run(
        [sys.executable, "-m", "hasync", *args, "-c", str(tmp_path / "none.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 3, r
    assert r.stdout.startswith("HASYNC UNKNOWN - ") and message in r.stdout, r.stdout


def _load_error(base: Path, extra: str) -> subprocess.CompletedProcess[str]:
    pair = write_pair(base, extra=extra)
    return subprocess.run(
        [sys.executable, "-m", "hasync", "status", "--json", "-c", str(pair.config_b)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=base,
    )


SECRET = "S3cretPassw0rd"


@pytest.mark.parametrize(
    "extra",
    [
        f'[alarms]\nstore = "postgresql:/hasync:{SECRET}@db.example/hasync"\n',  # one slash short
        f'[alarms]\nstore = "postgresql//hasync:{SECRET}@db.example/hasync"\n',  # the colon forgotten
        f'[alarms]\n[[alarms.notify]]\nkind = "webhook"\nurl = "webhook:http://u:{SECRET}@hooks.example"\n',
        f'[alarms]\n[[alarms.notify]]\nkind = "alertmanager"\nurl = "http:/u:{SECRET}@am.example:9093"\n',
    ],
    ids=["store-one-slash", "store-no-colon", "webhook-prefixed", "alertmanager-one-slash"],
)
def test_password_of_a_mistyped_url_never_shown(base: Path, extra: str) -> None:
    """Issue 9 #11, variants: a URL whose scheme is mistyped is refused with the password in clear."""
    r = _load_error(base, extra)
    assert r.returncode == 2, r
    assert SECRET not in r.stdout + r.stderr, r.stderr
    assert r.stderr.count("\n") == 1, r.stderr


@pytest.mark.parametrize(
    "extra",
    [
        '[alarms]\n[[alarms.notify]]\nkind = "syslog"\nurl = "udp://127.0.0.1:0"\n',
        '[alarms]\n[[alarms.notify]]\nkind = "webhook"\nurl = "http://127.0.0.1:0/hook"\n',
        '[alarms]\nstore = "postgresql://hasync@127.0.0.1:0/hasync"\n',
    ],
    ids=["syslog", "webhook", "store"],
)
def test_port_zero_in_a_url_is_a_config_error(base: Path, extra: str) -> None:
    """Issue 9 #10, variant: configuration.md says a port outside 1-65535 is a config error; port 0 loads."""
    r = _load_error(base, extra)
    assert r.returncode == 2, r
    assert "alarms.notify[0].url" in r.stderr or "alarms.store" in r.stderr, r.stderr


@pytest.mark.parametrize(
    "key,old,new",
    [
        ("backup.dir", 'dir = "backup/node-b"', 'dir = "data/node-b/conf/bk"'),
        ("state_dir", 'state_dir = "state/node-b"', 'state_dir = "data/node-b/conf/state"'),
        ("sync.dirs", 'path = "data/node-b/udf"', 'path = "data/node-b/conf/udf"'),
    ],
    ids=["backup-in-sync-dir", "state-in-sync-dir", "sync-dir-in-sync-dir"],
)
def test_hasync_directories_inside_a_sync_dir_are_a_config_error(base: Path, key: str, old: str, new: str) -> None:
    """Careless operator (not in issues 9/10): a [backup] dir inside a sync dir loads; on a live pair the
    standby then treats its own backup sets as drift, fails "Invalid argument (on the standby)" on conf/bk
    and raises alarm 45641 for good. Directories of hasync inside a sync dir (or sync dirs inside each
    other) should be refused at load, naming the key."""
    pair = write_pair(base)
    text = pair.config_b.read_text()
    assert old in text
    pair.config_b.write_text(text.replace(old, new, 1))
    r = subprocess.run(
        [sys.executable, "-m", "hasync", "status", "--json", "-c", str(pair.config_b)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=base,
    )
    assert r.returncode == 2, r.stdout[-300:]
    assert key in r.stderr and r.stderr.count("\n") == 1, r.stderr
