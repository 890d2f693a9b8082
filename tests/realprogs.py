"""The monitoring programs operators run, started for real on 127.0.0.1 with temp configs and ports:
Alertmanager, Prometheus, rsyslog (Debian packages, installed by scripts/test.sh), and the config
blocks of docs/operations.md that the tests feed them (so that what is documented is what is tested)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hasync.demo import free_port
from pairlib import wait_for

DOCS = Path(__file__).resolve().parent.parent / "docs" / "operations.md"


def doc_block(name: str) -> str:
    """The fenced code block of docs/operations.md whose first line names `name` (`# file: <name>`)."""
    text = DOCS.read_text()
    for m in re.finditer(r"^```[a-z]*\n(.*?)^```", text, re.S | re.M):
        body = m.group(1)
        first = body.splitlines()[0] if body else ""
        if re.fullmatch(rf"(#|//) file: {re.escape(name)}", first.strip()):
            return body
    raise AssertionError(f"docs/operations.md has no code block starting with '# file: {name}'")


def program(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:  # scripts/test.sh installs them: missing is a broken setup, not a skip
        raise AssertionError(f"{name} not installed (scripts/test.sh need_debs installs it)")
    return path


def get_json(url: str, timeout: float = 5) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def _ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"{url}: exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@contextmanager
def _running(args: list[str], log: Path, ready_url: str, what: str) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=out, cwd=log.parent)
    try:
        wait_for(lambda: _ready(ready_url, proc, log), 30, 0.05, what=f"{what} ready")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Alertmanager:
    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def alerts(self) -> list[dict[str, Any]]:
        """What its API v2 shows (resolved alerts are not listed)."""
        return list(get_json(f"{self.url}/api/v2/alerts"))


@contextmanager
def alertmanager(workdir: Path, config: str) -> Iterator[Alertmanager]:
    """A real Alertmanager (no clustering) with `config` (YAML)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "alertmanager.yml").write_text(config)
    am = Alertmanager(free_port())
    args = [
        program("prometheus-alertmanager"),
        f"--config.file={workdir / 'alertmanager.yml'}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{am.port}",
        "--cluster.listen-address=",
    ]
    with _running(args, workdir / "alertmanager.log", f"{am.url}/-/ready", "alertmanager"):
        yield am


class Prometheus:
    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def query(self, expr: str) -> list[dict[str, Any]]:
        q = urllib.parse.urlencode({"query": expr})
        doc = get_json(f"{self.url}/api/v1/query?{q}")
        assert doc["status"] == "success", doc
        return list(doc["data"]["result"])

    def alerts(self) -> list[dict[str, Any]]:
        return list(get_json(f"{self.url}/api/v1/alerts")["data"]["alerts"])

    def firing(self) -> set[str]:
        return {a["labels"]["alertname"] for a in self.alerts() if a["state"] == "firing"}

    def targets(self) -> list[dict[str, Any]]:
        return list(get_json(f"{self.url}/api/v1/targets")["data"]["activeTargets"])


@contextmanager
def prometheus(workdir: Path, config: str) -> Iterator[Prometheus]:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "prometheus.yml").write_text(config)
    p = Prometheus(free_port())
    args = [
        program("prometheus"),
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{p.port}",
        "--log.level=warn",
    ]
    with _running(args, workdir / "prometheus.log", f"{p.url}/-/ready", "prometheus"):
        yield p


@contextmanager
def rsyslog(workdir: Path, rules: str, port: int) -> Iterator[Path]:
    """A private rsyslogd (own pid file, no system logs) receiving on UDP and TCP `port` and writing
    what `rules` says; yields the work dir."""
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "rsyslog.conf"
    conf.write_text(
        f"""global(workDirectory="{workdir}")
module(load="imudp")
module(load="imtcp")
input(type="imudp" address="127.0.0.1" port="{port}")
input(type="imtcp" address="127.0.0.1" port="{port}")
{rules}
"""
    )
    check = subprocess.run([program("rsyslogd"), "-N1", "-f", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    log = workdir / "rsyslogd.log"
    pidfile = workdir / "rsyslogd.pid"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [program("rsyslogd"), "-n", "-f", str(conf), "-i", str(pidfile)], stdout=out, stderr=out, cwd=workdir
        )
    try:
        import socket

        def listening() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"rsyslogd exited with {proc.returncode}: {log.read_text(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_for(listening, 20, 0.05, what="rsyslogd listening")
        yield workdir
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
