"""``ping``: can this node reach every other selected node on each of its interface addresses?

Targets come from the peers seam (the node records workers heartbeat into the store); every
address is pinged concurrently, each ``ping`` bounded by a count and a deadline. One device per
remote node and interface (``node/interface``): 100% loss or no route is ``fail``, partial loss
``warn`` (upstream counted it as success), a ping that could not run ``error``. One bad peer
never fails the others.

The pinging process needs no root: iputils ``ping`` uses an ICMP datagram socket when the
kernel's ``net.ipv4.ping_group_range`` includes the process's group, and otherwise the
``CAP_NET_RAW`` capability (Debian installs ``ping`` with that file capability; in a pod, add
``NET_RAW`` to the container's capabilities).

Sample (iputils 20221126)::

    PING 192.0.2.2 (192.0.2.2) 56(84) bytes of data.

    --- 192.0.2.2 ping statistics ---
    3 packets transmitted, 3 received, 0% packet loss, time 2041ms
    rtt min/avg/max/mdev = 0.045/0.061/0.082/0.015 ms
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from autopilot import errors, names, network, peers, registry, results
from autopilot.commands import CommandResult
from autopilot.context import CheckContext
from autopilot.results import CheckResult, DeviceResult, Status

MAX_PARALLEL = 32
# Messages by which ping says the network itself refused: a finding about the link, not a tool failure.
# glibc spells ENETUNREACH/EHOSTUNREACH "Network is unreachable"/"No route to host"; busybox ping on
# musl (Alpine) prints "ping: sendto: Network unreachable" / "Host is unreachable", with no summary.
_NO_ROUTE = (
    "network is unreachable",
    "no route to host",
    "destination host unreachable",
    "network unreachable",
    "host is unreachable",
)


def ping_argv(address: str, count: int, wait_s: float) -> list[str]:
    deadline = int(count * wait_s + 1)
    return ["ping", "-n", "-q", "-c", str(count), "-W", f"{wait_s:g}", "-w", str(deadline), address]


def judge_reply(out: CommandResult | errors.AutopilotError) -> tuple[Status, float | None, str, dict[str, Any]]:
    """(status, loss %, detail, data) for one address."""
    if isinstance(out, errors.ToolTimeout):
        return Status.FAIL, 100.0, "no answer before the deadline", {}
    if isinstance(out, errors.AutopilotError):
        return Status.ERROR, None, str(out), {}
    try:
        stats = network.parse_ping(out.stdout)
    except errors.ParseError:
        message = (out.stderr or out.stdout).strip().splitlines()[-1:] or [f"exit {out.returncode}"]
        if any(word in message[0].lower() for word in _NO_ROUTE):
            return Status.FAIL, 100.0, message[0], {}
        return Status.ERROR, None, f"ping could not run: {message[0]}", {}
    data = {"loss_pct": stats.loss_pct, "rtt_avg_ms": stats.rtt_avg_ms, "rtt_max_ms": stats.rtt_max_ms}
    if stats.received == 0:
        return Status.FAIL, 100.0, f"unreachable: {stats.transmitted} sent, none answered", data
    if stats.loss_pct > 0:
        return Status.WARN, stats.loss_pct, f"{stats.loss_pct:g}% packet loss", data
    if stats.rtt_avg_ms is None:  # a summary without the rtt line (ping built without timing)
        return Status.OK, 0.0, f"{stats.received} of {stats.transmitted} answered", data
    return Status.OK, 0.0, f"rtt {stats.rtt_avg_ms} ms", data


def evaluate(replies: Sequence[tuple[peers.Peer, CommandResult | errors.AutopilotError]]) -> CheckResult:
    """Fold per-address replies into one device per ``node/interface`` (worst address wins)."""
    grouped: dict[str, list[tuple[peers.Peer, Status, float | None, str, dict[str, Any]]]] = {}
    for peer, out in replies:
        grouped.setdefault(f"{peer.node}/{peer.interface}", []).append((peer, *judge_reply(out)))
    devices: list[DeviceResult] = []
    pairs: list[dict[str, Any]] = []
    for dev_id in sorted(grouped):
        entries = grouped[dev_id]
        status = results.worst(e[1] for e in entries)
        losses = [e[2] for e in entries if e[2] is not None]
        worst_entry = next(e for e in entries if e[1] is status)
        detail = worst_entry[3] if len(entries) == 1 else f"{worst_entry[0].address}: {worst_entry[3]}"
        devices.append(DeviceResult(dev_id, status, max(losses) if losses else None, "%", detail))
        for peer, st, loss, det, data in entries:
            pairs.append(
                {
                    "target": peer.node,
                    "interface": peer.interface,
                    "address": peer.address,
                    "status": st.value,
                    "loss_pct": loss,
                    "detail": det,
                    **data,
                }
            )
    reached = sorted({p["target"] for p in pairs if p["status"] == "ok"})
    failed = sorted({p["target"] for p in pairs if p["status"] == "fail"})
    result = results.from_devices(
        "ping",
        devices,
        ok_summary=f"all {len({p['target'] for p in pairs})} peers reachable on {len(devices)} interface(s)",
        data={"pairs": pairs, "reached": reached, "unreachable": failed},
        what="peer",
        group=True,
    )
    return result


def run(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
    if ctx.peers is None:
        return CheckResult("ping", Status.SKIPPED, "no peer directory: ping needs the worker runtime")
    wanted = [names.node_name(n, field="nodes") for n in str(params.get("nodes") or "").split(",") if n.strip()]
    targets = [
        p
        for p in peers.select_interfaces(ctx.peers.peers(wanted or None), ctx.settings.network_interfaces)
        if p.node != ctx.node
    ]
    if not targets:
        return CheckResult("ping", Status.SKIPPED, "no other node to ping")
    if ctx.commands.which("ping") is None:
        return CheckResult("ping", Status.ERROR, "ping not found on PATH")
    count, wait_s = int(params["count"]), float(params["wait_s"])
    timeout = count * wait_s + 5

    def one(peer: peers.Peer) -> CommandResult | errors.AutopilotError:
        try:
            return ctx.commands.run(ping_argv(peer.address, count, wait_s), timeout=timeout)
        except errors.AutopilotError as exc:
            return exc

    # What ``isinstance(ctx.commands, commands.InstantRunner)`` decides for this one-method protocol
    # (the method is there and not None), without typing's walk of the protocol per run.
    at_once = getattr(ctx.commands, "answers_at_once", None)
    if at_once is not None and at_once("ping"):
        # A simulated seam answers from its link table: no thread per peer (PERFORMANCE.md, round 5).
        answers = [one(peer) for peer in targets]
    else:
        answers = _concurrently(one, targets, MAX_PARALLEL)
    return evaluate(list(zip(targets, answers, strict=True)))


# One pool for every ping run of the process, its threads kept between runs: a pool per run started
# up to 16 threads per run, which was the largest cost of a simulated node's ping (PERFORMANCE.md,
# round 4). Room for a few runs at once at full width; each run keeps to MAX_PARALLEL, as before.
def _new_pool() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(max_workers=4 * MAX_PARALLEL, thread_name_prefix="ping")


_POOL = _new_pool()


def _after_fork() -> None:
    # The parent's pool threads do not exist in a forked child: a pool that counted them idle
    # would queue the child's pings for threads that never run them.
    global _POOL
    _POOL = _new_pool()


os.register_at_fork(after_in_child=_after_fork)


def _concurrently(
    fn: Callable[[peers.Peer], CommandResult | errors.AutopilotError], items: Sequence[peers.Peer], limit: int
) -> list[CommandResult | errors.AutopilotError]:
    """``fn`` over ``items`` on the shared pool, at most ``limit`` at a time, answers in order."""
    gate = threading.BoundedSemaphore(limit)
    futures = []
    for item in items:
        gate.acquire()
        future = _POOL.submit(fn, item)
        future.add_done_callback(lambda _: gate.release())
        futures.append(future)
    return [f.result() for f in futures]


registry.check(
    "ping",
    description="reachability of every other node on each interface address (concurrent, bounded)",
    params=(
        registry.NodeList(
            "nodes", str, "", "comma-separated node names to ping, DNS-1123, no empty entry (default: every live node)"
        ),
        registry.Param("count", int, 3, "echo requests per address", minimum=1, maximum=20),
        registry.Param("wait_s", float, 1.0, "seconds to wait for each reply", minimum=0.1, maximum=10),
    ),
    timeout_s=120,
    health="ping",
    tag="PING",
    periodic=True,
)(run)
