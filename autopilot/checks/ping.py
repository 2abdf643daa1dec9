"""``ping``: can this node reach every other selected node on each of its interface addresses?

Targets come from the peers seam (the node records workers heartbeat into the store); every
address is pinged concurrently, each ``ping`` bounded by a count and a deadline. One device per
remote node and interface (``node/interface``): 100% loss or no route is ``fail``, partial loss
``warn`` (upstream counted it as success), a ping that could not run ``error``. One bad peer
never fails the others.

Path MTU (opt-in: the ``mtu`` parameter, default ``AUTOPILOT_PING_MTU``; 0, the default, is off): each
peer that answers the small pings is pinged again with Don't-Fragment set and a payload that fills the
MTU exactly (IPv4: MTU - 28, IPv6: MTU - 48; iputils ``ping -M do -s SIZE``). A peer that answers small
pings but not those is a path MTU fault of the pair: ``fail``, through the same attribution as a down
peer (one switch port left at 1500 fails every pair through it, and the fleet names its node). An
interface of this node whose own MTU (``ip -j link show``) is below the expected one is this node's
finding (a device ``<this node>/<interface>``), and the kernel's "message too long" for the pings it
would send is read as that, not as a peer down. A ping that cannot set Don't-Fragment (busybox,
inetutils: no ``-M``) is ``error`` for that probe, never a pass.

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
from typing import Any, TypeVar

from autopilot import config, errors, names, network, peers, registry, results
from autopilot.commands import CommandResult
from autopilot.context import CheckContext
from autopilot.results import CheckResult, DeviceResult, Status

MAX_PARALLEL = 32
# IP + ICMP header bytes in front of a ping's payload: a payload of MTU minus these fills the MTU exactly.
IPV4_HEADERS, IPV6_HEADERS = 28, 48
IP_TIMEOUT_S = 5.0
T = TypeVar("T")
Reply = CommandResult | errors.AutopilotError
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


def payload_for(mtu: int, address: str) -> int:
    """The ping payload (``-s``) whose packet fills ``mtu`` exactly for ``address``'s IP version."""
    return mtu - (IPV6_HEADERS if ":" in address else IPV4_HEADERS)


def df_ping_argv(address: str, count: int, wait_s: float, mtu: int) -> list[str]:
    """iputils ``ping`` with Don't-Fragment (``-M do``) and a payload that fills ``mtu``. Without ``-q``:
    the per-packet lines ("local error: message too long, mtu=1500", "Frag needed and DF set") say why
    a packet did not go, and iputils prints them only when not quiet."""
    deadline = int(count * wait_s + 1)
    size = str(payload_for(mtu, address))
    return ["ping", "-n", "-M", "do", "-s", size, "-c", str(count), "-W", f"{wait_s:g}", "-w", str(deadline), address]


