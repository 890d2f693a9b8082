"""Config errors of SPEC §2: exit code 2 and one line naming the file, the key and what is wrong."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
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
        ("interval_s = 60", "interval_s = -1", ["check.interval_s", "greater than or equal to 0.1"]),
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


# -- malformed configs, tried as a careless operator would write them (issue 9, item 10) --------------------------

Mutation = Callable[[Path], object]  # what a mutation returns is ignored
SECRET = "Pw-S3cret-42"


def sub(old: str, new: str) -> Mutation:
    return lambda cfg: edit(cfg, old, new)


def put(section: str, line: str) -> Mutation:
    """Add `line` to `[section]`, appending the section when the demo config has none."""

    def apply(cfg: Path) -> None:
        text = cfg.read_text()
        head = f"\n[{section}]\n"
        if head in text:
            cfg.write_text(text.replace(head, f"{head}{line}\n", 1))
        else:
            cfg.write_text(f"{text}{head}{line}\n")

    return apply


def token_bytes(data: bytes) -> Mutation:
    return lambda cfg: (cfg.parent / "secrets" / "pair.token").write_bytes(data)


def file_at(rel: str, then: Mutation | None = None) -> Mutation:
    def apply(cfg: Path) -> None:
        (cfg.parent / rel).parent.mkdir(parents=True, exist_ok=True)
        (cfg.parent / rel).write_text("a file, not a directory\n")
        if then is not None:
            then(cfg)

    return apply


def notify(kind: str, url: str) -> Mutation:
    return lambda cfg: cfg.write_text(cfg.read_text() + f'\n[[alarms.notify]]\nkind = "{kind}"\nurl = "{url}"\n')


MALFORMED: list[tuple[str, Mutation, str]] = [
    # numbers with a unit: finite and within the documented range
    ("interval-inf", sub("interval_s = 60", "interval_s = inf"), "check.interval_s"),
    ("interval-minus-inf", sub("interval_s = 60", "interval_s = -inf"), "check.interval_s"),
    ("interval-nan", sub("interval_s = 60", "interval_s = nan"), "check.interval_s"),
    ("interval-1e300", sub("interval_s = 60", "interval_s = 1e300"), "check.interval_s"),
    ("interval-zero", sub("interval_s = 60", "interval_s = 0"), "check.interval_s"),
    ("interval-string", sub("interval_s = 60", 'interval_s = "soon"'), "check.interval_s"),
    # strict types: no lax coercion of a boolean or a numeric string into a number, of 5.0 into an int, of
    # 1 or "yes" into a flag (a TOML integer for a float key stays fine: `interval_s = 60`)
    ("interval-true", sub("interval_s = 60", "interval_s = true"), "check.interval_s"),
    ("interval-numeric-string", sub("interval_s = 60", 'interval_s = "2"'), "check.interval_s"),
    ("max-copies-float", sub("max_copies = 5", "max_copies = 5.0"), "backup.max_copies"),
    ("peer-timeout-string", put("peer", 'timeout_s = "5"'), "peer.timeout_s"),
    ("audit-enabled-one", put("audit", "enabled = 1"), "audit.enabled"),
    ("on-raise-string", put("diagnose", 'on_raise = "yes"'), "diagnose.on_raise"),
    ("raise-after-zero", put("check", "raise_after = 0"), "check.raise_after"),
    ("clear-after-float", put("check", "clear_after = 1.5"), "check.clear_after"),
    ("takeover-after-huge", put("check", "takeover_after = 99999999999"), "check.takeover_after"),
    ("max-copies-zero", sub("max_copies = 5", "max_copies = 0"), "backup.max_copies"),
    ("max-copies-huge", sub("max_copies = 5", "max_copies = 1000000000"), "backup.max_copies"),
    ("max-copies-inf", sub("max_copies = 5", "max_copies = inf"), "backup.max_copies"),
    ("set-period-nan", put("backup", "set_period_s = nan"), "backup.set_period_s"),
    ("peer-timeout-inf", put("peer", "timeout_s = inf"), "peer.timeout_s"),
    ("peer-timeout-zero", put("peer", "timeout_s = 0"), "peer.timeout_s"),
    ("full-reconcile-1e308", put("sync", "full_reconcile_s = 1e308"), "sync.full_reconcile_s"),
    ("retry-negative", put("sync", "retry_s = -1"), "sync.retry_s"),
    ("batch-files-zero", put("sync", "batch_files = 0"), "sync.batch_files"),
    ("batch-bytes-huge", put("sync", "batch_bytes = 1125899906842624"), "sync.batch_bytes"),
    ("resend-inf", put("alarms", "resend_s = inf"), "alarms.resend_s"),
    ("retention-negative", put("alarms", "resolved_retention_s = -1"), "alarms.resolved_retention_s"),
    ("window-inf", put("diagnose", "window_s = inf"), "diagnose.window_s"),
    ("min-free-negative", put("diagnose", "min_free_bytes = -1"), "diagnose.min_free_bytes"),
    ("log-max-bytes-zero", put("log", "max_bytes = 0"), "log.max_bytes"),
    ("log-max-bytes-tiny", put("log", "max_bytes = 10"), "log.max_bytes"),
    ("log-backup-count-negative", put("log", "backup_count = -1"), "log.backup_count"),
    ("log-level", put("log", 'level = "TRACE"'), "log.level"),
    ("on-raise-not-bool", put("diagnose", "on_raise = 3"), "diagnose.on_raise"),
    # names and addresses
    ("node-name-empty", sub('name = "node-a"', 'name = ""'), "node.name"),
    ("source-empty", sub('source = "demo-cluster"', 'source = ""'), "cluster.source"),
    ("role-name-newline", sub('role_name = "FlinkServer"', 'role_name = "Flink\\nServer"'), "cluster.role_name"),
    ("hostname-nul", sub('hostname = "node-a"', 'hostname = "node\\u0000a"'), "node.hostname"),
    ("peer-hostname-empty", put("peer", 'hostname = ""'), "peer.hostname"),
    ("listen-port-range", sub('listen = "127.0.0.1:', 'listen = "127.0.0.1:9'), "node.listen"),
    ("listen-no-port", sub('listen = "127.0.0.1:', 'listen = "127.0.0.1#'), "node.listen"),
    ("listen-not-string", sub('listen = "127.0.0.1:', "listen = 8080 #"), "node.listen"),
    ("peer-port-zero", sub('address = "127.0.0.1:', 'address = "127.0.0.1:0#'), "peer.address"),
    ("peer-same-name", sub('[peer]\nname = "node-b"', '[peer]\nname = "node-a"'), "peer.name"),
    ("role-mode", sub('mode = "static"', 'mode = "raft"'), "role.mode"),
    ("role-active-unknown", sub('active = "node-a"', 'active = "node-z"'), "role.active"),
    ("dir-name-dotdot", sub('name = "conf"', 'name = ".."'), "sync.dirs[0].name"),
    ("dir-name-slash", sub('name = "conf"', 'name = "a/b"'), "sync.dirs[0].name"),
    ("dir-name-empty", sub('name = "conf"', 'name = ""'), "sync.dirs[0].name"),
    ("dir-path-nul", sub('path = "data/node-a/conf"', 'path = "data/\\u0000"'), "sync.dirs[0].path"),
    ("dir-duplicate", sub('name = "udf"', 'name = "conf"'), "sync.dirs[1].name"),
    ("exclude-empty-pattern", sub('exclude = ["*.swp", "*.tmp"]', 'exclude = [""]'), "sync.exclude[0]"),
    ("exclude-not-list", sub('exclude = ["*.swp", "*.tmp"]', 'exclude = "*.swp"'), "sync.exclude"),
    ("section-not-table", put("alarms", "notify = 5"), "alarms.notify"),
    ("unknown-key", put("check", "intervall_s = 5"), "check.intervall_s"),
    ("reserved-token-key", lambda cfg: cfg.write_text('token = "x"\n' + cfg.read_text()), "token"),
    # directories
    ("state-dir-is-file", file_at("state/node-a"), "node.state_dir"),
    ("log-dir-is-file", file_at("logs/node-a"), "node.log_dir"),
    ("state-dir-under-file", file_at("state"), "node.state_dir"),
    ("log-dir-under-file", file_at("logs"), "node.log_dir"),
    ("backup-dir-is-file", file_at("backup/node-a"), "backup.dir"),
    # a directory of hasync inside a sync dir, or a sync dir inside another (live: the standby takes its own
    # files for drift and raises alarm 45641 for good)
    ("backup-in-sync-dir", sub('dir = "backup/node-a"', 'dir = "data/node-a/conf/bk"'), "backup.dir"),
    ("state-in-sync-dir", sub('state_dir = "state/node-a"', 'state_dir = "data/node-a/conf/state"'), "node.state_dir"),
    ("log-in-sync-dir", sub('log_dir = "logs/node-a"', 'log_dir = "data/node-a/udf"'), "node.log_dir"),
    ("backup-in-sync-dir-dotdot", sub('dir = "backup/node-a"', 'dir = "backup/../data/node-a/udf/x"'), "backup.dir"),
    ("sync-dir-in-sync-dir", sub('path = "data/node-a/udf"', 'path = "data/node-a/conf/udf"'), "sync.dirs[1].path"),
    ("sync-dir-twice", sub('path = "data/node-a/udf"', 'path = "data/node-a/conf"'), "sync.dirs[0].path"),
    # the token file
    ("token-not-utf8", token_bytes(b"\xff\xfe\x00token\n"), "security.token_file"),
    ("token-empty", token_bytes(b"  \n"), "security.token_file"),
    ("token-two-lines", token_bytes(b"abcdefgh\nijklmnop\n"), "security.token_file"),
    ("token-huge", token_bytes(b"x" * 100_000), "security.token_file"),
    ("token-missing", sub('"secrets/pair.token"', '"secrets/missing.token"'), "security.token_file"),
    ("token-file-nul", sub('"secrets/pair.token"', '"secrets/\\u0000"'), "security.token_file"),
    ("tls-unsupported", put("security", 'tls_cert = "cert.pem"'), "security.tls_cert"),
    # the alarm store (its password never printed)
    ("store-mysql", put("alarms", f'store = "mysql://u:{SECRET}@db/hasync"'), "alarms.store"),
    ("store-empty", put("alarms", 'store = ""'), "alarms.store"),
    ("store-bad-ipv6", put("alarms", f'store = "postgresql://u:{SECRET}@[::1/db"'), "alarms.store"),
    ("store-bad-port", put("alarms", f'store = "postgresql://u:{SECRET}@db:99999/x"'), "alarms.store"),
    ("store-space", put("alarms", f'store = "postgresql://u:{SECRET}@db /x"'), "alarms.store"),
    ("store-one-slash", put("alarms", f'store = "postgresql:/hasync:{SECRET}@db.example/hasync"'), "alarms.store"),
    ("store-no-colon", put("alarms", f'store = "postgresql//hasync:{SECRET}@db.example/hasync"'), "alarms.store"),
    ("store-port-zero", put("alarms", 'store = "postgresql://hasync@127.0.0.1:0/hasync"'), "alarms.store"),
    # notifiers (their passwords never printed)
    ("notify-kind", notify("email", "http://x"), "alarms.notify[0].kind"),
    ("webhook-ftp", notify("webhook", f"ftp://u:{SECRET}@x/hook"), "alarms.notify[0].url"),
    ("webhook-no-host", notify("webhook", "http://"), "alarms.notify[0].url"),
    ("webhook-bad-port", notify("webhook", f"http://u:{SECRET}@x:70000/hook"), "alarms.notify[0].url"),
    ("webhook-bad-ipv6", notify("webhook", f"http://u:{SECRET}@[::1/hook"), "alarms.notify[0].url"),
    ("webhook-prefixed", notify("webhook", f"webhook:http://u:{SECRET}@hooks.example"), "alarms.notify[0].url"),
    ("alertmanager-one-slash", notify("alertmanager", f"http:/u:{SECRET}@am.example:9093"), "alarms.notify[0].url"),
    ("webhook-port-zero", notify("webhook", "http://127.0.0.1:0/hook"), "alarms.notify[0].url"),
    ("syslog-port-zero", notify("syslog", "udp://127.0.0.1:0"), "alarms.notify[0].url"),
    ("alertmanager-scheme", notify("alertmanager", "127.0.0.1:9093"), "alarms.notify[0].url"),
    ("syslog-http", notify("syslog", "http://x"), "alarms.notify[0].url"),
    ("syslog-facility", notify("syslog", "udp://x:514?facility=local9"), "alarms.notify[0].url"),
    ("syslog-no-host", notify("syslog", "tcp://:514"), "alarms.notify[0].url"),
    (
        "notify-twice",
        lambda cfg: (notify("webhook", "http://x/h")(cfg), notify("webhook", "http://x/h")(cfg)) and None,
        "alarms.notify[1].url",
    ),
    ("notify-missing-url", put("alarms", 'notify = [{kind = "webhook"}]'), "alarms.notify[0].url"),
    ("console-role", lambda cfg: cfg.write_text(cfg.read_text() + USER.format(role="root")), "console.users[0].role"),
]
USER = '\n[[console.users]]\nname = "admin"\nrole = "{role}"\npassword_hash = "x"\n'


@pytest.mark.parametrize(("mutate", "key"), [pytest.param(m, k, id=i) for i, m, k in MALFORMED])
@pytest.mark.parametrize("command", ["status", "agent"])
def test_malformed_config_one_line_naming_file_and_key(cfg: Path, mutate: Mutation, key: str, command: str) -> None:
    mutate(cfg)
    r = run(command, "-c", str(cfg), cwd=cfg.parent)
    assert_config_error(r, str(cfg), f": {key}: ")
    assert SECRET not in r.stderr + r.stdout


def test_malformed_configs_are_many() -> None:
    assert len(MALFORMED) >= 95 and len({i for i, _, _ in MALFORMED}) == len(MALFORMED)
