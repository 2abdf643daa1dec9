"""Simulated nodes: the real checks over the replayed seam, every fault kind, validation, sharing."""

from __future__ import annotations

import importlib

import pytest

from autopilot import commands, config, errors, execution
from autopilot.context import CheckContext
from autopilot.registry import shipped as shipped_checks
from autopilot.results import Status
from workers import simulate

importlib.import_module("autopilot.checks")

# Short check timeouts so that ``hang`` faults end quickly (the engine's watchdog cuts them), yet long
# enough that a healthy check on a loaded machine (the whole suite beside other work) is not cut too.
SETTINGS = config.Settings(node_name="sim-host", check_timeouts={c: 1.5 for c in simulate.FAULTS})
# The checks one node runs alone (ping and iperf need other nodes: tests/unit/test_sim_network.py).
NODE_CHECKS = [c for c in simulate.FAULTS if c not in simulate.NET_TOOL_OF]

# (check, kind) -> (status, fatal) the real check reports for it
EXPECTED = {
    ("pciebw", "low"): (Status.FAIL, False),
    ("pciebw", "narrow"): (Status.FAIL, False),  # 26 GB/s at x8 is under the Gen5 x16 floor (38)
    ("remapped", "pending"): (Status.WARN, False),
    ("remapped", "fatal"): (Status.FAIL, True),
    ("dcgm", "persistence"): (Status.FAIL, False),
    ("dcgm", "fatal"): (Status.FAIL, True),
    ("gpupower", "brake"): (Status.FAIL, False),
    ("gpupower", "thermal"): (Status.WARN, False),
    ("gpumem", "slow"): (Status.FAIL, False),
    ("gpumem", "mismatch"): (Status.FAIL, True),  # wrong values: silent data corruption
    ("pciebw", "busy"): (Status.OK, False),  # no fault: the busy GPU is skipped
    ("gpumem", "busy"): (Status.OK, False),
}


def test_every_check_passes_on_a_healthy_simulated_node() -> None:
    ctx = simulate.contexts(SETTINGS, 1, [], checks=shipped_checks())["sim-0"]
    for check in NODE_CHECKS:
        result = execution.run_check(check, ctx)
        assert (check, result.status, result.node) == (check, Status.OK, "sim-0"), result.summary


@pytest.mark.parametrize("check,kind", sorted(EXPECTED))
def test_a_fault_changes_only_its_node_and_check(check: str, kind: str) -> None:
    ctxs = simulate.contexts(SETTINGS, 2, [f"sim-1:{check}:{kind}"], checks=shipped_checks())
    faulty = execution.run_check(check, ctxs["sim-1"])
    assert (faulty.status, faulty.fatal) == EXPECTED[(check, kind)], faulty.summary
    healthy = execution.run_check(check, ctxs["sim-0"])
    assert healthy.status is Status.OK, healthy.summary
    others = [c for c in NODE_CHECKS if c != check]
    assert all(execution.run_check(c, ctxs["sim-1"]).status is Status.OK for c in others)


@pytest.mark.parametrize("check", sorted(NODE_CHECKS))
@pytest.mark.parametrize("kind", simulate.GENERIC_KINDS)
def test_hang_and_error_faults_give_error_results(check: str, kind: str) -> None:
    ctx = simulate.contexts(SETTINGS, 1, [f"sim-0:{check}:{kind}"], checks=shipped_checks())["sim-0"]
    result = execution.run_check(check, ctx)
    assert result.status is Status.ERROR, result.summary
    if kind == "hang":
        assert "timed out" in result.summary


@pytest.mark.parametrize(("check", "gpu", "figure"), [("pciebw", "3", 21.3), ("gpumem", "2", 1465.6)])
def test_a_busy_gpu_is_skipped_with_its_low_figure_and_the_evidence(check: str, gpu: str, figure: float) -> None:
    ctx = simulate.contexts(SETTINGS, 1, [f"sim-0:{check}:busy"], checks=shipped_checks())["sim-0"]
    result = execution.run_check(check, ctx)
    busy = next(d for d in result.devices if d.id == gpu)
    assert (busy.status, busy.value) == (Status.SKIPPED, figure)
    assert busy.detail.startswith("in use by others (61 GiB used, kernels 97% of the time before the run")
    assert result.data["gpus"][gpu]["in_use"]["busy"] is True
    assert {d.status for d in result.devices if d.id != gpu} == {Status.OK}
    assert (check, "busy") in simulate.NOT_FAULTS and f"{check}:busy" in simulate.help_text()


