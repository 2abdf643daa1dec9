"""A small lab of network namespaces for the network checks' integration tests (root only).

``NetLab`` builds N namespaces, each joined by two veth pairs to two bridges in the root
namespace:

- control network 198.51.100.0/24 (``ctl0`` in each namespace; the control bridge holds
  198.51.100.254, where the test's redis-server listens): workers reach the broker;
- data network 192.0.2.0/24 (``data0``; the data bridge has no address): what the checks
  measure, and what the tests break (link down, ``tc`` rate limit).

Both ranges are documentation prefixes (RFC 5737). Some machines use one of them for real (a
VM whose own eth0 is 192.0.2.2/24 behind 192.0.2.1): with ``br_netfilter`` loaded, bridged lab
traffic then shares the root namespace's connection tracking with the machine's own, and lab
flows between the same two addresses get dropped. So the lab takes host numbers that the root
namespace neither holds nor talks to (addresses, neighbours, routes), from .101 up. Names carry a
per-session suffix so that two sessions never collide, and ``teardown`` removes everything it
created, whatever state the lab is in.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
from collections.abc import Sequence

CONTROL_NET = "198.51.100"
DATA_NET = "192.0.2"
CONTROL_IF = "ctl0"
DATA_IF = "data0"
BROKER_ADDRESS = f"{CONTROL_NET}.254"
TIMEOUT_S = 15


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(["ip", *args], check=check)


def run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return done


def addresses_in_use() -> set[str]:
    """Every IPv4 address the root namespace holds, has a neighbour entry for, or routes via."""
    used: set[str] = set()
    for link in json.loads(ip("-j", "addr", "show").stdout or "[]"):
        used.update(a.get("local", "") for a in link.get("addr_info", []))
    used.update(n.get("dst", "") for n in json.loads(ip("-j", "neigh", "show").stdout or "[]"))
    for route in json.loads(ip("-j", "route", "show").stdout or "[]"):
        used.update((route.get("gateway", ""), route.get("prefsrc", "")))
    return {u for u in used if u}


def free_hosts(net: str, count: int, used: set[str], first: int = 101) -> list[int]:
    hosts = [h for h in range(first, 254) if f"{net}.{h}" not in used][:count]
    if len(hosts) < count:
        raise RuntimeError(f"no {count} free addresses in {net}.0/24 on this machine")
    return hosts


class NetLab:
    def __init__(self, nodes: Sequence[str]) -> None:
        self.suffix = f"{os.getpid() % 1000:03d}{secrets.token_hex(1)}"  # interface names stay <= 15 chars
        self.nodes = list(nodes)
        self.control_bridge = f"apc{self.suffix}"
        self.data_bridge = f"apd{self.suffix}"
        self.namespaces = {n: f"ap{self.suffix}-{i}" for i, n in enumerate(self.nodes)}
        self.created_links: list[str] = []
        self.created_ns: list[str] = []
        used = addresses_in_use()
        if BROKER_ADDRESS in used:
            raise RuntimeError(f"{BROKER_ADDRESS} is in use on this machine; the lab cannot take it")
        self._data_hosts = free_hosts(DATA_NET, len(self.nodes), used)
        self._control_hosts = free_hosts(CONTROL_NET, len(self.nodes), used)

    def host_veth(self, node: str, kind: str) -> str:
        """The root-namespace end of a node's control (``c``) or data (``d``) veth."""
        return f"{kind}{self.suffix}{self.nodes.index(node)}"

    def data_address(self, node: str) -> str:
        return f"{DATA_NET}.{self._data_hosts[self.nodes.index(node)]}"

    def control_address(self, node: str) -> str:
        return f"{CONTROL_NET}.{self._control_hosts[self.nodes.index(node)]}"

    def setup(self) -> None:
        for bridge, address in ((self.control_bridge, f"{BROKER_ADDRESS}/24"), (self.data_bridge, None)):
            ip("link", "add", bridge, "type", "bridge", "forward_delay", "0")
            self.created_links.append(bridge)
            if address:
                ip("addr", "add", address, "dev", bridge)
            ip("link", "set", bridge, "up")
        for node, ns in self.namespaces.items():
            ip("netns", "add", ns)
            self.created_ns.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
            for kind, bridge, inner, address in (
                ("c", self.control_bridge, CONTROL_IF, self.control_address(node)),
                ("d", self.data_bridge, DATA_IF, self.data_address(node)),
            ):
                outer = self.host_veth(node, kind)
                ip("link", "add", outer, "type", "veth", "peer", "name", inner, "netns", ns)
                self.created_links.append(outer)
                ip("link", "set", outer, "master", bridge, "up")
                ip("-n", ns, "addr", "add", f"{address}/24", "dev", inner)
                ip("-n", ns, "link", "set", inner, "up")

    def exec_argv(self, node: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[node], *argv]

    def set_data_link(self, node: str, up: bool) -> None:
        ip("-n", self.namespaces[node], "link", "set", DATA_IF, "up" if up else "down")

    def shape_data_link(self, node: str, rate: str = "20mbit") -> None:
        """A token bucket on both ends of the node's data link: slow in and out."""
        tbf = ["root", "tbf", "rate", rate, "burst", "32kbit", "latency", "400ms"]
        run(["tc", "-n", self.namespaces[node], "qdisc", "add", "dev", DATA_IF, *tbf])
        run(["tc", "qdisc", "add", "dev", self.host_veth(node, "d"), *tbf])

    def unshape_data_link(self, node: str) -> None:
        run(["tc", "-n", self.namespaces[node], "qdisc", "del", "dev", DATA_IF, "root"], check=False)
        run(["tc", "qdisc", "del", "dev", self.host_veth(node, "d"), "root"], check=False)

    def teardown(self) -> None:
        # Deleting a namespace destroys its veth ends and with them the peers in the root namespace.
        for ns in reversed(self.created_ns):
            with contextlib.suppress(Exception):
                ip("netns", "del", ns, check=False)
        for link in reversed(self.created_links):
            with contextlib.suppress(Exception):
                if ip("link", "show", link, check=False).returncode == 0:
                    ip("link", "del", link, check=False)
        self.created_ns.clear()
        self.created_links.clear()