def judge_df(out: Reply, mtu: int, local_mtu: int | None) -> tuple[Status, str, dict[str, Any]]:
    """(status, detail, data) of one full-size Don't-Fragment probe of a peer that answered small pings.

    ``local_mtu``: the MTU of this node's interface towards the peer when it is below ``mtu`` (this
    node's own finding, reported on its own device; the probe then says so and blames no path).
    """
    if isinstance(out, errors.ToolTimeout):
        return Status.FAIL, f"full-size {mtu}-byte packets (DF) unanswered before the deadline", {"mtu_fault": "path"}
    if isinstance(out, errors.AutopilotError):
        return Status.ERROR, f"full-size probe could not run: {out}", {}
    said = f"{out.stdout}\n{out.stderr}"
    found = network.parse_df_ping(said)
    if found.no_df:
        line = next((ln.strip() for ln in said.splitlines() if ln.strip()), f"exit {out.returncode}")
        return Status.ERROR, f"this ping cannot set Don't-Fragment (-M do): {line}", {}
    try:
        stats: network.PingStats | None = network.parse_ping(out.stdout)
    except errors.ParseError:
        stats = None
    if stats is not None and stats.received > 0:
        data = {"mtu_loss_pct": stats.loss_pct}
        if stats.loss_pct > 0:
            return Status.WARN, f"{stats.loss_pct:.3g}% of full-size {mtu}-byte packets (DF) lost", data
        return Status.OK, f"full-size {mtu}-byte packets (DF) pass", data
    if found.local_too_long and local_mtu is not None:
        why = f"not sent: this node's interface MTU is {local_mtu}, below {mtu} (its own finding)"
        return Status.FAIL, why, {"mtu_fault": "local", "path_mtu": local_mtu}
    if found.hop_mtu is not None:
        why = f"path MTU {found.hop_mtu} < {mtu}: {found.hop} answered 'fragmentation needed' for full-size packets"
        return Status.FAIL, why, {"mtu_fault": "path", "path_mtu": found.hop_mtu}
    if found.local_too_long:
        # The interface is large enough (or unknown), so the kernel's smaller figure is a path MTU a hop
        # taught it earlier (it caches "fragmentation needed" for minutes): still the path's fault.
        known = f" {found.local_mtu}" if found.local_mtu is not None else ""
        why = f"path MTU{known} < {mtu}: this node's kernel refuses full-size packets to the peer (message too long)"
        return Status.FAIL, why, {"mtu_fault": "path", "path_mtu": found.local_mtu}
    if stats is None:
        last = (out.stderr or out.stdout).strip().splitlines()[-1:] or [f"exit {out.returncode}"]
        return Status.ERROR, f"full-size probe could not run: {last[0]}", {}
    why = f"full-size {mtu}-byte packets (DF) unanswered, small ones answered: a link on the path drops larger frames"
    return Status.FAIL, why, {"mtu_fault": "path"}


Judged = tuple[Status, float | None, str, dict[str, Any]]


def judge_reply(out: CommandResult | errors.AutopilotError) -> Judged:
    """(status, loss %, detail, data) for one address. Each way a peer is down reads ``unreachable: <evidence>``."""
    if isinstance(out, errors.ToolTimeout):
        return Status.FAIL, 100.0, "unreachable: no answer before the deadline", {}
    if isinstance(out, errors.AutopilotError):
        return Status.ERROR, None, str(out), {}
    try:
        stats = network.parse_ping(out.stdout)
    except errors.ParseError:
        message = (out.stderr or out.stdout).strip().splitlines()[-1:] or [f"exit {out.returncode}"]
        if any(word in message[0].lower() for word in _NO_ROUTE):
            return Status.FAIL, 100.0, f"unreachable: {message[0]}", {}
        return Status.ERROR, None, f"ping could not run: {message[0]}", {}
    data = {"loss_pct": stats.loss_pct, "rtt_avg_ms": stats.rtt_avg_ms, "rtt_max_ms": stats.rtt_max_ms}
    if stats.received == 0:
        return Status.FAIL, 100.0, f"unreachable: {stats.transmitted} sent, none answered", data
    if stats.loss_pct > 0:
        return Status.WARN, stats.loss_pct, f"{stats.loss_pct:.3g}% packet loss", data
    if stats.rtt_avg_ms is None:  # a summary without the rtt line (ping built without timing)
        return Status.OK, 0.0, f"{stats.received} of {stats.transmitted} answered", data
    return Status.OK, 0.0, f"rtt {stats.rtt_avg_ms} ms", data


