"""Confirm before acting: which of a node's latest results the verdict may act on.

A failure that can be noise (a bandwidth below its floor, a failed ping or iperf pair, a DCGM
failure outside the fatal categories, a gpumem miss: a non-fatal ``fail`` or ``warn`` of a check in
``NOISY_CHECKS``) moves the verdict only once it is confirmed: ``need`` of the check's last
``window`` results on that node are bad. Until then it is *pending* and the verdict keeps judging
the check's last good result. Signals that are never noise (any fatal ``fail``: row-remap failure,
uncorrectable ECC, a lost GPU, an evicting Xid; any ``error``; a bad result of a check not in
``NOISY_CHECKS``) act at once.

Recovery is hysteretic: once a check's non-fatal failure counted, the verdict keeps judging that
failure until ``recover`` consecutive passes follow it (*recovering*): WARN to PASS. A DCGM pass of
level 3 or more is a validation, not a sample, and recovers at once. A fatal failure is not held
here: the sticky ``EVICT`` (until a level-3 pass or an operator's clear) already governs it.

Everything here is a pure function of one check's results on one node, newest first (the
results store's history), so a restarted process judges exactly as before. ``need=1`` and
``recover=1`` give today's behaviour: every result acts at once.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping, Sequence

from autopilot import verdict
from autopilot.results import CheckResult, DeviceResult, Status

NOISY_CHECKS = frozenset({"pciebw", "gpumem", "ping", "iperf", "dcgm"})
"""Checks whose non-fatal failures can be noise (a bandwidth sample, a dropped packet, a flaky diag)."""

HOLDING_VERDICTS = frozenset({"WARN", "TESTING", "EVICT"})
"""Stored verdicts under which a check may be recovering (so its passes are judged against its history)."""


@dataclasses.dataclass(frozen=True)
class Policy:
    """N of M and K: ``need`` bad of the last ``window`` results confirm; ``recover`` passes recover."""

    need: int = 2
    window: int = 3
    recover: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.need <= self.window:
            raise ValueError(f"confirmation needs 1 <= need <= window, got {self.need} of {self.window}")
        if self.recover < 1:
            raise ValueError(f"recovery needs at least one pass, got {self.recover}")

    @property
    def acts_at_once(self) -> bool:
        return self.need == 1 and self.recover == 1

    @property
    def depth(self) -> int:
        """How many of a check's results a judgement reads (enough for both rules to see back)."""
        return max(self.window, self.recover) * 4


class State(enum.StrEnum):
    CLEAN = "clean"  # the latest result counts as it is
    PENDING = "pending"  # the latest result is a failure that is not confirmed yet
    CONFIRMED = "confirmed"  # the latest result is a failure that counts
    RECOVERING = "recovering"  # the latest result passes, but too few passes followed a counted failure
    UNMEASURED = "unmeasured"  # the latest result skipped a GPU whose failure counts: it still counts


@dataclasses.dataclass(frozen=True)
class Judgement:
    """What the verdict should see of one check, and why."""

    check: str
    effective: CheckResult
    state: State
    flap_prevented: bool = False
    """The latest result ends a flap that confirmation held back: a pending failure followed by a pass, or
    a failure during recovery (the verdict would have gone back and forth without confirmation)."""
    bad: int = 0
    """Bad results among the last ``window`` (N of M)."""
    passes: int = 0
    """Consecutive passes since the counted failure (while recovering)."""

    @property
    def wants_confirmation_run(self) -> bool:
        """A re-run of the check would settle it now instead of at the next periodic run."""
        return self.state in (State.PENDING, State.RECOVERING)


def is_noise_candidate(result: CheckResult) -> bool:
    """A failure that can be noise and is confirmed before it counts."""
    return result.check in NOISY_CHECKS and result.status in (Status.FAIL, Status.WARN) and not result.fatal


def _is_validation(result: CheckResult) -> bool:
    """A passing invasive DCGM run (level >= 3): the run that lifts an eviction (``verdict.clears_evict``)."""
    try:
        return verdict.clears_evict(result, None)
    except (TypeError, ValueError):
        return False


