"""Fleet-relative baselines: judge one device's figure against the recent figures of its cohort.

A cohort is (GPU model, driver major version, check, metric), e.g. (``NVIDIA H100 80GB HBM3``,
``535``, ``pciebw``, ``h2d_gbps``). Its baseline is the median and the MAD (median absolute
deviation, scaled by 1.4826 so that it estimates the standard deviation of a normal spread) of
the fleet's last ``window`` figures; with fewer than ``min_samples`` figures there is none, and
only the fixed floors of the checks judge. Median and MAD ignore up to half the sample being
outliers, so a bad rack does not drag its own baseline down; a figure judged slow does not join
the window at all, so a drop of the whole fleet at once (a driver update that halves every GPU's
bandwidth) stays a finding instead of becoming the cohort's new median.

A device is ``slow against its fleet`` when its figure is more than ``deviations`` robust
deviations below its cohort's median *and* more than ``min_drop_pct`` percent below it: the first
keeps noise from warning in a tight cohort, the second keeps a tiny but consistent difference
from warning in a very tight one. Such a device that its check found ``ok`` becomes ``warn``
(``slow against its fleet: 81% of the median of 412 NVIDIA H100 80GB HBM3``); a device already
``warn``, ``fail`` or ``error`` keeps its status. The result carries the baselines it was judged
against in ``data["fleet_baseline"]``.

Pure: what stores the recent figures (``Window`` here for one process, Redis in the workers) is
the caller's business. Larger is better for every metric judged here.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from autopilot import config
from autopilot.results import CheckResult, DeviceResult, Status, worst

MAD_SCALE = 1.4826  # MAD * this estimates the standard deviation of normally distributed figures
SEPARATOR = "|"
MAX_FIGURE = 1e5
"""No figure judged here reaches it: ten times the fastest HBM (about 8,000 GB/s), far past any PCIe link,
FP64 rate (TFLOPS) or network pair (Gb/s). A figure beyond it is a tool or a writer lying, never the fleet."""

# check -> metric -> the field of ``data["gpus"][<index>]`` holding it (per-GPU checks).
GPU_FIELDS: dict[str, dict[str, str]] = {
    "pciebw": {"h2d_gbps": "h2d_pinned_gbps"},
    "gpumem": {"daxpy_gbps": "daxpy_gbps", "dgemm_tflops": "dgemm_tflops"},
}
# check -> (metric, unit): figures read from the result's devices (one per pair or per GPU).
DEVICE_METRICS: dict[str, tuple[str, str]] = {
    "iperf": ("pair_gbps", "Gb/s"),
    "dcgm": ("bandwidth_gbps", "GB/s"),  # DCGM bandwidth figures, where a result carries them
}


@dataclasses.dataclass(frozen=True)
class Policy:
    """When a figure is judged slow (``AUTOPILOT_BASELINE_*``; see ``config.Settings``)."""

    window: int = 1000
    min_samples: int = 50
    deviations: float = 4.0
    min_drop_pct: float = 10.0

    @property
    def enabled(self) -> bool:
        return self.window > 0


@dataclasses.dataclass(frozen=True)
class Cohort:
    model: str
    driver: str  # the major version: "535"
    check: str
    metric: str

    @property
    def key(self) -> str:
        return SEPARATOR.join((self.model, self.driver, self.check, self.metric))

    @classmethod
    def from_key(cls, key: str) -> Cohort:
        model, driver, check, metric = key.rsplit(SEPARATOR, 3)
        return cls(model, driver, check, metric)


@dataclasses.dataclass(frozen=True)
class Baseline:
    cohort: Cohort
    median: float
    mad: float  # scaled: a robust standard deviation
    count: int

    def to_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self.cohort),
            "median": round(self.median, 4),
            "mad": round(self.mad, 4),
            "count": self.count,
        }


@dataclasses.dataclass(frozen=True)
class Sample:
    """One figure of one device: ``device`` is the id in the result's ``devices``."""

    device: str
    cohort: Cohort
    value: float


QUARANTINE = Policy()
"""The least slow a figure is kept out of its cohort's window at (``joins``): the default judgement."""


def driver_major(version: str) -> str:
    """``535.129.03`` -> ``535``; anything unreadable -> ``unknown`` (its own cohort)."""
    head = version.strip().split(".")[0]
    return head if head.isdigit() else "unknown"


