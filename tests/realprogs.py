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
        _stop(proc)


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

    def last_evaluation(self) -> float:
        """Unix time the rule groups were last all evaluated (0 before)."""
        from datetime import datetime

        groups = get_json(f"{self.url}/api/v1/rules")["data"]["groups"]
        stamps = [datetime.fromisoformat(g["lastEvaluation"].replace("Z", "+00:00")).timestamp() for g in groups]
        return min(stamps, default=0.0)

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
def rsyslog(workdir: Path, config: str, port: int) -> Iterator[Path]:
    """A private rsyslogd (own config, work dir and pid file; no system logs) with `config`, which
    listens on TCP `port` (and UDP); yields the work dir."""
    import socket

    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "rsyslog.conf"
    conf.write_text(f'global(workDirectory="{workdir}")\n{config}')
    exe = program("rsyslogd")
    check = subprocess.run([exe, "-N1", "-f", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    log = workdir / "rsyslogd.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [exe, "-n", "-f", str(conf), "-i", str(workdir / "rsyslogd.pid")], stdout=out, stderr=out, cwd=workdir
        )

    def listening() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"rsyslogd exited with {proc.returncode}: {log.read_text(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    try:
        wait_for(listening, 20, 0.05, what="rsyslogd listening")
        yield workdir
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Nagios:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    def services(self) -> dict[str, dict[str, str]]:
        """`servicestatus` blocks of status.dat by service_description."""
        try:
            text = (self.workdir / "status.dat").read_text(errors="replace")
        except FileNotFoundError:
            return {}
        out: dict[str, dict[str, str]] = {}
        for block in re.findall(r"^servicestatus \{\n(.*?)^\t\}", text, re.S | re.M):
            fields = dict(line.strip().split("=", 1) for line in block.splitlines() if "=" in line)
            out[fields["service_description"]] = fields
        return out


NAGIOS_TEMPLATES = """define timeperiod {
    timeperiod_name always
    alias always
    sunday 00:00-24:00
    monday 00:00-24:00
    tuesday 00:00-24:00
    wednesday 00:00-24:00
    thursday 00:00-24:00
    friday 00:00-24:00
    saturday 00:00-24:00
}
define command {
    command_name noop
    command_line /bin/true
}
define contact {
    contact_name nobody
    host_notifications_enabled 0
    service_notifications_enabled 0
    host_notification_period always
    service_notification_period always
    host_notification_options n
    service_notification_options n
    host_notification_commands noop
    service_notification_commands noop
}
define service {
    name generic-service
    register 0
    max_check_attempts 1
    check_interval 1
    retry_interval 1
    check_period always
    notification_period always
    contacts nobody
}
"""


@contextmanager
def nagios(workdir: Path, objects: str) -> Iterator[Nagios]:
    """A real Nagios 4 with a private main config (interval_length 1: intervals in seconds), the
    templates above and `objects`; status.dat rewritten every second."""
    import grp
    import os
    import pwd

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "cr").mkdir(exist_ok=True)
    (workdir / "objects.cfg").write_text(NAGIOS_TEMPLATES + objects)
    w = workdir
    (w / "nagios.cfg").write_text(
        f"""log_file={w}/nagios.log
cfg_file={w}/objects.cfg
object_cache_file={w}/objects.cache
precached_object_file={w}/objects.precache
status_file={w}/status.dat
status_update_interval=1
nagios_user={pwd.getpwuid(os.geteuid()).pw_name}
nagios_group={grp.getgrgid(os.getegid()).gr_name}
check_external_commands=0
lock_file={w}/nagios.lock
temp_file={w}/nagios.tmp
temp_path={w}
check_result_path={w}/cr
check_result_reaper_frequency=1
retain_state_information=0
state_retention_file={w}/retention.dat
interval_length=1
max_service_check_spread=1
max_host_check_spread=1
service_inter_check_delay_method=n
host_inter_check_delay_method=n
process_performance_data=1
enable_notifications=0
use_syslog=0
"""
    )
    exe = program("nagios4")
    verify = subprocess.run([exe, "-v", str(w / "nagios.cfg")], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout
    with open(w / "stdout.log", "ab") as out:
        proc = subprocess.Popen([exe, str(w / "nagios.cfg")], stdout=out, stderr=out, cwd=w)
    try:
        yield Nagios(w)
    finally:
        _stop(proc)


class LineReceiver:
    """Collects the lines sent to a TCP port (Icinga's GraphiteWriter)."""

    def __init__(self) -> None:
        import socketserver
        import threading

        self.lines: list[str] = []
        recv = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                for raw in self.rfile:
                    recv.lines.append(raw.decode(errors="replace").rstrip("\n"))

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


ICINGA_PERFDATA_TEMPLATE = "\\t".join(
    f"{k}::${v}$"
    for k, v in (
        ("SERVICEDESC", "service.name"),
        ("SERVICESTATE", "service.state"),
        ("SERVICEOUTPUT", "service.output"),
        ("SERVICEPERFDATA", "service.perfdata"),
    )
)


class Icinga:
    def __init__(self, workdir: Path, graphite: LineReceiver) -> None:
        self.workdir = workdir
        self.graphite = graphite

    def results(self) -> list[dict[str, str]]:
        """What its PerfdataWriter wrote: one dict per service check result."""
        lines = [
            line
            for f in sorted(self.workdir.glob("service-perfdata.[0-9]*"))
            for line in f.read_text(errors="replace").splitlines()
        ]
        return [dict(field.split("::", 1) for field in line.split("\t") if "::" in field) for line in lines]

    def log(self) -> str:
        return (self.workdir / "icinga2.out").read_text(errors="replace")


@contextmanager
def icinga(workdir: Path, objects: str) -> Iterator[Icinga]:
    """A real Icinga 2 daemon with private paths, running as this user: the checker, a
    PerfdataWriter (output and perfdata of each result, rotated every second) and a GraphiteWriter
    (it parses the perfdata with Icinga's parser) sending to a local LineReceiver."""
    import grp
    import os
    import pwd

    w = workdir
    w.mkdir(parents=True, exist_ok=True)
    graphite = LineReceiver()
    (w / "icinga2.conf").write_text(
        f"""object CheckerComponent "checker" {{ }}
object PerfdataWriter "perfdata" {{
  service_perfdata_path = "{w}/service-perfdata"
  service_temp_path = "{w}/service-perfdata.tmp"
  host_perfdata_path = "{w}/host-perfdata"
  host_temp_path = "{w}/host-perfdata.tmp"
  service_format_template = "{ICINGA_PERFDATA_TEMPLATE}"
  rotation_interval = 1s
}}
object GraphiteWriter "graphite" {{
  host = "127.0.0.1"
  port = {graphite.port}
}}
object CheckCommand "noop" {{
  command = [ "/bin/true" ]
}}
{objects}
"""
    )
    defines = [
        f"-DConfiguration.RunAsUser={pwd.getpwuid(os.geteuid()).pw_name}",
        f"-DConfiguration.RunAsGroup={grp.getgrgid(os.getegid()).gr_name}",
    ]
    for key in ("CacheDir", "DataDir", "LogDir", "SpoolDir", "InitRunDir"):
        (w / key).mkdir(exist_ok=True)
        defines.append(f"-DConfiguration.{key}={w / key}")
    for key, name in (
        ("PidPath", "icinga2.pid"),
        ("ObjectsPath", "icinga2.debug"),
        ("VarsPath", "icinga2.vars"),
        ("StatePath", "icinga2.state"),
        ("ModAttrPath", "modified-attributes.conf"),
    ):
        defines.append(f"-DConfiguration.{key}={w / name}")
    exe = program("icinga2")
    args = [exe, "daemon", "-c", str(w / "icinga2.conf"), *defines]
    check = subprocess.run([*args, "--validate"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    with open(w / "icinga2.out", "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=out, cwd=w)
    try:
        yield Icinga(w, graphite)
    finally:
        _stop(proc)
        graphite.close()
