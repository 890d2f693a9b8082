"""`hasync check --nagios` as Nagios 4 and Icinga 2 see it (issue 10, defects 2-5): the real daemons
run the command definitions of docs/operations.md against real agents."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from functools import partial
from pathlib import Path

from hasync.check import OutOfSync, Verdict
from hasync.errors import Cause
from pairlib import PairEnv, wait_for
from realprogs import doc_block, icinga, nagios

INTERVAL = 1.0
HASYNC = f"{sys.executable} -m hasync"
# The plugin guidelines' perfdata: 'label'=value[UOM];[warn];[crit];[min];[max], value a number
# (Icinga 2's parser takes no `U`).
PERF_ITEM = re.compile(r"[A-Za-z_]+=-?\d+(\.\d+)?(s|%|B|KB|MB|TB|c)?(;[^; ]*){0,4}")


def split_plugin_line(line: str) -> tuple[str, str]:
    """As Nagios does: the text before the first `|`, the perfdata after it."""
    text, _, perf = line.partition("|")
    return text.strip(), perf.strip()


def test_plugin_line_escapes_the_text_and_leaves_out_unknown_figures() -> None:
    path = "conf/a|b;c\nd%"
    v = Verdict(False, Cause.JUNK_FILE, True, None, (OutOfSync("conf", "a|b;c\nd%", "junk"),))
    line, code = v.nagios()
    assert code == 2 and "\n" not in line and line.count("|") == 1, line
    text, perf = split_plugin_line(line)
    assert ";" not in text and "conf/a%7Cb%3Bc%0Ad%25" in text, text
    assert perf == "out_of_sync=1", perf  # the lag is unknown: left out, never `U`
    assert path not in line
    unreachable = Verdict(False, Cause.PEER_UNREACHABLE, False, None, (OutOfSync("", "", "x | y; z"),))
    text, perf = split_plugin_line(unreachable.nagios()[0])
    assert text == "HASYNC CRITICAL - peer_unreachable: x %7C y%3B z" and perf == "out_of_sync=1"
    ok_line, ok = Verdict(True, None, True, 0.25).nagios()
    assert ok == 0 and ok_line == "HASYNC OK - standby in sync | out_of_sync=0 lag=0.250s"
    for item in split_plugin_line(ok_line)[1].split():
        assert PERF_ITEM.fullmatch(item), item


def plugin(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hasync", "check", *args], capture_output=True, text=True, timeout=60)


def test_option_errors_are_unknown_on_stdout(tmp_path: Path) -> None:
    for args, message in (
        (("--nagios", "--bogus"), "No such option '--bogus'"),
        (("--nagios", "-c"), "Option '-c' requires an argument."),
        (("--nagios", "extra"), "Got unexpected extra argument (extra)"),
        (("--nagios", "-c", str(tmp_path / "none.toml")), "config file not found"),
    ):
        r = plugin(*args)
        assert r.returncode == 3, (args, r)
        assert r.stdout.startswith("HASYNC UNKNOWN - ") and message in r.stdout, (args, r.stdout)
        assert r.stdout.count("\n") == 1 and "|" not in r.stdout, r.stdout  # nothing known: no perfdata
    r = plugin("--bogus")  # without --nagios: the usual usage error
    assert r.returncode == 2 and r.stdout == "" and "No such option" in r.stderr


def test_option_errors_anywhere_are_unknown_on_stdout(tmp_path: Path) -> None:
    """With `--nagios` anywhere in argv, an error before the command name or on the flag itself is a plugin
    answer too (these exited 2 with nothing on stdout: Nagios shows "(No output on stdout)")."""
    none = str(tmp_path / "none.toml")
    for args, message in (
        (("--bogus", "check", "--nagios", "-c", none), "No such option '--bogus'"),
        (("check", "--nagios=1", "-c", none), "Option '--nagios' does not take a value."),
        (("--nagios", "check", "-c", none), "No such option '--nagios'"),
        (("chekc", "--nagios", "-c", none), "No such command 'chekc'"),
    ):
        r = subprocess.run([sys.executable, "-m", "hasync", *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 3, (args, r)
        assert r.stdout.startswith("HASYNC UNKNOWN - ") and message in r.stdout, (args, r.stdout)
        assert r.stdout.count("\n") == 1 and "|" not in r.stdout, r.stdout
    r = subprocess.run([sys.executable, "-m", "hasync", "--bogus", "check"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == "" and "No such option" in r.stderr  # without --nagios: usage error


def nagios_ok(env: PairEnv, node: str) -> bool:
    return env.hasync("check", "--nagios", node=node).returncode == 0


def test_own_agent_down_is_critical_on_both_nodes(make_pair) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair(interval_s=INTERVAL)
    (env.src / "conf" / "a.yaml").write_text("a")
    env.a.start()
    env.b.start()
    env.wait_in_sync()
    for dead, other in (("b", "a"), ("a", "b")):
        agent = env.b if dead == "b" else env.a
        agent.stop()
        r = env.hasync("check", "--nagios", node=dead)
        assert r.returncode == 2, r
        name = "node-b" if dead == "b" else "node-a"
        assert r.stdout.startswith(
            f"HASYNC CRITICAL - peer_agent_down: the hasync agent of this node ({name}) is not running"
        ), r.stdout
        assert r.stdout.count("\n") == 1 and "|" not in r.stdout
        # The other node's plugin says it too (its agent checks the pair).
        o = env.hasync("check", "--nagios", node=other)
        assert o.returncode == 2 and o.stdout.startswith("HASYNC CRITICAL - peer_agent_down: "), o.stdout
        agent.start()
        env.wait_in_sync()
        wait_for(partial(nagios_ok, env, dead), 15, what="OK again")


def test_nagios4_and_icinga2_parse_the_plugin_output(make_pair, base: Path) -> None:  # type: ignore[no-untyped-def]
    env: PairEnv = make_pair(unprivileged=True, interval_s=INTERVAL)
    (env.src / "conf" / "good.yaml").write_text("ok")
    junk = env.src / "conf" / "sed|x;y"  # a junk file whose name holds both characters
    junk.touch()
    junk.chmod(0)
    env.chown_all()
    env.a.start()
    env.b.start()
    wait_for(
        lambda: json.loads(env.hasync("check", "--json").stdout)["cause"] == "junk_file", 20, what="junk_file verdict"
    )
    cfg_b, cfg_a = str(env.pair.config_b), str(env.pair.config_a)

    # Nagios 4: the documented command and service, the service once per node, plus a bad option.
    nagios_doc = doc_block("hasync-nagios.cfg").replace("/usr/bin/hasync", HASYNC)
    service = nagios_doc[nagios_doc.index("define service") :]
    objects = nagios_doc.replace("/etc/hasync/hasync.toml", cfg_b)
    objects += service.replace("hasync\n", "hasync-a\n").replace("/etc/hasync/hasync.toml", cfg_a)
    objects += service.replace("hasync\n", "hasync-bad\n").replace("/etc/hasync/hasync.toml", f"{cfg_b} --bogus")
    objects += "define host {\n    host_name node-b\n    address 127.0.0.1\n    max_check_attempts 1\n"
    objects += "    check_period always\n    check_command noop\n    contacts nobody\n}\n"
    # Icinga 2: the documented check command and apply rule, checking every second.
    icinga_doc = doc_block("hasync-icinga.conf").replace('"/usr/bin/hasync"', f'"{sys.executable}", "-m", "hasync"')
    icinga_doc = icinga_doc.replace("/etc/hasync/hasync.toml", cfg_b)
    icinga_doc = icinga_doc.replace(
        'check_command = "hasync"\n', 'check_command = "hasync"\n  check_interval = 1s\n  retry_interval = 1s\n'
    )
    icinga_doc += 'object Host "node-b" {\n  check_command = "noop"\n  vars.hasync = true\n}\n'

    with nagios(base / "nagios", objects) as ng, icinga(base / "icinga", icinga_doc) as ic:

        def nagios_state(desc: str, pred: object) -> dict[str, str]:
            def ready() -> dict[str, str] | None:
                s = ng.services().get(desc)
                return s if s and s.get("has_been_checked") == "1" and pred(s) else None  # type: ignore[operator]

            return wait_for(ready, 20, 0.1, what=f"nagios {desc}")  # type: ignore[no-any-return]

        def icinga_result(pred: object) -> dict[str, str]:
            try:
                return wait_for(  # type: ignore[no-any-return]
                    lambda: next((r for r in reversed(ic.results()) if pred(r)), None),  # type: ignore[operator]
                    20,
                    0.1,
                    what="icinga check result",
                )
            except AssertionError as exc:
                raise AssertionError(f"{exc}\nlast results: {ic.results()[-3:]}\n{ic.log()[-3000:]}") from None

        s = nagios_state("hasync", lambda s: "junk_file" in s["plugin_output"])
        assert s["current_state"] == "2", s
        assert "first: conf/sed%7Cx%3By" in s["plugin_output"], s  # the whole text, nothing cut at the `|`
        assert re.fullmatch(r"out_of_sync=1 lag=\d+\.\d{3}s", s["performance_data"]), s
        bad = nagios_state("hasync-bad", lambda s: True)
        assert bad["current_state"] == "3" and bad["plugin_output"] == "HASYNC UNKNOWN - No such option '--bogus'."

        r = icinga_result(lambda r: "junk_file" in r.get("SERVICEOUTPUT", ""))
        assert r["SERVICESTATE"] == "CRITICAL" and "first: conf/sed%7Cx%3By" in r["SERVICEOUTPUT"], r
        assert re.fullmatch(r"out_of_sync=1 lag=\d+\.\d{3}s", r["SERVICEPERFDATA"]), r
        wait_for(lambda: any(".perfdata.lag.value " in line for line in ic.graphite.lines), 20, what="graphite lag")

        # The active's agent down: the lag is unknown. Nagios and Icinga get clean perfdata.
        env.a.stop()
        s = nagios_state("hasync", lambda s: "peer_agent_down" in s["plugin_output"])
        assert s["current_state"] == "2" and s["performance_data"] == "out_of_sync=1", s
        a = nagios_state("hasync-a", lambda s: "this node (node-a) is not running" in s["plugin_output"])
        assert a["current_state"] == "2", a
        r = icinga_result(lambda r: "peer_agent_down" in r.get("SERVICEOUTPUT", ""))
        assert r["SERVICEPERFDATA"] == "out_of_sync=1", r
        n = len(ic.graphite.lines)
        wait_for(lambda: any(".perfdata.out_of_sync.value " in x for x in ic.graphite.lines[n:]), 20, what="graphite")
        assert "invalid perfdata" not in ic.log(), ic.log()[-2000:]
