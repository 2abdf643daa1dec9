"""A node whose link is down fails; the nodes that ping it do not (network.attribute at reconcile)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import fakeredis
import pytest

from autopilot import config, network
from autopilot.checks import ping
from autopilot.commands import CommandResult
from autopilot.peers import Peer
from autopilot.registry import shipped as shipped_checks
from autopilot.results import CheckResult, Status, utc_now_iso
from workers import reconcile
from workers.store import NodeRecord, ResultsStore

NOW = datetime(2026, 11, 30, 8, 0, 0, tzinfo=UTC)
NODES = ("gpu-0", "gpu-1", "gpu-2", "gpu-3", "gpu-4", "gpu-5")
ANSWERED = (
    "3 packets transmitted, 3 received, 0% packet loss, time 2003ms\nrtt min/avg/max/mdev = 0.04/0.05/0.07/0.01 ms\n"
)
SILENT = "3 packets transmitted, 0 received, 100% packet loss, time 2040ms\n"


def ping_result(
    node: str, down: set[str], at: datetime = NOW, lost: frozenset[tuple[str, str]] = frozenset()
) -> CheckResult:
    """``node``'s real ``ping`` result against every other node, ``down`` answering nothing (and sending nothing);
    each (source, target) of ``lost`` is a pair that fails on its own."""
    replies = []
    for i, other in enumerate(NODES):
        if other == node:
            continue
        silent = node in down or other in down or (node, other) in lost
        out = CommandResult(("ping",), 1 if silent else 0, SILENT if silent else ANSWERED, "")
        replies.append((Peer(other, "eth0", f"192.0.2.{i + 1}"), out))
    result = ping.evaluate(replies)
    return dataclasses.replace(result, node=node, started_at=utc_now_iso(at))


def fleet(down: set[str]) -> dict[str, CheckResult]:
    return {node: ping_result(node, down) for node in NODES}


def test_the_fleet_names_the_node_whose_link_is_down() -> None:
    assert network.fleet_suspects(fleet({"gpu-3"})) == {"gpu-3"}
    assert network.fleet_suspects(fleet(set())) == frozenset()


def test_a_failed_ping_to_the_suspect_is_not_the_pinging_nodes_finding() -> None:
    pings = fleet({"gpu-3"})
    before = pings["gpu-1"]
    assert before.status is Status.FAIL
    after = network.excuse_ping(before, network.fleet_suspects(pings))
    assert after.status is Status.OK
    assert "gpu-3" in after.summary and after.data["excused"] == ["gpu-3"]
    excused = [d for d in after.devices if d.id == "gpu-3/eth0"]
    assert excused[0].status is Status.SKIPPED and "suspect" in (excused[0].detail or "")
    # The suspect keeps its failure: its own pairs go to nodes nobody blames.
    assert network.excuse_ping(pings["gpu-3"], {"gpu-3"}).status is Status.FAIL


def test_another_failed_peer_still_fails_the_node() -> None:
    pings = fleet({"gpu-3"})
    lossy = pings["gpu-1"]
    devices = tuple(
        dataclasses.replace(d, status=Status.FAIL, detail="unreachable") if d.id == "gpu-5/eth0" else d
        for d in lossy.devices
    )
    after = network.excuse_ping(dataclasses.replace(lossy, devices=devices), {"gpu-3"})
    assert after.status is Status.FAIL
    assert "gpu-5" in after.summary and "peer gpu-3" not in after.summary


def test_pairs_whose_ping_could_not_run_say_nothing_about_the_link() -> None:
    result = ping.evaluate([(Peer("gpu-1", "eth0", "192.0.2.2"), CommandResult(("ping",), 2, "", "ping: bad"))])
    assert network.ping_pairs({"gpu-0": result}) == []


def settings() -> config.Settings:
    return config.Settings(node_name="api", periodic_checks=("ping",), periodic_interval_s=3600.0)


def store_with(pings: dict[str, CheckResult]) -> ResultsStore:
    store = ResultsStore(fakeredis.FakeRedis())
    for node, result in pings.items():
        store.heartbeat(NodeRecord(node, gpu_count=8, last_seen=NOW.timestamp()))
        store.save_result(result)
    return store


def test_reconcile_warns_only_the_node_whose_link_is_down() -> None:
    store = store_with(fleet({"gpu-3"}))
    found = reconcile.reconcile_all(store, settings(), now=NOW + timedelta(seconds=5), checks=shipped_checks())
    assert found == {n: ("WARN" if n == "gpu-3" else "PASS") for n in NODES}


def test_a_node_reconciled_after_its_own_ping_reads_the_fleets_pings() -> None:
    store = store_with(fleet({"gpu-3"}))
    decision = reconcile.reconcile_node(store, "gpu-1", settings(), NOW + timedelta(seconds=5), checks=shipped_checks())
    assert decision.verdict.value == "PASS"
    assert (
        reconcile.reconcile_node(
            store, "gpu-3", settings(), NOW + timedelta(seconds=5), checks=shipped_checks()
        ).verdict.value
        == "WARN"
    )


def test_stale_pings_of_the_fleet_take_no_part() -> None:
    old = NOW - timedelta(days=1)
    # A day ago gpu-3 was down; today only gpu-1 has pinged, and reached everyone.
    stale = {n: dataclasses.replace(r, started_at=utc_now_iso(old)) for n, r in fleet({"gpu-3"}).items()}
    store = store_with({**stale, "gpu-1": ping_result("gpu-1", set())})
    assert reconcile.fleet_suspects(store, settings(), NOW) == frozenset()
    assert network.fleet_suspects(stale) == {"gpu-3"}  # what the old results alone would say


def test_suspects_kept_by_the_last_reconcile_spare_reading_the_fleets_pings(monkeypatch: pytest.MonkeyPatch) -> None:
    store = store_with(fleet({"gpu-3"}))
    store.set_ping_suspects({"gpu-3"}, 60)
    monkeypatch.setattr(reconcile, "fleet_pings", lambda *a, **k: pytest.fail("read the fleet's pings"))
    assert (
        reconcile.reconcile_node(
            store, "gpu-1", settings(), NOW + timedelta(seconds=5), checks=shipped_checks()
        ).verdict.value
        == "PASS"
    )


def test_kept_suspects_that_do_not_explain_a_failure_are_looked_up_again() -> None:
    store = store_with(fleet({"gpu-3"}))
    store.set_ping_suspects({"gpu-5"}, 60)  # an older finding: gpu-5 no longer explains anything
    assert (
        reconcile.reconcile_node(
            store, "gpu-1", settings(), NOW + timedelta(seconds=5), checks=shipped_checks()
        ).verdict.value
        == "PASS"
    )
    assert store.ping_suspects() == {"gpu-3"}


def test_beat_keeps_the_suspects_it_found() -> None:
    store = store_with(fleet({"gpu-3"}))
    reconcile.reconcile_all(store, settings(), now=NOW + timedelta(seconds=5), checks=shipped_checks())
    assert store.ping_suspects() == {"gpu-3"}


# ---------------------------------------------------------------- suspects set aside before confirmation


def pinged(node: str, down: set[str], minutes: int) -> CheckResult:
    return ping_result(node, down, NOW + timedelta(minutes=minutes))


def ping_settings() -> config.Settings:
    return config.Settings(node_name="api", periodic_checks=("ping",), periodic_interval_s=3600.0)


def alive(store: ResultsStore, at: datetime) -> None:
    for node in NODES:
        store.heartbeat(NodeRecord(node, gpu_count=8, last_seen=at.timestamp()))


def history_with_suspect(store: ResultsStore) -> None:
    """gpu-3's link has been down for two samples of every node: the fleet blames it, each node's
    ping fails only to it (confirmed bad on raw samples: two of three)."""
    for node in NODES:  # the second sample (store_with saved the first, at NOW)
        store.save_result(pinged(node, {"gpu-3"}, 2))
    alive(store, NOW + timedelta(minutes=3))
    reconcile.reconcile_all(store, ping_settings(), now=NOW + timedelta(minutes=3), checks=shipped_checks())


def test_one_new_failed_pair_beside_the_suspect_is_confirmed_before_it_counts() -> None:
    # gpu-5 misses one sample of gpu-1's pings while gpu-3 is still down. Before, gpu-1's ping was
    # "confirmed bad" by its failures to gpu-3 (the suspect's finding), so this one unconfirmed
    # failure to gpu-5 counted at once: WARN on a healthy node (bench.quality: 6 false WARNs).
    store = store_with(fleet({"gpu-3"}))
    history_with_suspect(store)
    store.save_result(pinged("gpu-1", {"gpu-3", "gpu-5"}, 60))
    moment = NOW + timedelta(minutes=61)
    alive(store, moment)
    decision = reconcile.reconcile_node(store, "gpu-1", ping_settings(), moment, checks=shipped_checks())
    assert decision.verdict.value == "PASS"
    # The same failure seen again (the confirmation run) counts: confirmation still confirms.
    store.save_result(pinged("gpu-1", {"gpu-3", "gpu-5"}, 62))
    alive(store, moment + timedelta(minutes=2))
    decision = reconcile.reconcile_node(
        store, "gpu-1", ping_settings(), moment + timedelta(minutes=2), checks=shipped_checks()
    )
    assert decision.verdict.value == "WARN"
    assert any("gpu-5" in reason for reason in decision.reasons)


def test_the_new_failed_pair_beside_the_suspect_gets_a_confirmation_run() -> None:
    from workers import confirming
    from workers.dispatch import FakeDispatcher

    store = store_with(fleet({"gpu-3"}))
    history_with_suspect(store)
    assert store.ping_suspects() == {"gpu-3"}
    found = pinged("gpu-1", {"gpu-3", "gpu-5"}, 60)
    store.save_result(found)
    dispatcher = FakeDispatcher()
    confirming.after_task(store, dispatcher, ping_settings(), "gpu-1", [found], checks=shipped_checks())
    # Before: none (the raw samples' failures to gpu-3 had confirmed the check already).
    assert [s.checks for s in dispatcher.sent] == [("ping",)]


def test_a_node_that_was_down_and_came_back_leaves_no_failure_on_the_nodes_that_pinged_it() -> None:
    # gpu-3 stays down; gpu-5 was down for two samples (the fleet named both), then came back. Each
    # node's two earlier samples failed to gpu-5 when the fleet blamed it. Before, they were judged
    # against today's suspects (gpu-3 alone): two of three samples bad, every healthy node WARN
    # "peer gpu-5 unreachable" although its latest ping reached gpu-5 (seen on autopilot worker
    # --simulate 8 after a simulated node's link came back).
    store = store_with(fleet({"gpu-3", "gpu-5"}))
    alive(store, NOW + timedelta(seconds=5))
    reconcile.reconcile_all(store, ping_settings(), now=NOW + timedelta(seconds=5), checks=shipped_checks())
    assert store.ping_suspects() == {"gpu-3", "gpu-5"}
    for node in NODES:
        store.save_result(pinged(node, {"gpu-3", "gpu-5"}, 2))
    alive(store, NOW + timedelta(minutes=2, seconds=5))
    reconcile.reconcile_all(store, ping_settings(), now=NOW + timedelta(minutes=2, seconds=5), checks=shipped_checks())
    for node in NODES:
        store.save_result(pinged(node, {"gpu-3"}, 4))
    moment = NOW + timedelta(minutes=4, seconds=5)
    alive(store, moment)
    found = reconcile.reconcile_all(store, ping_settings(), now=moment, checks=shipped_checks())
    assert store.ping_suspects() == {"gpu-3"}
    # gpu-5 itself was down in two of its three samples: WARN until it has passed twice.
    assert found == {n: ("WARN" if n in ("gpu-3", "gpu-5") else "PASS") for n in NODES}
    # A failure to gpu-5 after it came back is the pinging node's again (confirmed as any other).
    for minutes in (6, 8):
        store.save_result(pinged("gpu-1", {"gpu-3", "gpu-5"}, minutes))
        alive(store, NOW + timedelta(minutes=minutes, seconds=5))
    decision = reconcile.reconcile_node(
        store, "gpu-1", ping_settings(), NOW + timedelta(minutes=8, seconds=5), checks=shipped_checks()
    )
    assert decision.verdict.value == "WARN" and any("gpu-5" in r for r in decision.reasons)


def test_suspect_spans_are_bounded_when_samples_never_go_stale() -> None:
    # Periodic checks off: stale_after_s is infinite; the spans are still kept, for a day at most.
    store = ResultsStore(fakeredis.FakeRedis())
    store.set_ping_suspects({"gpu-3"}, 60, now=1000.0, keep_s=float("inf"))
    assert store.ping_suspect_spans() == {"gpu-3": (1000.0, 1000.0)}
    store.set_ping_suspects(set(), 60, now=1000.0 + 2 * 86_400, keep_s=float("inf"))
    assert store.ping_suspect_spans() == {}


# ---------------------------------------------------------------- a node just went down, pings arriving one by one


def test_a_node_that_just_went_down_while_the_fleets_pings_arrive_one_by_one() -> None:
    # gpu-3's link goes down at NOW. Each node's hourly ping comes in at its own minute of the next ten
    # (gpu-3's own among them), each followed by its reconcile and confirmation's after_task, and the
    # confirmation run that sends comes back two minutes later; then beat's tick. gpu-1 also loses its
    # pings to gpu-5 (a real fault of its own, seen by nobody else).
    from workers import confirming
    from workers.dispatch import FakeDispatcher

    down, second = "gpu-3", frozenset({("gpu-1", "gpu-5")})
    cfg = ping_settings()
    store = ResultsStore(fakeredis.FakeRedis())
    slots = {node: NOW + timedelta(seconds=90 * (i + 1)) for i, node in enumerate(NODES)}
    for hours in (2, 1):  # two passing rounds before: the history confirmation judges against
        for node, at in slots.items():
            store.save_result(ping_result(node, set(), at - timedelta(hours=hours)))
    events = sorted((at, node) for node, at in slots.items())
    dispatcher = FakeDispatcher()
    nameable_at: datetime | None = None
    judged: list[tuple[datetime, str, str, str]] = []
    while events:
        at, node = events.pop(0)
        result = ping_result(node, {down}, at, second)
        store.save_result(result)
        moment = at + timedelta(seconds=5)
        alive(store, moment)
        if nameable_at is None and down in reconcile.fleet_suspects(store, cfg, moment):
            nameable_at = moment
        reconcile.reconcile_node(store, node, cfg, moment, checks=shipped_checks())
        # What an operator reads after this reconcile: every node's stored verdict and its reasons.
        judged.extend((moment, n, store.state(n).verdict or "", store.state(n).reasons or "") for n in NODES)
        sent = len(dispatcher.sent)
        confirming.after_task(store, dispatcher, cfg, node, [result], checks=shipped_checks(), now=moment.timestamp())
        for envelope in dispatcher.sent[sent:]:
            assert envelope.checks == ("ping",)
            events.append((at + timedelta(minutes=2), envelope.node))
        events.sort()
    assert nameable_at is not None  # every node has reported once: every pair of gpu-3 is bad
    end = NOW + timedelta(minutes=14)
    alive(store, end)
    found = reconcile.reconcile_all(store, cfg, now=end, checks=shipped_checks())

    after = [j for j in judged if j[0] >= nameable_at]
    assert after, "no reconcile after gpu-3 became nameable"
    for moment, node, value, reasons in after:
        # Before, the peers confirmed bad before gpu-3 could be named (gpu-0, gpu-2, and gpu-1 with
        # gpu-3 among its reasons) kept that WARN until beat's next tick: nothing reconciled them.
        assert node == down or value not in ("WARN", "EVICT") or down not in reasons, (moment, node, value, reasons)
    # What the operator sees after beat's tick: the down node WARN, the peer with a real fault WARN
    # for that fault alone, every other node PASS (its stored verdict and labels).
    assert found == {n: ("WARN" if n in (down, "gpu-1") else "PASS") for n in NODES}
    for node in NODES:
        state = store.state(node)
        assert state.verdict == found[node]
    gpu1 = store.state("gpu-1").reasons or ""
    assert "gpu-5" in gpu1 and down not in gpu1


def test_a_reconcile_that_names_no_new_suspect_reconciles_no_other_node(monkeypatch: pytest.MonkeyPatch) -> None:
    # gpu-3 is already kept; gpu-1's new failure to gpu-5 makes its reconcile read the fleet's pings,
    # which name gpu-3 again and nobody new: the other nodes are beat's, not this reconcile's.
    store = store_with(fleet({"gpu-3"}))
    store.set_ping_suspects({"gpu-3"}, 60)
    store.save_result(pinged("gpu-1", {"gpu-3", "gpu-5"}, 1))
    seen: list[str] = []
    real = reconcile.reconcile_node

    def spy(store: ResultsStore, node: str, *args: object, **kwargs: object) -> object:
        seen.append(node)
        return real(store, node, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(reconcile, "reconcile_node", spy)
    reconcile.reconcile_node(store, "gpu-1", settings(), NOW + timedelta(minutes=1), checks=shipped_checks())
    assert seen == ["gpu-1"]
    # Kept suspects that lacked gpu-3: the peers that failed to it and whose stored verdict may hold
    # that failure (WARN) are reconciled with it at once; a PASS peer, or one never judged, is not.
    store.set_ping_suspects(set(), 60)
    store.set_state("gpu-0", {"verdict": "WARN"})
    store.set_state("gpu-4", {"verdict": "WARN"})
    store.set_state("gpu-2", {"verdict": "PASS"})
    seen.clear()
    reconcile.reconcile_node(store, "gpu-1", settings(), NOW + timedelta(minutes=1), checks=shipped_checks())
    assert seen == ["gpu-1", "gpu-0", "gpu-4"]


# ---------------------------------------------------------------- named in the run that first sees it


def test_the_down_node_is_named_from_its_own_failed_pings_and_one_peers_in_the_same_run() -> None:
    # gpu-3's NIC dies. The fleet holds last hour's round (everyone reached everyone); in this run gpu-3's
    # own ping has come in (it reaches nobody) and gpu-0's (it reaches everyone but gpu-3). Before, the
    # other peers' older passes to gpu-3 kept it from being named until each of them had pinged again:
    # gpu-0 got a confirmation run for gpu-3's fault, and WARN if it came back first.
    from workers import confirming
    from workers.dispatch import FakeDispatcher

    store = store_with({n: ping_result(n, set(), NOW - timedelta(hours=1)) for n in NODES})
    mine = ping_result("gpu-0", {"gpu-3"}, NOW + timedelta(seconds=20))
    for result in (ping_result("gpu-3", {"gpu-3"}, NOW + timedelta(seconds=10)), mine):
        store.save_result(result)
    moment = NOW + timedelta(seconds=30)
    alive(store, moment)
    assert reconcile.fleet_suspects(store, settings(), moment) == {"gpu-3"}
    decision = reconcile.reconcile_node(store, "gpu-0", settings(), moment, checks=shipped_checks())
    assert decision.verdict.value == "PASS" and not any("gpu-3" in r for r in decision.reasons)
    dispatcher = FakeDispatcher()
    confirming.after_task(
        store, dispatcher, settings(), "gpu-0", [mine], checks=shipped_checks(), now=moment.timestamp()
    )
    assert dispatcher.sent == []  # nothing of gpu-0's to confirm
    # gpu-3's own failure is its own, confirmed as any (its confirmation run goes out).
    confirming.after_task(
        store,
        dispatcher,
        settings(),
        "gpu-3",
        [store.latest("gpu-3")["ping"]],
        checks=shipped_checks(),
        now=moment.timestamp(),
    )
    assert [e.node for e in dispatcher.sent] == ["gpu-3"]


def test_a_down_node_whose_worker_is_silent_is_named_once_its_peers_pinged_it_again() -> None:
    # gpu-3's worker went with its link: its last word is last hour's passing ping. Every other node
    # fails to it now. Before, that old result kept gpu-3 unnamed (and every peer WARN) until it aged
    # out after three intervals.
    pings = {n: ping_result(n, {"gpu-3"}, NOW) for n in NODES if n != "gpu-3"}
    pings["gpu-3"] = ping_result("gpu-3", set(), NOW - timedelta(hours=1))
    assert network.fleet_suspects(pings) == {"gpu-3"}
    # While one peer still holds its older pass to gpu-3 (and gpu-3 said nothing since), nothing is named.
    pings["gpu-5"] = ping_result("gpu-5", set(), NOW - timedelta(hours=1, minutes=1))
    assert network.fleet_suspects(pings) == frozenset()


def test_a_node_back_up_is_not_named_for_its_peers_older_failures() -> None:
    # gpu-3's link came back: its newest ping reaches everyone, the others' older pings still fail to it.
    pings = {n: ping_result(n, {"gpu-3"}, NOW - timedelta(minutes=5)) for n in NODES if n != "gpu-3"}
    pings["gpu-3"] = ping_result("gpu-3", set(), NOW)
    assert network.fleet_suspects(pings) == frozenset()
    # Results measured at the same moment (or that do not say when) each keep both ends' pairs.
    assert len(network.ping_pairs(fleet({"gpu-3"}))) == len(NODES) * (len(NODES) - 1)
    untimed = {n: dataclasses.replace(r, started_at="") for n, r in pings.items()}
    assert len(network.ping_pairs(untimed)) == len(NODES) * (len(NODES) - 1)


def ring_ping(i: int, down: int, at: datetime, size: int = 40, ahead: int = 16) -> CheckResult:
    """Node ``i``'s ping of the ``ahead`` nodes after it on a ring of ``size`` (the simulator's neighbours: each
    node pings the next sixteen, so no path is measured from both ends), node ``down`` answering nothing."""
    replies = []
    for k in range(1, ahead + 1):
        j = (i + k) % size
        silent = down in (i, j)
        out = CommandResult(("ping",), 1 if silent else 0, SILENT if silent else ANSWERED, "")
        replies.append((Peer(f"sim-{j}", "eth0", f"10.0.0.{j + 1}"), out))
    return dataclasses.replace(ping.evaluate(replies), node=f"sim-{i}", started_at=utc_now_iso(at))


def test_a_down_node_that_fails_to_every_peer_is_named_before_all_that_ping_it_have_pinged_again() -> None:
    # sim-20's NIC dies; sixteen nodes ping it, it pings sixteen others. In this run its own ping (it reached
    # none of its sixteen) and those of three of the nodes that ping it (each reached all but sim-20) are in;
    # the other thirteen still hold last hour's pass to sim-20, from before its own result said it reached
    # nobody. Before, sim-20 was named only once all sixteen had pinged it again.
    old = NOW - timedelta(hours=1)
    latest = {f"sim-{i}": ring_ping(i, -1, old) for i in range(40)}
    latest["sim-20"] = ring_ping(20, 20, NOW)
    for i in (4, 11, 19):
        latest[f"sim-{i}"] = ring_ping(i, 20, NOW + timedelta(seconds=i))
    assert network.fleet_suspects(latest) == {"sim-20"}
    # What the peers' results are judged by: their failure to sim-20 is its finding.
    assert network.excuse_ping(latest["sim-11"], {"sim-20"}).status is Status.OK
    # Without its own word, three failures among thirteen older passes name nobody (a bad pair is either end's).
    latest["sim-20"] = ring_ping(20, -1, old)
    assert network.fleet_suspects(latest) == frozenset()
    # One failed pair is no "reached nobody" (a ping asked for one node): the others' pings to it stand.
    one = ping.evaluate([(Peer("sim-21", "eth0", "10.0.0.22"), CommandResult(("ping",), 1, SILENT, ""))])
    latest["sim-20"] = dataclasses.replace(one, node="sim-20", started_at=utc_now_iso(NOW))
    assert "sim-20" not in network.fleet_suspects(latest)
