"""Prometheus series per GPU, rebuilt on each scrape from the nodes' stored GPU states. Pure.

- ``autopilot_gpu_verdict{node,gpu,uuid,verdict}``: 1, one series per GPU, labelled with its
  current verdict (not one series per possible verdict: 8,000 GPUs make 8,000 series, not 32,000;
  ``gpu`` is the index, ``uuid`` the identity that survives moves).
- ``autopilot_gpu_repeat_offender{node,gpu,uuid}``: 1 for each GPU flagged a repeat offender
  (absent for the others).
- ``autopilot_gpu_last_measured_timestamp_seconds{node,gpu,uuid,check}``: when the GPU's ``pciebw`` or
  ``gpumem`` figure was last actually measured (not skipped as in use by others, not errored), or, for a
  GPU never measured by that check, since when it has been seen unmeasured: the start of its gap either
  way, so ``time() - this`` is how long the GPU has gone unmeasured (alert ``AutopilotGpuUnmeasured``).
- ``autopilot_gpus{verdict}``: GPUs per verdict over the cluster (four series).

``autopilot.metrics.ResultsCollector`` yields them from the same snapshot as the node series (one
read of the node states per rendering). Like ``autopilot.metrics``, nothing is kept between
scrapes: a GPU gone from the store is gone here.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client.core import GaugeMetricFamily, Metric

from autopilot import gpuhistory, gpuverdict, results
from autopilot.verdict import Verdict

VERDICTS = (Verdict.PASS.value, Verdict.WARN.value, Verdict.EVICT.value, Verdict.UNKNOWN.value)


def build(gpu_states: Mapping[str, str | None]) -> list[Metric]:
    """Families from node -> its ``gpus`` state field (JSON, as ``gpuverdict.dumps`` writes it)."""
    per_gpu = GaugeMetricFamily(
        "autopilot_gpu_verdict",
        "Health verdict of one GPU: 1, labelled with the current verdict (PASS, WARN, EVICT, UNKNOWN)",
        labels=["node", "gpu", "uuid", "verdict"],
    )
    offenders = GaugeMetricFamily(
        "autopilot_gpu_repeat_offender",
        "1 for a GPU with repeated incidents within the configured window (AUTOPILOT_GPU_REPEAT_*)",
        labels=["node", "gpu", "uuid"],
    )
    measured = GaugeMetricFamily(
        "autopilot_gpu_last_measured_timestamp_seconds",
        "When a GPU's pciebw or gpumem figure was last measured (not skipped as in use by others, not errored), "
        "or since when a GPU never measured has been seen unmeasured, in seconds since the Unix epoch",
        labels=["node", "gpu", "uuid", "check"],
    )
    totals = dict.fromkeys(VERDICTS, 0)
    # The GPUs a result measured share its start: each distinct time is parsed once per rendering.
    epochs: dict[str, float] = {}
    for node in sorted(gpu_states):
        for state in gpuverdict.ordered(gpuverdict.loads(gpu_states[node])):
            value = state.verdict.value if state.verdict.value in totals else Verdict.UNKNOWN.value
            totals[value] += 1
            per_gpu.add_metric([node, state.index, state.uuid, value], 1.0)
            if any(r.startswith(gpuhistory.OFFENDER) for r in state.reasons):
                offenders.add_metric([node, state.index, state.uuid], 1.0)
            for check, stamp in {**dict(state.unmeasured_since), **dict(state.measured)}.items():
                # Stamps were validated when the state was read (``gpuverdict.loads``).
                epoch = epochs.get(stamp)
                if epoch is None:
                    epoch = epochs[stamp] = results.parse_iso(stamp).timestamp()
                measured.add_metric([node, state.index, state.uuid, check], epoch)
    counts = GaugeMetricFamily("autopilot_gpus", "GPUs per verdict over every node", labels=["verdict"])
    for verdict, count in totals.items():
        counts.add_metric([verdict], float(count))
    return [per_gpu, offenders, measured, counts]
