"""The embedded default: a two-node pair on 127.0.0.1 with a FlinkServer-like tree, live changes shown."""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from rich.console import Console

from hasync.config import load
from hasync.fsutil import atomic_file, atomic_write

SYNC_DIRS = ("conf", "udf")
DEMO_INTERVAL_S = 5.0  # the demo checks often, to show the alarm within seconds
CUT_EVERY = 6  # changes between two demonstrations of the alarm


@dataclass(frozen=True)
class Pair:
    base: Path
    config_a: Path
    config_b: Path
    data_a: Path
    data_b: Path
    port_a: int
    port_b: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_pair(
    base: Path,
    port_a: int | None = None,
    port_b: int | None = None,
    interval_s: float = 60,
    extra: str = "",
    dirs: tuple[str, ...] = SYNC_DIRS,
) -> Pair:
    """Write two node configs and a shared token under `base`: node-a active, node-b standby."""
    base = base.resolve()
    port_a = port_a or free_port()
    port_b = port_b or free_port()
    (base / "secrets").mkdir(parents=True, exist_ok=True)
    token = base / "secrets" / "pair.token"
    if not token.exists():
        atomic_write(token, (secrets.token_urlsafe(32) + "\n").encode(), mode=0o600)  # never readable by others
    configs = []
    for me, peer, port, peer_port in (("node-a", "node-b", port_a, port_b), ("node-b", "node-a", port_b, port_a)):
        sync_dirs = "".join(f'[[sync.dirs]]\nname = "{d}"\npath = "data/{me}/{d}"\n\n' for d in dirs)
        text = f"""# hasync config of {me} (written by hasync demo)
[cluster]
source = "demo-cluster"
service_name = "Flink"
role_name = "FlinkServer"

[node]
name = "{me}"
hostname = "{me}"
listen = "127.0.0.1:{port}"
state_dir = "state/{me}"
log_dir = "logs/{me}"

[peer]
name = "{peer}"
address = "127.0.0.1:{peer_port}"

[role]
mode = "static"
active = "node-a"

{sync_dirs}[sync]
exclude = ["*.swp", "*.tmp"]

[backup]
dir = "backup/{me}"
max_copies = 5

[check]
interval_s = {interval_s}

[security]
token_file = "secrets/pair.token"
{extra}"""
        path = base / f"{me}.toml"
        atomic_write(path, text.encode())
        configs.append(path)
        for d in dirs:
            (base / "data" / me / d).mkdir(parents=True, exist_ok=True)
    return Pair(base, configs[0], configs[1], base / "data" / "node-a", base / "data" / "node-b", port_a, port_b)


FLINK_CONF = """jobmanager.rpc.address: {host}
jobmanager.rpc.port: 6123
jobmanager.memory.process.size: 1600m
taskmanager.memory.process.size: 1728m
taskmanager.numberOfTaskSlots: {slots}
parallelism.default: 1
high-availability: zookeeper
high-availability.storageDir: hdfs:///flink/ha/
state.backend: rocksdb
state.checkpoints.dir: hdfs:///flink/checkpoints
rest.port: 28130
"""


def seed(data: Path, rng: random.Random | None = None) -> None:
    """A FlinkServer-like tree: conf files, a few UDF jars, a nested dir, a symlink."""
    rng = rng or random.Random(45641)
    conf, udf = data / "conf", data / "udf"
    conf.mkdir(parents=True, exist_ok=True)
    udf.mkdir(parents=True, exist_ok=True)
    (conf / "flink-conf.yaml").write_text(FLINK_CONF.format(host="node-a", slots=4))
    (conf / "log4j.properties").write_text("rootLogger.level = INFO\nrootLogger.appenderRef.file.ref = MainAppender\n")
    (conf / "masters").write_text("node-a:28130\nnode-b:28130\n")
    (conf / "workers").write_text("".join(f"worker-{i:02d}\n" for i in range(1, 9)))
    (conf / "sql-client-defaults.yaml").write_text("execution:\n  planner: blink\n  type: streaming\n")
    (conf / "ssl").mkdir(exist_ok=True)
    (conf / "ssl" / "truststore.jks").write_bytes(rng.randbytes(2048))
    os.chmod(conf / "ssl" / "truststore.jks", 0o600)
    link = conf / "flink-conf.current"
    if not link.is_symlink():
        link.symlink_to("flink-conf.yaml")
    for i, name in enumerate(("udf-geo-1.2.jar", "udf-json-0.9.jar", "udf-risk-3.1.jar")):
        make_jar(udf / name, rng, classes=5 + i * 3)


def make_jar(path: Path, rng: random.Random, classes: int = 5) -> None:
    # Not durable: a demo's jar lost to a power cut costs nothing.
    with atomic_file(path, durable=False) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\nCreated-By: hasync demo\n")
        for c in range(classes):
            z.writestr(f"com/example/udf/Func{c}.class", rng.randbytes(rng.randint(800, 6000)))


def _agent(config: Path, log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "hasync", "agent", "-c", str(config)], stdout=out, stderr=out, start_new_session=True
    )


