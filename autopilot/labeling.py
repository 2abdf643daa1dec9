"""Pure: what labels and annotations a node should carry, from its verdict and DCGM results.

Keys keep upstream's names so existing schedulers, dashboards and alerts keep working
(ARCHITECTURE.md 4.3). Applying them is the job of the cluster seam or the local label store.
"""

from __future__ import annotations

from datetime import datetime

from autopilot import results
from autopilot.results import CheckResult, Status
from autopilot.verdict import Verdict

PREFIX = "autopilot.ibm.com/"
GPUHEALTH = PREFIX + "gpuhealth"
OUTPUT_LIMIT = 4096  # characters of a ``dcgm.level.<r>.output`` annotation (16 GPUs x 20 tests fit)


def dcgm_level_key(level: int) -> str:
    return f"{PREFIX}dcgm.level.{level}"


def timestamp(moment: datetime) -> str:
    """``2024-10-10_19.12.03UTC``: upstream's label timestamp (label values allow no ``:``)."""
    return moment.strftime("%Y-%m-%d_%H.%M.%SUTC")


def verdict_labels(verdict: Verdict) -> dict[str, str]:
    return {GPUHEALTH: verdict.value}


def dcgm_labels(result: CheckResult) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, annotations) for a DCGM result: ``dcgm.level.<r>=PASS_<ts>|ERR_<ts>`` and the failure string.

    An ``error`` or ``skipped`` DCGM run writes nothing: it did not test the GPUs, so it can
    neither pass nor fail them.
    """
    if result.check != "dcgm" or result.status in (Status.ERROR, Status.SKIPPED):
        return {}, {}
    level = _level(result.params.get("r", 1))
    if level is None:  # not a level dcgmi runs (another writer's result): no label key of its making
        return {}, {}
    moment = results.parse_iso(result.started_at) if result.started_at else datetime.now().astimezone()
    word = "PASS" if result.status is Status.OK else "ERR"
    key = dcgm_level_key(level)
    failure = str(result.data.get("failure_string", "")) if result.status is not Status.OK else ""
    # Test names and GPU ids come from dcgmi's output: the annotation is kept readable and bounded, since
    # a Node's annotations over 256 KiB make the API server refuse the patch that carries the verdict too.
    failure = results.printable(failure)
    if len(failure) > OUTPUT_LIMIT:
        failure = failure[: OUTPUT_LIMIT - 3] + "..."
    return {key: f"{word}_{timestamp(moment)}"}, {f"{key}.output": failure}


def _level(raw: object) -> int | None:
    """A DCGM run level, 1 to 4 (``dcgmi diag -r``), from a result's parameters; None for anything else."""
    try:
        level = int(raw or 1)  # type: ignore[call-overload]  # a stored result's parameter may be anything
    except (TypeError, ValueError, OverflowError):
        return None
    return level if 1 <= level <= 4 else None
