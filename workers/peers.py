"""``StorePeers``: the peers seam over the node records workers heartbeat into the store.

Each worker reports its interfaces and addresses in its node record (``nodeinfo.collect``);
network checks ask this directory for the addresses of the other nodes. Loopback is never a
peer address: pinging 127.0.0.1 "on node b" would only ever reach ourselves.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Sequence

from autopilot import config
from autopilot.peers import Peer
from workers.store import NodeRecord, ResultsStore

log = logging.getLogger(__name__)

LOOPBACK_INTERFACES = frozenset({"lo"})


def is_loopback(interface: str, address: str) -> bool:
    if interface in LOOPBACK_INTERFACES:
        return True
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def record_peers(records: Sequence[NodeRecord]) -> list[Peer]:
    """Every (node, interface, address) of ``records``, in record order, loopback left out, and an
    address that is no IP address literal left out (logged)."""
    out: list[Peer] = []
    for record in records:
        for interface, addresses in record.addresses.items():
            for address in addresses:
                if not address or is_loopback(interface, address):
                    continue
                if not _ADDRESS.fullmatch(address):
                    log.warning(
                        "node %s reports %r on %r: not an IP address, not pinged", record.name, address, interface
                    )
                    continue
                out.append(Peer(record.name, interface, address))
    return out


# An IPv4 or IPv6 literal, with an IPv6 zone: what a heartbeat's address must look like before it is
# the last word of a ping command line. Another worker's "-V" there was read by ping as an option, and
# a host name made this node resolve and ping whatever it names. A pattern, not ``ipaddress``: ten
# times cheaper, and every ping check reads every peer's addresses.
_ADDRESS = re.compile(r"(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*)(?:%[A-Za-z0-9_.-]+)?", re.ASCII)


class StorePeers:
    """``PeerDirectory`` over live node records.

    ``peers(None)`` is every node heard from within ``settings.live_after_s``; named nodes are
    returned when they have a record at all, live or not, so that pinging a dead node that was
    asked for shows up as a failure instead of silently disappearing.

    ``simulated`` (when not None) keeps only the records of simulated nodes (True) or of real
    ones (False): a real node cannot reach a simulated address, nor a simulated node a real one,
    so a pair across the two would only ever be a false failure.
    """

    def __init__(
        self,
        store: ResultsStore,
        settings: config.Settings,
        *,
        clock: Callable[[], float] | None = None,
        simulated: bool | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        # None: the store's clock, which the heartbeats are scored on (read with them); this host's may be off it.
        self.clock = clock
        self.simulated = simulated

    def peers(self, nodes: Sequence[str] | None = None) -> list[Peer]:
        if nodes is None:
            if self.clock is None:
                names = self.store.node_names(heard_within=self.settings.live_after_s)
            else:
                names = self.store.node_names(seen_since=self.clock() - self.settings.live_after_s)
        else:
            names = list(dict.fromkeys(nodes))
        records = self.store.nodes(names)
        if self.simulated is not None:
            records = [r for r in records if r.simulated == self.simulated]
        return record_peers(records)