def summarize(cohort: Cohort, values: Sequence[float], min_samples: int) -> Baseline | None:
    """Median and scaled MAD of ``values``; None below ``min_samples`` figures (or with none).

    Only figures that can be measurements count (``plausible``): a window is a list in Redis that
    any writer can reach, and one ``nan`` makes the median whatever the sort left in the middle,
    one ``inf`` a spread that judges nobody."""
    values = [v for v in values if plausible(v)]
    if len(values) < max(1, min_samples):
        return None
    median = statistics.median(values)
    mad = statistics.median(abs(v - median) for v in values) * MAD_SCALE
    return Baseline(cohort, median, mad, len(values))


def plausible(value: float) -> bool:
    """A figure that can be a measurement of a bandwidth or a rate: finite, above zero, below ``MAX_FIGURE``."""
    return math.isfinite(value) and 0 < value < MAX_FIGURE


def joins(sample: Sample, base: Baseline | None, policy: Policy) -> bool:
    """Whether ``sample`` may join its cohort's window: a plausible figure that is not slow against ``base``.

    A slow figure is a finding, not the cohort's new normal: were it learned, a driver update that halves
    every GPU's bandwidth at once would warn on the first figures and, once they filled half the window,
    pass the whole fleet at its new, halved median. Slow here is never tighter than ``QUARANTINE``: settings
    that judge within the healthy spread (1 MAD, 0%) would otherwise keep the window's lower tail out at
    every turn, and its median would creep up until the whole fleet warned."""
    if not plausible(sample.value):
        return False
    if base is None:
        return True
    bar = Policy(
        deviations=max(policy.deviations, QUARANTINE.deviations),
        min_drop_pct=max(policy.min_drop_pct, QUARANTINE.min_drop_pct),
    )
    return not is_slow(sample.value, base, bar)


def is_slow(value: float, baseline: Baseline, policy: Policy) -> bool:
    """More than ``deviations`` robust deviations and more than ``min_drop_pct`` % below the median."""
    if baseline.median <= 0:
        return False
    drop = baseline.median - value
    return drop > policy.deviations * baseline.mad and drop > baseline.median * policy.min_drop_pct / 100.0


def samples(result: CheckResult, model: str, driver: str) -> list[Sample]:
    """The figures of ``result`` that a baseline judges, each with its cohort.

    Only figures of devices the check measured (a device in ``error`` has none), and not those of
    a GPU another process used meanwhile (``in_use.busy`` in its data): a contended figure would
    teach the cohort that slow is normal. Per-GPU checks name the GPU model in each GPU's data
    (the tool prints it); ``model`` is the fallback.
    """
    if result.status in (Status.SKIPPED, Status.BUSY):
        return []
    major = driver_major(driver)
    found: list[Sample] = []
    fields = GPU_FIELDS.get(result.check)
    if fields is not None:
        gpus = result.data.get("gpus")
        if not isinstance(gpus, Mapping):
            return []
        measured = {d.id for d in result.devices if d.status is not Status.ERROR}
        for gpu, entry in gpus.items():
            if str(gpu) not in measured or not isinstance(entry, Mapping) or in_use_by_others(entry):
                continue
            name = str(entry.get("name") or model or "unknown")
            for metric, field in fields.items():
                value = _number(entry.get(field))
                if value is not None:
                    found.append(Sample(str(gpu), Cohort(name, major, result.check, metric), value))
        return found
    spec = DEVICE_METRICS.get(result.check)
    if spec is None:
        return []
    metric, unit = spec
    for device in result.devices:
        value = _number(device.value)
        if device.unit == unit and value is not None and device.status is not Status.ERROR:
            found.append(Sample(device.id, Cohort(model or "unknown", major, result.check, metric), value))
    return found


def in_use_by_others(entry: Mapping[str, Any]) -> bool:
    """Whether a GPU's ``data.gpus.<i>`` entry says another process used it while measured (``in_use.busy``)."""
    marks = entry.get("in_use")
    return isinstance(marks, Mapping) and marks.get("busy") is True


def _number(raw: object) -> float | None:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    value = float(raw)
    return value if value == value and value not in (float("inf"), float("-inf")) else None


