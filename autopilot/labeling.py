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
    level = int(result.params.get("r", 1) or 1)
    moment = results.parse_iso(result.started_at) if result.started_at else datetime.now().astimezone()
    word = "PASS" if result.status is Status.OK else "ERR"
    key = dcgm_level_key(level)
    failure = str(result.data.get("failure_string", "")) if result.status is not Status.OK else ""
    return {key: f"{word}_{timestamp(moment)}"}, {f"{key}.output": failure}
