"""Realistic spread for the simulator's bandwidth figures: per-device variation, per-run noise, slow GPUs.

The recordings the simulator replays (``workers/simdata``) give every GPU of every node nearly the
same figure, which no fleet does. ``NoisyRunner`` wraps a simulated node's command seam and
rescales the figures ``ap-bandwidth`` and ``ap-gpumem`` print (JSON version 2), GPU by GPU:

    sample x device factor (fixed per node, GPU and figure) x run noise (new every run) x slowdown

Every sample of a figure's series (``"h2d": {"samples": [...]}``) is scaled by the same factor,
and the series' median, min, max and coefficient of variation and the flat field (``h2d_pinned_gbps``,
the median) are recomputed from the scaled samples, so the checks, which judge the median of the
samples, see the same figure the flat field says.

Both factors are normal around 1 with the coefficients of variation of ``SPREADS``, drawn from a
seed, so a simulated fleet is the same fleet on every run with the same seed. ``slow`` sets a
GPU's figure to a fraction of its normal (``Slowdown``): the fault a fleet baseline exists to see.

Where the spreads come from (``Spread.source``): Sinha et al., "Not All GPUs Are Created Equal:
Characterizing Variability in Large-Scale, Accelerator-Rich Systems" (SC22, arXiv:2208.11035),
measured an average performance variation of 8% (max 22%) between GPUs of one SKU in one
cluster for compute-bound kernels (SGEMM, ResNet), and less for memory-bound ones. We read the
8% as the spread of the middle 95% of healthy GPUs (about four standard deviations), so 2% for
DGEMM, and take 1.5% for DAXPY (HBM-bound) and 1% for pinned H2D (bounded by the PCIe link, not
by the chip's power management). Run-to-run noise is half the device spread. Outliers that
paper saw (1.5x slower than the median) are faults here, placed by the caller, not noise.

``noise`` scales the run-to-run noise only (1: the spread above; 0: none; 8: a fleet whose samples
wander eight times as much, e.g. links that come back from idle slowly): the simulator's noise
setting (``autopilot up --simulate N --sim-noise SCALE``), with which confirmation's effect on
verdict flaps is measured (``python -m bench.quality --flaps``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from autopilot import commands

MAX_NOISE = 50.0
_SC22 = "Sinha et al., SC22 (arXiv:2208.11035): 8% average variation between GPUs of one SKU"


@dataclasses.dataclass(frozen=True)
class Spread:
    device_cv: float  # standard deviation of the per-device factor (fraction of the figure)
    run_cv: float  # standard deviation of the per-run noise
    source: str


# Figure of an ``ap-bandwidth`` / ``ap-gpumem`` device entry -> its spread.
SPREADS: dict[str, Spread] = {
    "h2d_pinned_gbps": Spread(0.01, 0.005, f"{_SC22}; a quarter of it: PCIe-bound, not power-managed"),
    "d2h_pinned_gbps": Spread(0.01, 0.005, f"{_SC22}; as h2d_pinned_gbps"),
    "daxpy_gbps": Spread(0.015, 0.0075, f"{_SC22}; HBM-bound kernels vary less than compute-bound ones"),
    "dgemm_tflops": Spread(0.02, 0.01, f"{_SC22}, read as the middle 95% of healthy GPUs (4 sigma)"),
}
TOOLS = ("ap-bandwidth", "ap-gpumem")
# Flat figure (the median, version 2) -> the series that holds its samples.
SERIES = {"h2d_pinned_gbps": "h2d", "d2h_pinned_gbps": "d2h", "daxpy_gbps": "daxpy", "dgemm_tflops": "dgemm"}


def run_generator(seed: int, node: str) -> random.Random:
    """The generator of a node's run noise (one per node, shared by its runners, drawn in run order)."""
    return random.Random(f"{seed}:{node}:runs")


@dataclasses.dataclass(frozen=True)
class Slowdown:
    """GPU ``gpu``'s ``figure`` at ``factor`` of its normal (0.8: 80%)."""

    figure: str
    gpu: int
    factor: float