def _wait_until(pred: Callable[[], bool], timeout: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(0.005)
    return None


def run(work_dir: str) -> None:
    con = Console(highlight=False)
    base = Path(work_dir).resolve()
    fresh = not (base / "node-a.toml").exists()
    pair = write_pair(base, interval_s=DEMO_INTERVAL_S) if fresh else _existing(base)
    if fresh:
        seed(pair.data_a)
    con.print(f"[bold]hasync demo[/] in {base}")
    con.print(f"  node-a (active)  config {pair.config_a.name}, data {pair.data_a}")
    con.print(f"  node-b (standby) config {pair.config_b.name}, data {pair.data_b}")
    (base / "logs").mkdir(exist_ok=True)
    agents = [
        _agent(pair.config_a, base / "logs" / "agent-a.out"),
        _agent(pair.config_b, base / "logs" / "agent-b.out"),
    ]
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    try:
        con.print("starting both agents ...")
        t = _wait_until(lambda: _same(pair), 60)
        if t is None:
            con.print("[red]initial sync did not complete in 60 s; see logs/agent-*.out[/]")
        else:
            n = sum(1 for _ in pair.data_a.rglob("*"))
            con.print(f"[green]initial sync done[/]: {n} paths identical on both nodes ({t:.2f} s after start)")
        con.print("now changing files on the active every few seconds (Ctrl-C stops both agents)")
        con.print(
            f"the pair is checked every {DEMO_INTERVAL_S:g} s here (60 s by default); every {CUT_EVERY} "
            "changes the demo stops the active's agent to show alarm 45641 being raised and cleared"
        )
        rng = random.Random()
        step = 0
        while not stopping:
            time.sleep(3)
            step += 1
            if step % CUT_EVERY == 0:
                agents[0] = _show_alarm(con, pair, agents[0], base)
                continue
            what, path = _change(pair.data_a, rng, step)
            dt = _wait_until(partial(_same_path, pair, path), 10)
            shown = f"{dt * 1000:.0f} ms" if dt is not None else "[red]not yet after 10 s[/]"
            con.print(f"  active: {what:<40} -> on the standby after {shown}")
    except KeyboardInterrupt:
        pass
    finally:
        con.print("stopping agents ...")
        for p in agents:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in agents:
            try:
                p.wait(timeout=6)
            except subprocess.TimeoutExpired:
                p.kill()
        con.print("stopped. Configs, data and logs stay in " + str(base))


def _existing(base: Path) -> Pair:
    a, b = load(base / "node-a.toml"), load(base / "node-b.toml")
    return Pair(
        base,
        a.path,
        b.path,
        base / "data/node-a",
        base / "data/node-b",
        a.listen_host_port()[1],
        b.listen_host_port()[1],
    )


def _alarms(pair: Pair) -> list[dict[str, object]]:
    """The standby's alarm records (its agent's API, with the pair's token)."""

    token = (pair.base / "secrets" / "pair.token").read_text().strip()
    req = urllib.request.Request(
        f"http://127.0.0.1:{pair.port_b}/v1/alarms?all=1", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return list(json.loads(r.read()))
    except OSError:
        return []


def _show_alarm(con: object, pair: Pair, active: subprocess.Popen[bytes], base: Path) -> subprocess.Popen[bytes]:
    """Stop the active's agent until the standby raises 45641, then start it until the alarm clears."""
    assert isinstance(con, Console)
    before = {str(a["raised_at"]) for a in _alarms(pair)}
    con.print("[yellow]cutting the standby off: stopping node-a's agent[/]")
    t0 = time.monotonic()
    active.send_signal(signal.SIGTERM)
    active.wait(timeout=10)
    raised = _wait_until(lambda: any(str(a["raised_at"]) not in before for a in _alarms(pair)), 4 * DEMO_INTERVAL_S)
    new = [a for a in _alarms(pair) if str(a["raised_at"]) not in before]
    if raised is None or not new:
        con.print("[red]  no alarm yet; see logs/node-b/ha.log[/]")
    else:
        a = new[0]
        con.print(f"[red]  ALARM {a['alarm_id']} {a['severity']}[/] {a['name']}")
        con.print(
            f"    HostName={a['host_name']} cause={a['cause']} raised {time.monotonic() - t0:.1f} s after the cut"
        )
    con.print("[yellow]restoring: starting node-a's agent again[/]")
    active = _agent(pair.config_a, base / "logs" / "agent-a.out")
    t1 = time.monotonic()
    cleared = _wait_until(lambda: all(a["cleared_at"] is not None for a in _alarms(pair)), 6 * DEMO_INTERVAL_S)
    if cleared is None:
        con.print("[red]  the alarm is still active; see `hasync diagnose -c node-b.toml`[/]")
    else:
        con.print(f"[green]  alarm cleared[/] {time.monotonic() - t1:.1f} s after the restart (auto clear)")
    return active


def _change(data: Path, rng: random.Random, step: int) -> tuple[str, Path]:
    conf = data / "conf" / "flink-conf.yaml"
    kind = step % 4
    if kind == 1:
        conf.write_text(FLINK_CONF.format(host="node-a", slots=rng.randint(2, 16)))
        return "edit conf/flink-conf.yaml", conf
    if kind == 2:
        jar = data / "udf" / f"udf-new-{step}.jar"
        make_jar(jar, rng)
        return f"add udf/{jar.name}", jar
    if kind == 3:
        jars = sorted((data / "udf").glob("udf-new-*.jar"))
        if jars:
            jars[0].unlink()
            return f"delete udf/{jars[0].name}", jars[0]
    mode = 0o640 if conf.stat().st_mode & 0o777 == 0o644 else 0o644  # always a change to propagate
    os.chmod(conf, mode)
    return f"chmod {mode:o} conf/flink-conf.yaml", conf


def _mirror(pair: Pair, path: Path) -> Path:
    return pair.data_b / path.relative_to(pair.data_a)


def _same_path(pair: Pair, path: Path) -> bool:
    other = _mirror(pair, path)
    if not path.exists():
        return not other.exists()
    try:
        return other.read_bytes() == path.read_bytes() and os.stat(other).st_mode == os.stat(path).st_mode
    except OSError:
        return False


def _same(pair: Pair) -> bool:
    for p in pair.data_a.rglob("*"):
        if p.is_file() and not p.is_symlink() and not _same_path(pair, p):
            return False
        if not os.path.lexists(_mirror(pair, p)):
            return False
    return True
