"""Step 1, network: ping the peer host, connect to its agent, make an authenticated request."""

from __future__ import annotations

import asyncio
import errno
import shutil
import time

from hasync.diagnose.context import Context
from hasync.diagnose.model import Step
from hasync.errors import AuthFailed, Cause, PeerError

TITLE = "Check whether the network between the active and standby nodes is normal"


async def ping(host: str, timeout_s: float = 2.0) -> tuple[bool | None, str]:
    """One ICMP echo with the system `ping`: (answered, evidence); None when ping cannot run."""
    exe = shutil.which("ping")
    if exe is None:
        return None, "ping: not installed (iputils-ping)"
    proc = await asyncio.create_subprocess_exec(
        exe,
        "-c",
        "1",
        "-W",
        str(max(1, int(timeout_s))),
        "-n",
        host,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s + 3)
    except TimeoutError:
        proc.kill()
        return False, f"ping {host}: no answer in {timeout_s:g} s"
    text = out.decode(errors="replace").strip().splitlines()
    summary = next((line for line in text if "packets transmitted" in line), text[-1] if text else "")
    rtt = next((line.split("=")[-1].strip() for line in text if line.startswith(("rtt", "round-trip"))), "")
    if proc.returncode == 0:
        return True, f"ping {host}: answered ({summary}{'; rtt ' + rtt if rtt else ''})"
    if proc.returncode == 2 and "Operation not permitted" in "\n".join(text):
        return None, f"ping {host}: not permitted for this user"
    return False, f"ping {host}: no answer ({summary or ' '.join(text)[-200:]})"


async def tcp_connect(host: str, port: int, timeout_s: float = 3.0) -> tuple[str, str]:
    """('ok'|'refused'|'timeout'|'unreachable', evidence) of a TCP connect to the agent."""
    t0 = time.monotonic()
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except TimeoutError:
        return "timeout", f"TCP {host}:{port}: no answer in {timeout_s:g} s"
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ECONNRESET):
            return "refused", f"TCP {host}:{port}: connection refused (the host answered, nothing listens)"
        return "unreachable", f"TCP {host}:{port}: {exc.strerror or exc}"
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return "ok", f"TCP {host}:{port}: connected in {1000 * (time.monotonic() - t0):.1f} ms"


async def run(ctx: Context) -> Step:
    step = Step("network", TITLE)
    host, _, port_s = ctx.cfg.peer.address.rpartition(":")
    host = host.strip("[]")
    (answered, ping_ev), (tcp, tcp_ev) = await asyncio.gather(ping(host), tcp_connect(host, int(port_s)))
    evidence = [ping_ev, tcp_ev]
    peer = ctx.cfg.peer.name
    if tcp == "ok":
        try:
            info = await ctx.peer_client.peer_info(timeout=5.0)
            evidence.append(f"authenticated request: accepted by {info.node or peer} ({info.role or None})")
        except AuthFailed:
            evidence.append("authenticated request: rejected (HTTP 401): the nodes do not share one token")
            step.verdict, step.cause = "fault", Cause.AUTH_FAILED
            step.action = (
                f"Give both nodes the same token: compare the file of [security] token_file on "
                f"{ctx.cfg.node.name} and {peer}, then restart the agent whose token changed."
            )
        except PeerError as exc:
            evidence.append(f"authenticated request: failed: {exc.message}")
            step.verdict, step.cause = "fault", exc.cause
            step.action = f"The agent on {peer} accepts connections but does not answer: see its HA run log."
        else:
            step.verdict = "ok"
    elif tcp == "refused" or (tcp == "timeout" and answered):
        step.verdict, step.cause = "fault", Cause.PEER_AGENT_DOWN
        step.action = (
            f"The host {host} answers but the hasync agent on {peer} does not: start it "
            f"(systemctl start hasync-agent, or `hasync agent -c <config>` on {peer})."
        )
    else:
        step.verdict, step.cause = "fault", Cause.PEER_UNREACHABLE
        step.action = (
            f"The link between {ctx.cfg.node.name} and {peer} ({host}) is down: check cables, routes "
            f"and firewalls, or contact the network administrator; the alarm clears by itself once "
            f"the link is back."
        )
    ctx.peer_ok = step.verdict == "ok"
    step.evidence = "\n".join(evidence)
    return step