def test_the_default_kind_is_the_first_listed() -> None:
    assert simulate.parse_fault("sim-0:remapped") == simulate.Fault("sim-0", "remapped", "pending")
    assert simulate.parse_fault("sim-2:dcgm:fatal").kind == "fatal"


@pytest.mark.parametrize(
    "spec,says",
    [
        ("sim-9:remapped", "unknown simulated node 'sim-9'"),
        ("sim-0:nope", "unknown check 'nope'"),
        ("sim-0:pciebw:fatal", "pciebw has no fatal failure"),
        ("sim-0:dcgm:melt", "unknown kind 'melt' for dcgm"),
        ("sim-0", "expected NODE:CHECK[:KIND]"),
        ("sim-0::", "expected NODE:CHECK[:KIND]"),
        ("sim-0:dcgm:fatal:x", "expected NODE:CHECK[:KIND]"),
        ("sim-0;rm -rf /:dcgm", "unknown simulated node"),
    ],
)
def test_bad_fault_specs_are_rejected_naming_the_option(spec: str, says: str) -> None:
    with pytest.raises(errors.BadParameter) as caught:
        simulate.contexts(SETTINGS, 3, [spec], checks=shipped_checks())
    assert caught.value.field == "--fault"
    assert says in str(caught.value)


def test_two_faults_for_one_check_of_a_node_are_rejected() -> None:
    with pytest.raises(errors.BadParameter, match="two faults for sim-0:dcgm"):
        simulate.parse_faults(["sim-0:dcgm", "sim-0:dcgm:fatal"], simulate.node_names(1))


@pytest.mark.parametrize("n", [0, -1, simulate.MAX_NODES + 1])
def test_node_count_is_bounded(n: int) -> None:
    with pytest.raises(errors.BadParameter) as caught:
        simulate.contexts(SETTINGS, n, [], checks=shipped_checks())
    assert caught.value.field == "--simulate"


def test_offset_names_the_nodes_and_bounds_the_faults() -> None:
    ctxs = simulate.contexts(SETTINGS, 3, ["sim-11:gpupower"], offset=10, checks=shipped_checks())
    assert list(ctxs) == ["sim-10", "sim-11", "sim-12"]
    assert execution.run_check("gpupower", ctxs["sim-11"]).status is Status.FAIL
    with pytest.raises(errors.BadParameter):
        simulate.contexts(SETTINGS, 3, ["sim-0:gpupower"], offset=10, checks=shipped_checks())


def test_nodes_with_the_same_faults_share_one_seam() -> None:
    ctxs = simulate.contexts(SETTINGS, 1000, ["sim-7:dcgm:fatal"], checks=shipped_checks())
    healthy = {id(c.commands) for n, c in ctxs.items() if n != "sim-7"}
    # Each node's telemetry is a small view with its own GPU UUIDs over one shared list of GPUs.
    shared = {id(c.gpus.devices) for n, c in ctxs.items() if n != "sim-7"}  # type: ignore[attr-defined]
    assert len(healthy) == 1 and len(shared) == 1
    assert id(ctxs["sim-7"].commands) not in healthy
    assert len({id(c.settings) for c in ctxs.values()}) == 1


def test_replay_ignores_sizes_but_not_the_device_or_level() -> None:
    runner = simulate.contexts(SETTINGS, 1, [], checks=shipped_checks())["sim-0"].commands
    bus = ["--pci-bus-id", "00000000:02:00.0"]
    default = runner.run(["/opt/ap-bandwidth", *bus, "--size-mib", "256", "--samples", "20"], timeout=5)
    other = runner.run(["/opt/ap-bandwidth", *bus, "--size-mib", "64", "--samples", "10"], timeout=5)
    assert default.returncode == 0 and default.stdout == other.stdout
    assert (
        runner.run(["dcgmi", "diag", "-r", "3", "-j"], timeout=5).stdout
        != runner.run(["dcgmi", "diag", "-r", "1", "-j"], timeout=5).stdout
    )
    assert runner.run(["ap-bandwidth", "--pci-bus-id", "00000000:08:00.0"], timeout=5).returncode == 2  # no GPU 8
    with pytest.raises(errors.ToolNotFound):
        runner.run(["nvidia-smi"], timeout=5)
    with pytest.raises(TypeError):
        runner.run("dcgmi diag -r 1", timeout=5)