def evaluate(
    replies: Sequence[tuple[peers.Peer, Reply]],
    *,
    mtu: int = 0,
    df_replies: Sequence[Reply | None] = (),
    short: Mapping[str, int] | None = None,
    node: str = "",
    local_mtus: Mapping[str, int] | None = None,
    local_mtus_unread: str = "",
    judged: Sequence[Judged] = (),
) -> CheckResult:
    """Fold per-address replies into one device per ``node/interface`` (worst address wins).

    ``judged``: each reply's ``judge_reply`` when the caller made it already (``run`` reads each small
    ping once, to decide on its full-size probe); empty: judged here.
    With ``mtu`` set: ``df_replies`` holds each address's full-size Don't-Fragment probe (None where it
    was not sent: the peer did not answer small pings, which is the "down" case alone); ``short`` names
    this node's interfaces whose own MTU is below ``mtu``, each a failed device ``<node>/<interface>``;
    ``local_mtus`` (every interface looked at, or None when they could not be read, ``local_mtus_unread``
    saying why) goes into ``data``.
    """
    short = dict(short or {})
    probes = list(df_replies) or [None] * len(replies)
    verdicts = list(judged) or [judge_reply(out) for _, out in replies]
    grouped: dict[str, list[tuple[peers.Peer, Status, float | None, str, dict[str, Any]]]] = {}
    reached: set[str] = set()
    unreachable: set[str] = set()
    mtu_faults: set[str] = set()
    for (peer, _), probe, (status, loss, detail, data) in zip(replies, probes, verdicts, strict=True):
        pair: dict[str, Any] = {
            "target": peer.node,
            "interface": peer.interface,
            "address": peer.address,
            "status": status.value,
            "loss_pct": loss,
            "detail": detail,
            **data,
        }
        if status is Status.OK:
            reached.add(peer.node)
        elif status is Status.FAIL:
            unreachable.add(peer.node)
        device_status, device_detail = status, detail
        if probe is not None:
            own = short.get(peer.interface, next(iter(short.values())) if len(short) == 1 else None)
            df_status, df_detail, df_data = judge_df(probe, mtu, own)
            pair.update(mtu_status=df_status.value, mtu_detail=df_detail, **df_data)
            # The pair's status is what attribution reads: a pair that cannot carry full-size frames is
            # bad, so one port left at 1500 names its node as a down link does.
            pair["status"] = results.worst((status, df_status)).value
            if df_status is Status.FAIL:
                mtu_faults.add(peer.node)
            if df_data.get("mtu_fault") == "local":
                device_detail = f"{detail}; full-size: {df_detail}"  # this node's finding, on its own device
            elif results.worst((status, df_status)) is not status:
                device_status, device_detail = df_status, df_detail
        grouped.setdefault(f"{peer.node}/{peer.interface}", []).append((peer, device_status, loss, device_detail, pair))
    devices: list[DeviceResult] = []
    pairs: list[dict[str, Any]] = []
    for dev_id in sorted(grouped):
        entries = grouped[dev_id]
        status = results.worst(e[1] for e in entries)
        losses = [e[2] for e in entries if e[2] is not None]
        worst_entry = next(e for e in entries if e[1] is status)
        # An address is named only where the device's addresses differ: a dual-stack peer down on both says
        # so once, and reads (and groups in the summary) like any other peer that is down.
        alike = all(e[1] is status and e[3] == worst_entry[3] for e in entries)
        detail = worst_entry[3] if alike else f"{worst_entry[0].address}: {worst_entry[3]}"
        devices.append(DeviceResult(dev_id, status, max(losses) if losses else None, "%", detail))
        pairs.extend(e[4] for e in entries)
    for interface, value in sorted(short.items()):
        why = f"this node's interface {interface} has MTU {value}, below the expected {mtu}: full-size frames fail"
        devices.append(DeviceResult(f"{node}/{interface}", Status.FAIL, value, "bytes", why))
    extra: dict[str, Any] = {}
    if mtu:
        extra = {"mtu": mtu, "local_mtus": None if local_mtus is None else dict(local_mtus)}
        extra["mtu_faults"] = sorted(mtu_faults)
        if local_mtus_unread:
            extra["local_mtus_unread"] = local_mtus_unread
    result = results.from_devices(
        "ping",
        devices,
        ok_summary=f"all {len({p['target'] for p in pairs})} peers reachable on {len(grouped)} interface(s)"
        + (f", full-size {mtu}-byte packets pass" if mtu else ""),
        data={"pairs": pairs, "reached": sorted(reached), "unreachable": sorted(unreachable), **extra},
        what="peer",
        group=True,
        what_of={f"{node}/{interface}": "interface" for interface in short},
    )
    return result