def judge(series: Sequence[CheckResult], policy: Policy) -> Judgement:
    """Judge one check on one node from its results, newest first (``series[0]`` is the latest).

    ``skipped`` results say nothing about the hardware and are passed over, and so is a pass that skipped a
    GPU whose non-fatal failure counts (in use by others, MIG: ``_leaves_out``): no sample of it, it is no
    pass of it. A latest result that leaves it out keeps that failure counting (``State.UNMEASURED``), stamped
    with its own start: a GPU once slow and busy at every run since was ``PASS`` after two runs that never
    measured it.
    """
    if not series:
        raise ValueError("judge needs at least the latest result")
    latest = series[0]
    ordered = [r for r in reversed(series[: policy.depth]) if r.status is not Status.SKIPPED]
    if policy.acts_at_once:
        return Judgement(latest.check, latest, State.CLEAN)
    counted: CheckResult | None = None  # the failure the verdict judges (None: the check is good)
    last_good: CheckResult | None = None
    passes = 0
    prevented = False
    bad = 0
    for i, result in enumerate(ordered):
        prevented = False
        window = ordered[max(0, i - policy.window + 1) : i + 1]
        bad = sum(1 for r in window if r.is_bad)
        if not result.is_bad:
            if counted is None:
                # A pass right after a pending failure that was held back (there was a pass to keep
                # judging): without confirmation the verdict flapped. A first failure counted as it is.
                prevented = i > 0 and ordered[i - 1].is_bad and last_good is not None
                last_good = result
                continue
            if _leaves_out(result, counted) and not _is_validation(result):
                continue
            passes += 1
            # A fatal failure is EVICT's business: sticky until a level-3 pass or an operator's clear,
            # which must then judge the repaired node's fresh pass as it is.
            if passes >= policy.recover or _is_validation(result) or counted.fatal:
                counted, passes, last_good = None, 0, result
            continue
        if counted is not None:
            # A failure while recovering: without hysteresis the verdict had gone back to PASS.
            prevented = passes > 0
            counted, passes = result, 0
        elif not is_noise_candidate(result) or bad >= policy.need:
            counted, passes = result, 0
    if counted is not None and _leaves_out(latest, counted):
        since = f"{counted.summary} (measured {counted.started_at or 'at an unknown time'}; not measured since)"
        held = dataclasses.replace(counted, summary=since, started_at=latest.started_at)
        return Judgement(latest.check, held, State.UNMEASURED, False, bad, passes)
    if latest.status is Status.SKIPPED:
        return Judgement(latest.check, latest, State.CLEAN)
    if counted is not None:
        if latest.is_bad:
            return Judgement(latest.check, latest, State.CONFIRMED, prevented, bad)
        return Judgement(latest.check, counted, State.RECOVERING, prevented, bad, passes)
    if latest.is_bad and last_good is not None:
        return Judgement(latest.check, last_good, State.PENDING, prevented, bad)
    if latest.is_bad and is_noise_candidate(latest):
        # A failure that can be noise with no earlier pass to keep judging (a new node's first run):
        # there is no PASS to protect, and judging nothing would be no truer, so it counts as it is;
        # still pending, so a confirmation run settles it minutes later instead of a noise sample
        # holding WARN for a whole interval.
        return Judgement(latest.check, latest, State.PENDING, prevented, bad)
    return Judgement(latest.check, latest, State.CLEAN, prevented, bad)


def series_for(check: str, latest: CheckResult, history: Sequence[CheckResult]) -> list[CheckResult]:
    """``check``'s results newest first: ``latest`` then its earlier ones in ``history`` (newest first)."""
    earlier = [r for r in history if r.check == check]
    if earlier and _same(earlier[0], latest):
        return earlier
    return [latest, *earlier]


def _same(a: CheckResult, b: CheckResult) -> bool:
    return (a.started_at, a.status, a.summary, a.node) == (b.started_at, b.status, b.summary, b.node)


def needs_history(latest: Mapping[str, CheckResult], previous_verdict: str | None, policy: Policy) -> bool:
    """Whether judging ``latest`` can differ from taking it as it is (so the history must be read).

    Only a bad latest result (pending or confirmed) or a node whose last verdict was ``WARN`` (or
    one that hid a ``WARN``: ``TESTING``, ``EVICT``), where a check may be recovering, can judge
    differently; a node that passes in steady state costs no extra read.
    """
    if policy.acts_at_once:
        return False
    return previous_verdict in HOLDING_VERDICTS or any(r.is_bad for r in latest.values())


