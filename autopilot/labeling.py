"""Pure: what labels and annotations a node should carry, from its verdict and DCGM results.

Keys keep upstream's names so existing schedulers, dashboards and alerts keep working
(ARCHITECTURE.md 4.3). Applying them is the job of the cluster seam or the local label store.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from autopilot import results
from autopilot.results import CheckResult, Status
from autopilot.verdict import Verdict

PREFIX = "autopilot.ibm.com/"
GPUHEALTH = PREFIX + "gpuhealth"
OUTPUT_LIMIT = 4096  # characters of a ``dcgm.level.<r>.output`` annotation (16 GPUs x 20 tests fit)


def dcgm_level_key(level: int) -> str:
    return f"{PREFIX}dcgm.level.{level}"


def timestamp(moment: datetime) -> str:
    """``2024-10-10_19.12.03UTC``: upstream's label timestamp (label values allow no ``:``), always in UTC: the
    suffix says so, and a label read across nodes must not carry each host's local time."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d_%H.%M.%SUTC")


def verdict_labels(verdict: Verdict) -> dict[str, str]:
    return {GPUHEALTH: verdict.value}


def dcgm_labels(
    result: CheckResult, *, offset: float | None = None, now: datetime | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, annotations) for a DCGM result: ``dcgm.level.<r>=PASS_<ts>|ERR_<ts>`` and the failure string.

    ``<ts>`` is when the run started on the store's clock, in UTC: ``started_at`` is stamped on the node's worker's
    clock, ``offset`` (that clock minus the store's, the reconcile's ``view.clock_offset``; None: not known) is taken
    off it, so labels read across nodes (a scheduler's selector, a person comparing nodes) are on one clock. A result
    with no ``started_at`` is stamped ``now`` (the reconcile's store clock; default this host's, in UTC).

    An ``error`` or ``skipped`` DCGM run writes nothing: it did not test the GPUs, so it can
    neither pass nor fail them.
    """
    if result.check != "dcgm" or result.status in (Status.ERROR, Status.SKIPPED):
        return {}, {}
    level = _level(result.params.get("r", 1))
    if level is None:  # not a level dcgmi runs (another writer's result): no label key of its making
        return {}, {}
    moment = _on_store_clock(result.started_at, offset) if result.started_at else (now or datetime.now(UTC))
    word = "PASS" if result.status is Status.OK else "ERR"
    key = dcgm_level_key(level)
    failure = str(result.data.get("failure_string", "")) if result.status is not Status.OK else ""
    # Test names and GPU ids come from dcgmi's output: the annotation is kept readable and bounded, since
    # a Node's annotations over 256 KiB make the API server refuse the patch that carries the verdict too.
    failure = results.printable(failure)
    if len(failure) > OUTPUT_LIMIT:
        failure = failure[: OUTPUT_LIMIT - 3] + "..."
    return {key: f"{word}_{timestamp(moment)}"}, {f"{key}.output": failure}


def _on_store_clock(started_at: str, offset: float | None) -> datetime:
    """``started_at`` (the worker's stamp) on the store's clock. The offset is taken in whole seconds: it is measured
    again at every heartbeat with milliseconds of jitter, and the label has second resolution, so a finer one would
    move the label (a Node patch) between reconciles of the same result."""
    moment = results.parse_iso(started_at)
    if not offset:
        return moment
    try:
        return moment - timedelta(seconds=round(offset))
    except (OverflowError, ValueError):  # an offset no date can hold (another writer's record): as stamped
        return moment


def _level(raw: object) -> int | None:
    """A DCGM run level, 1 to 4 (``dcgmi diag -r``), from a result's parameters; None for anything else."""
    try:
        level = int(raw or 1)  # type: ignore[call-overload]  # a stored result's parameter may be anything
    except (TypeError, ValueError, OverflowError):
        return None
    return level if 1 <= level <= 4 else None