def local_mtus(ctx: CheckContext) -> tuple[dict[str, int] | None, str]:
    """This node's interfaces and their MTUs (``ip -j link show``), or None and why they could not be read.

    Not reading them is no error of the check: the full-size probes still find a short interface (the
    kernel refuses them, "message too long"), only not by its name."""
    if ctx.commands.which("ip") is None:
        return None, "ip not found on PATH"
    try:
        done = ctx.commands.run(["ip", "-j", "link", "show"], timeout=IP_TIMEOUT_S)
        return network.parse_ip_link_mtus(done.stdout), ""
    except errors.AutopilotError as exc:
        return None, f"ip -j link show: {exc}"


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
    raw_mtu = params.get("mtu")
    mtu = int(ctx.settings.ping_mtu if raw_mtu is None else raw_mtu)
    timeout = count * wait_s + 5

    def call(argv: list[str]) -> Reply:
        try:
            return ctx.commands.run(argv, timeout=timeout)
        except errors.AutopilotError as exc:
            return exc

    def one(peer: peers.Peer) -> tuple[Reply, Judged, Reply | None]:
        small = call(ping_argv(peer.address, count, wait_s))
        judged = judge_reply(small)  # read once: it decides the full-size probe and is the pair's verdict
        # Some answer came back (ok, or warn for partial loss): the peer is up, so a full-size probe means
        # something. A peer that answers nothing is the "down" case, unchanged.
        if not mtu or judged[0] not in (Status.OK, Status.WARN):
            return small, judged, None
        return small, judged, call(df_ping_argv(peer.address, count, wait_s, mtu))

    # What ``isinstance(ctx.commands, commands.InstantRunner)`` decides for this one-method protocol
    # (the method is there and not None), without typing's walk of the protocol per run.
    at_once = getattr(ctx.commands, "answers_at_once", None)
    if at_once is not None and at_once("ping"):
        # A simulated seam answers from its link table: no thread per peer (PERFORMANCE.md, round 5).
        answers = [one(peer) for peer in targets]
    else:
        answers = _concurrently(one, targets, MAX_PARALLEL)
    replies = list(zip(targets, (a[0] for a in answers), strict=True))
    judged = [a[1] for a in answers]
    if not mtu:
        return evaluate(replies, judged=judged)
    found, why = local_mtus(ctx)
    looked = set(ctx.settings.network_interfaces) or {p.interface for p in targets}
    mine = None if found is None else {i: m for i, m in found.items() if i in looked}
    short = {i: m for i, m in (mine or {}).items() if m < mtu}
    return evaluate(
        replies,
        mtu=mtu,
        df_replies=[a[2] for a in answers],
        short=short,
        node=ctx.node,
        local_mtus=mine,
        local_mtus_unread=why,
        judged=judged,
    )


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


def _concurrently(fn: Callable[[peers.Peer], T], items: Sequence[peers.Peer], limit: int) -> list[T]:
    """``fn`` over ``items`` on the shared pool, at most ``limit`` at a time, answers in order."""
    gate = threading.BoundedSemaphore(limit)
    futures = []
    for item in items:
        gate.acquire()
        future = _POOL.submit(fn, item)
        future.add_done_callback(lambda _: gate.release())
        futures.append(future)
    return [f.result() for f in futures]


class MtuParam(registry.Param):
    """``mtu``: 0 (off) or 576..65535, as ``AUTOPILOT_PING_MTU`` (one rule: ``config.ping_mtu``)."""

    def parse(self, raw: Any) -> Any:
        value = super().parse(raw)
        return config.ping_mtu(str(value), field=self.name)


registry.check(
    "ping",
    description="reachability of every other node on each interface address (concurrent, bounded)",
    params=(
        registry.NodeList(
            "nodes", str, "", "comma-separated node names to ping, DNS-1123, no empty entry (default: every live node)"
        ),
        registry.Param("count", int, 3, "echo requests per address", minimum=1, maximum=20),
        registry.Param("wait_s", float, 1.0, "seconds to wait for each reply", minimum=0.1, maximum=10),
        MtuParam(
            "mtu",
            int,
            None,
            "MTU the network must carry: each answering peer is also pinged with Don't-Fragment and a payload "
            "filling it; 0: off (default: AUTOPILOT_PING_MTU)",
            minimum=0,
            maximum=config.PING_MTU_MAX,
        ),
    ),
    timeout_s=120,
    health="ping",
    tag="PING",
    periodic=True,
)(run)