def judge_check(
    check: str,
    latest: CheckResult,
    history: Sequence[CheckResult],
    policy: Policy,
    excuse: Callable[[CheckResult], CheckResult] | None = None,
) -> Judgement:
    """``judge`` of ``check`` over ``latest`` and its earlier results in ``history``, each result first
    passed through ``excuse`` when given: what is another's finding (a failed ping to the fleet's
    suspect, ``network.excuse_ping``) is set aside in every sample, not only in the one judged last,
    so a node that keeps failing its pings to a down node is not "confirmed bad" by them, and a new
    failure elsewhere is still confirmed before it counts."""
    series = series_for(check, latest, history)
    return judge([excuse(r) for r in series] if excuse is not None else series, policy)


def _leaves_out(result: CheckResult, counted: CheckResult) -> bool:
    """Whether ``result`` skipped a GPU (a device with a UUID) that ``counted``, a non-fatal failure, found bad.

    Only GPUs: a ping pair set aside as another node's finding is skipped too, and passes as before. A fatal
    failure is the sticky ``EVICT``'s business, never held here."""
    if counted.fatal or result.is_bad:
        return False
    failed = {d.uuid for d in counted.devices if d.uuid and d.status in (Status.FAIL, Status.WARN, Status.ERROR)}
    return bool(failed) and any(d.uuid in failed and d.status is Status.SKIPPED for d in result.devices)


def judge_devices(series: Sequence[CheckResult], policy: Policy) -> CheckResult:
    """The latest result of one check (``series``, newest first) with each of its devices as that device's own
    series lets the verdict see it: ``judge`` over the device's statuses (by UUID, else by id), so a GPU's
    failure is confirmed, and its recovery held, by its own samples, not by another GPU's. What the GPU
    verdicts judge (``gpuverdict``); the node's verdict keeps judging the check as a whole (``effective``).

    Judged as one series, a GPU that healed while another still failed passed at its first pass, and a
    GPU's single noise sample counted at once while another GPU of the check was recovering.

    Only while the check counts a failure (so the node is ``WARN`` for it) are its devices judged apart; a check
    that lets a good result count gives its GPUs that result, as before, so a GPU is never worse than its node
    (a GPU with no sample of its own before, such as a replaced one, would otherwise count its first failure).
    """
    latest = series[0]
    if policy.acts_at_once or not latest.devices:
        return latest
    whole = judge(series, policy).effective
    if not whole.is_bad:
        return whole
    recent = series[: policy.depth]
    devices = []
    for device in latest.devices:
        key = device.uuid or device.id
        own = [_alone(r, d) for r in recent for d in r.devices if (d.uuid or d.id) == key]
        devices.append(judge(own, policy).effective.devices[0])
    if all(new is old for new, old in zip(devices, latest.devices, strict=True)):
        return latest
    return dataclasses.replace(latest, devices=tuple(devices))


def _alone(result: CheckResult, device: DeviceResult) -> CheckResult:
    """``device`` as a result of its own: its status, the result's fatality for a failing device, its params
    (a level-3 DCGM pass validates) and its start."""
    fatal = result.fatal and device.status is Status.FAIL
    return dataclasses.replace(result, status=device.status, fatal=fatal, devices=(device,), data={})


def effective_devices(
    latest: Mapping[str, CheckResult],
    history: Sequence[CheckResult],
    policy: Policy,
    excuse: Callable[[CheckResult], CheckResult] | None = None,
) -> dict[str, CheckResult]:
    """Each check's latest result with each device judged over its own series (``judge_devices``)."""
    out: dict[str, CheckResult] = {}
    for check, result in latest.items():
        series = series_for(check, result, history)
        out[check] = judge_devices([excuse(r) for r in series] if excuse is not None else series, policy)
    return out


def effective(
    latest: Mapping[str, CheckResult],
    history: Sequence[CheckResult],
    policy: Policy,
    excuse: Callable[[CheckResult], CheckResult] | None = None,
) -> tuple[dict[str, CheckResult], dict[str, Judgement]]:
    """Each check's result as the verdict should see it, and each check's judgement (``judge_check``)."""
    judgements = {check: judge_check(check, r, history, policy, excuse) for check, r in latest.items()}
    return {check: j.effective for check, j in judgements.items()}, judgements
