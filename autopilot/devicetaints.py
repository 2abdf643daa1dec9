"""DRA device taints: one ``resource.k8s.io`` DeviceTaintRule per bad GPU of a node, kept in step.

Off by default (``AUTOPILOT_DEVICE_TAINTS``). ``desired`` is pure: for every GPU of the node that
is ``EVICT`` (effect ``NoSchedule``) or ``WARN`` (effect ``None``, informational), a rule that
selects exactly that device (the DRA driver, the node's name as pool, the device name from
``AUTOPILOT_DEVICE_TAINT_DEVICE``) with the taint ``autopilot.ibm.com/gpuhealth=<verdict>``. The
rule is named after the GPU's UUID, so a GPU has one rule whatever node it sits in, and labelled
with the node it was written for. ``sync`` lists the node's rules, deletes those no longer
wanted (or wanted with another taint), and creates the missing ones; in ``dry-run`` it only logs
what it would do. Where the cluster serves no DeviceTaintRule, it logs that and writes nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

from autopilot import errors, names
from autopilot.cluster import ClusterClient, DeviceTaintRuleInfo
from autopilot.gpuverdict import GpuState
from autopilot.labeling import GPUHEALTH, PREFIX
from autopilot.verdict import Verdict

log = logging.getLogger(__name__)

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "autopilot"
NODE_LABEL = PREFIX + "node"
NODE_ANNOTATION = PREFIX + "node"
EFFECTS: Mapping[Verdict, str] = {Verdict.EVICT: "NoSchedule", Verdict.WARN: "None"}
_unserved_told = False  # the "serves no DeviceTaintRule" warning was logged


@dataclasses.dataclass(frozen=True)
class SyncOutcome:
    created: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()
    dry_run: bool = False
    served: bool = True


def rule_name(uuid: str) -> str:
    """``autopilot-gpu-<uuid hex>``: a DNS-1123 subdomain (UUIDs are validated before they get here)."""
    return f"autopilot-{uuid.lower()}"


def node_label_value(node: str) -> str:
    """The node's name as a label value (at most 63 characters: longer names are shortened with a hash)."""
    return node if len(node) <= 63 else names.shortened(node, 63, digest_chars=16)


def selector(node: str) -> str:
    return f"{MANAGED_BY}={MANAGER},{NODE_LABEL}={node_label_value(node)}"


def desired(
    node: str, states: Mapping[str, GpuState], *, driver: str, device_template: str
) -> dict[str, DeviceTaintRuleInfo]:
    """Rule name -> the rule each bad GPU of ``node`` should have (GPUs without UUID or index get none)."""
    out: dict[str, DeviceTaintRuleInfo] = {}
    for state in states.values():
        effect = EFFECTS.get(state.verdict)
        if effect is None or not state.uuid or not state.index.isdigit():
            continue
        name = rule_name(state.uuid)
        out[name] = DeviceTaintRuleInfo(
            name=name,
            driver=driver,
            pool=node,
            device=device_template.replace("{index}", state.index),
            key=GPUHEALTH,
            value=state.verdict.value,
            effect=effect,
            labels={MANAGED_BY: MANAGER, NODE_LABEL: node_label_value(node)},
            annotations={NODE_ANNOTATION: node, PREFIX + "gpu-uuid": state.uuid},
        )
    return out


def _same(a: DeviceTaintRuleInfo, b: DeviceTaintRuleInfo) -> bool:
    return (a.driver, a.pool, a.device, a.key, a.value, a.effect) == (
        b.driver,
        b.pool,
        b.device,
        b.key,
        b.value,
        b.effect,
    )


def sync(
    cluster: ClusterClient,
    node: str,
    wanted: Mapping[str, DeviceTaintRuleInfo],
    *,
    dry_run: bool,
) -> SyncOutcome:
    """Make ``node``'s rules in the cluster exactly ``wanted``. Raises ``ClusterError`` (the next reconcile retries)."""
    if cluster.device_taint_api() is None:
        # Once per process: every node's reconcile asks, and the answer is the cluster's, not the node's.
        global _unserved_told
        level = logging.DEBUG if _unserved_told else logging.WARNING
        _unserved_told = True
        log.log(level, "device taints are on, but this cluster serves no resource.k8s.io DeviceTaintRule: none written")
        return SyncOutcome(dry_run=dry_run, served=False)
    existing = {r.name: r for r in cluster.list_device_taint_rules(selector(node))}
    stale = sorted(n for n, r in existing.items() if n not in wanted or not _same(r, wanted[n]))
    missing = sorted(n for n, r in wanted.items() if n not in existing or n in stale)
    for name in stale:
        if dry_run:
            log.info("dry-run: would delete DeviceTaintRule %s of node %s", name, node)
        else:
            cluster.delete_device_taint_rule(name)
    created: list[str] = []
    for name in missing:
        rule = wanted[name]
        if dry_run:
            log.info(
                "dry-run: would create DeviceTaintRule %s: %s=%s:%s on %s/%s/%s",
                name, rule.key, rule.value, rule.effect, rule.driver, rule.pool, rule.device,
            )  # fmt: skip
        elif not _create(cluster, rule):
            continue
        created.append(name)
    return SyncOutcome(tuple(created), tuple(stale), dry_run)


def _create(cluster: ClusterClient, rule: DeviceTaintRuleInfo) -> bool:
    """Create ``rule``; False when the server knows no informational effect (``None``, Kubernetes 1.35 and
    later) and refused it: that WARN rule is left out, so it never stands in the way of the EVICT rules."""
    try:
        try:
            cluster.create_device_taint_rule(rule)
        except errors.Conflict:
            # The GPU's rule was written for another node (the GPU moved, or the node was renamed).
            cluster.delete_device_taint_rule(rule.name)
            cluster.create_device_taint_rule(rule)
    except (errors.Transient, errors.NotFound):
        raise
    except errors.ClusterError as exc:
        if rule.effect != "None" or "spec.taint.effect" not in str(exc):
            raise
        log.warning(
            "DeviceTaintRule %s (%s=%s) left out: this API server knows no effect None (Kubernetes 1.35 and "
            "later): %s", rule.name, rule.key, rule.value, exc,
        )  # fmt: skip
        return False
    return True