def judge(
    result: CheckResult, found: Sequence[Sample], baselines: Mapping[Cohort, Baseline], policy: Policy
) -> CheckResult:
    """``result`` with every ``ok`` device that is slow against its fleet turned ``warn``.

    ``found`` are the result's samples (``samples``), ``baselines`` what they are judged against.
    The baselines used are recorded in ``data["fleet_baseline"]`` (by cohort key), slow or not.
    """
    used = {s.cohort: baselines[s.cohort] for s in found if s.cohort in baselines}
    if not used:
        return result
    slow: dict[str, list[str]] = collections.defaultdict(list)
    for s in found:
        base = used.get(s.cohort)
        if base is not None and is_slow(s.value, base, policy):
            slow[s.device].append(
                f"{s.cohort.metric} {s.value:g} is {100.0 * s.value / base.median:.0f}% of the median of "
                f"{base.count} {s.cohort.model}"
            )
    devices = tuple(_slower(d, slow.get(d.id)) for d in result.devices)
    data = {**result.data, "fleet_baseline": {c.key: b.to_dict() for c, b in used.items()}}
    changed = [new for old, new in zip(result.devices, devices, strict=True) if new is not old]
    if not changed:
        return dataclasses.replace(result, devices=devices, data=data)
    what = "GPU " if result.check in GPU_FIELDS else ""
    notes = "; ".join(f"{what}{d.id}: {d.detail}" for d in changed)
    summary = notes if result.status is Status.OK else f"{result.summary}; {notes}"
    status = worst(d.status for d in devices)
    return dataclasses.replace(result, status=status, summary=summary, devices=devices, data=data)


class Source(Protocol):
    """Where a cohort's recent figures are kept: ``Window`` in one process, Redis in the workers."""

    def baselines(self, cohorts: Iterable[Cohort], min_samples: int) -> dict[Cohort, Baseline]: ...

    def add(self, found: Iterable[Sample]) -> None: ...


def assess(result: CheckResult, *, model: str, driver: str, source: Source, policy: Policy) -> CheckResult:
    """Judge ``result`` against its cohorts' baselines in ``source``, then add its figures there.

    Judged before its own figures count, so a device is compared with the rest of the fleet; a figure
    slow against its cohort (or one no measurement gives) never joins it (``joins``).
    """
    if not policy.enabled:
        return result
    found = samples(result, model, driver)
    if not found:
        return result
    bases = source.baselines({s.cohort for s in found}, policy.min_samples)
    judged = judge(result, found, bases, policy)
    source.add([s for s in found if joins(s, bases.get(s.cohort), policy)])
    return judged


def _slower(device: DeviceResult, why: list[str] | None) -> DeviceResult:
    if not why or device.status is not Status.OK:
        return device
    return dataclasses.replace(device, status=Status.WARN, detail="slow against its fleet: " + "; ".join(why))


class Window:
    """The last ``size`` figures of each cohort, in one process (the benchmark, tests).

    At most ``max_cohorts`` cohorts are kept; the one updated longest ago goes first.
    """

    def __init__(self, size: int, max_cohorts: int = 1000) -> None:
        self.size = size
        self.max_cohorts = max_cohorts
        self._values: collections.OrderedDict[Cohort, collections.deque[float]] = collections.OrderedDict()

    def add(self, found: Iterable[Sample]) -> None:
        for s in found:
            values = self._values.get(s.cohort)
            if values is None:
                values = self._values[s.cohort] = collections.deque(maxlen=self.size)
                while len(self._values) > self.max_cohorts:
                    self._values.popitem(last=False)
            self._values.move_to_end(s.cohort)
            values.append(s.value)

    def baselines(self, cohorts: Iterable[Cohort], min_samples: int) -> dict[Cohort, Baseline]:
        out: dict[Cohort, Baseline] = {}
        for cohort in set(cohorts):
            base = summarize(cohort, list(self._values.get(cohort, ())), min_samples)
            if base is not None:
                out[cohort] = base
        return out

    def all(self, min_samples: int) -> list[Baseline]:
        return [b for c in list(self._values) if (b := summarize(c, list(self._values[c]), min_samples))]


def policy_of(settings: config.Settings) -> Policy:
    return Policy(
        window=settings.baseline_window,
        min_samples=settings.baseline_min_samples,
        deviations=settings.baseline_deviations,
        min_drop_pct=settings.baseline_min_drop_pct,
    )