class NoisyRunner:
    """A command seam (a ``SimRunner``) whose bandwidth figures vary by device and by run.

    Deterministic for a seed: device factors come from (seed, node, GPU, figure), run noise from
    one generator per node, drawn in the order the node's checks run.
    """

    def __init__(
        self,
        inner: Any,
        node: str,
        seed: int,
        slow: Sequence[Slowdown] = (),
        *,
        spreads: Mapping[str, Spread] = SPREADS,
        noise: float = 1.0,
        _rng: random.Random | None = None,
    ) -> None:
        if not 0 <= noise <= MAX_NOISE:
            raise ValueError(f"noise must be 0..{MAX_NOISE:g}, got {noise!r}")
        self.inner = inner
        self.node = node
        self.seed = seed
        self.slow = tuple(slow)
        self.spreads = spreads
        self.noise = noise
        self._rng = _rng or run_generator(seed, node)

    def bind(self, scope: commands.ProcessScope) -> NoisyRunner:
        bound = self.inner.bind(scope) if hasattr(self.inner, "bind") else self.inner
        return NoisyRunner(
            bound, self.node, self.seed, self.slow, spreads=self.spreads, noise=self.noise, _rng=self._rng
        )

    def which(self, name: str) -> str | None:
        found: str | None = self.inner.which(name)
        return found

    def answers_at_once(self, program: str) -> bool:
        """``commands.InstantRunner``, as the runner it wraps says (noise changes figures, not timing)."""
        return isinstance(self.inner, commands.InstantRunner) and self.inner.answers_at_once(program)

    def spawn(self, argv: Sequence[str], *, lifetime_s: float, env: Mapping[str, str] | None = None) -> Any:
        return self.inner.spawn(argv, lifetime_s=lifetime_s, env=env)

    def run(
        self, argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None
    ) -> commands.CommandResult:
        out: commands.CommandResult = self.inner.run(argv, timeout=timeout, env=env)
        if os.path.basename(str(argv[0])) not in TOOLS or out.returncode != 0:
            return out
        try:
            doc = json.loads(out.stdout)
        except ValueError:
            return out
        for device in doc.get("devices") or ():
            if isinstance(device, dict) and isinstance(device.get("index"), int):
                self._vary(device)
        return dataclasses.replace(out, stdout=json.dumps(doc) + "\n")

    def device_factor(self, gpu: int, figure: str) -> float:
        spread = self.spreads[figure]
        return random.Random(f"{self.seed}:{self.node}:{gpu}:{figure}").gauss(1.0, spread.device_cv)

    def _vary(self, device: dict[str, Any]) -> None:
        gpu = int(device["index"])
        for figure in [*self.spreads, *(s.figure for s in self.slow if s.figure not in self.spreads)]:
            value = device.get(figure)
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            factor = 1.0
            spread = self.spreads.get(figure)
            if spread is not None:
                # Drawn whether or not noise is 0, so a fleet's device factors and draws do not depend on it.
                run = self._rng.gauss(1.0, spread.run_cv)
                factor = self.device_factor(gpu, figure) * (1.0 + self.noise * (run - 1.0))
            for s in self.slow:
                if s.gpu == gpu and s.figure == figure:
                    factor *= s.factor
            factor = max(factor, 0.0)
            device[figure] = round(float(value) * factor, 3)
            series = device.get(SERIES.get(figure, ""))
            samples = series.get("samples") if isinstance(series, dict) else None
            if isinstance(series, dict) and isinstance(samples, list) and samples:
                scaled_series(series, [round(float(v) * factor, 3) for v in samples])
                device[figure] = series["median"]


def scaled_series(series: dict[str, Any], samples: list[float]) -> None:
    """Put ``samples`` in a version-2 series and recompute its statistics (as ``cuda_src`` prints them)."""
    mean = statistics.fmean(samples)
    sd = statistics.stdev(samples) if len(samples) > 1 else 0.0
    series.update(
        samples=samples,
        median=round(statistics.median(samples), 3),
        min=min(samples),
        max=max(samples),
        cv=round(sd / mean, 5) if mean > 0 else 0.0,
    )