def test_a_hanging_tool_ends_when_the_watchdog_cancels_its_scope() -> None:
    runner = simulate.contexts(SETTINGS, 1, ["sim-0:dcgm:hang"], checks=shipped_checks())["sim-0"].commands
    scope = commands.ProcessScope()
    scope.cancel()
    with pytest.raises(errors.ToolTimeout):
        runner.bind(scope).run(["dcgmi", "diag", "-r", "1", "-j"], timeout=3600)


def test_every_recording_is_marked_synthetic() -> None:
    import json

    files = sorted(simulate.SIMDATA.glob("*.json"))
    assert files
    for path in files:
        assert json.loads(path.read_text())["synthetic"].startswith("synthetic"), path.name


def _h2d(ctx: CheckContext) -> list[float]:
    result = execution.run_check("pciebw", ctx)
    assert result.status is Status.OK, result.summary
    return [float(d.value or 0) for d in result.devices]


def test_the_noise_setting_gives_each_node_and_run_its_own_figures() -> None:
    quiet = simulate.contexts(SETTINGS, 2, [], checks=shipped_checks())
    assert _h2d(quiet["sim-0"]) == _h2d(quiet["sim-1"]) == _h2d(quiet["sim-0"])  # the recordings, as recorded
    noisy = simulate.contexts(SETTINGS, 2, [], noise=8, checks=shipped_checks())
    first = _h2d(noisy["sim-0"])
    assert first != _h2d(noisy["sim-1"])  # per-device variation
    assert first != _h2d(noisy["sim-0"])  # run-to-run noise
    # The same fleet on every start (seeded), and the simulated faults still show through the noise.
    assert _h2d(simulate.contexts(SETTINGS, 1, [], noise=8, checks=shipped_checks())["sim-0"]) == first
    low = simulate.contexts(SETTINGS, 1, ["sim-0:pciebw:low"], noise=8, checks=shipped_checks())["sim-0"]
    assert execution.run_check("pciebw", low).status is Status.FAIL


@pytest.mark.parametrize("noise", [-1.0, float("nan"), float("inf"), 1000.0])
def test_a_bad_noise_setting_is_rejected_naming_the_option(noise: float) -> None:
    with pytest.raises(errors.BadParameter) as caught:
        simulate.contexts(SETTINGS, 1, [], noise=noise, checks=shipped_checks())
    assert caught.value.field == "--sim-noise"


def test_a_bound_runner_answers_as_the_runner_and_only_it_is_cancelled() -> None:
    runner = simulate.contexts(SETTINGS, 1, ["sim-0:dcgm:hang"], checks=shipped_checks())["sim-0"].commands
    assert isinstance(runner, simulate.SimRunner)
    scope = commands.ProcessScope()
    bound = runner.bind(scope)
    assert type(bound) is simulate.SimRunner and bound is not runner
    argv = ["ap-bandwidth", "--pci-bus-id", "00000000:03:00.0"]
    assert bound.run(argv, timeout=5) == runner.run(argv, timeout=5)
    assert bound.which("dcgmi") == runner.which("dcgmi") == "dcgmi"
    scope.cancel()
    with pytest.raises(errors.ToolTimeout):
        bound.run(["dcgmi", "diag", "-r", "1", "-j"], timeout=3600)
    # The runner it was bound from has no scope: a hang there lasts its timeout (here a short one).
    with pytest.raises(errors.ToolTimeout):
        runner.run(["dcgmi", "diag", "-r", "1", "-j"], timeout=0.01)
    assert runner.bind(commands.ProcessScope())._scope is not None and runner._scope is None
