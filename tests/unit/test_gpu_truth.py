"""A node expected to have GPUs never passes without them (issue 11, item 1).

Expected GPUs come from sysfs (a tree in a temporary directory here), ``/dev/nvidia<N>``, the Node's
allocatable ``nvidia.com/gpu`` and ``AUTOPILOT_EXPECT_GPUS``. Where GPUs are expected, NVML that
cannot start is ``error`` on every GPU check (naming the cause), missing GPUs are a fatal ``fail``
naming their bus ids, a lost GPU is a fatal ``fail``; and NVML's start-up is tried on every run.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import fakeredis
import pynvml
import pytest

from autopilot import cluster as cluster_mod
from autopilot import config, errors, execution, gpus, names, nodeinfo, registry
from autopilot.context import CheckContext
from autopilot.registry import shipped as shipped_checks
from autopilot.results import CheckResult, Status
from autopilot.testing import FakeCluster, FakeGpu, FakeRunner, FakeTelemetry
from tests.unit.cluster_standin import StandInApi
from workers import tasks
from workers.host import NodeHost
from workers.store import ResultsStore, Run

GPU_CHECKS = ("pciebw", "remapped", "gpumem", "dcgm", "gpupower")
BUS = [f"0000:{b:02x}:00.0" for b in (0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB)]


def pci_tree(root: Path, devices: dict[str, tuple[str, str]]) -> str:
    """``<root>/bus/pci/devices/<bus id>/{vendor,class}`` as the kernel writes them."""
    for bus, (vendor, klass) in devices.items():
        d = root / "bus" / "pci" / "devices" / bus
        d.mkdir(parents=True)
        (d / "vendor").write_text(vendor + "\n")
        (d / "class").write_text(klass + "\n")
    return str(root)


@pytest.fixture
def eight_gpus(tmp_path: Path) -> str:
    """A sysfs tree with 8 H100s (3D controllers), an NVSwitch, a GPU audio function and a NIC."""
    devices = {b: ("0x10de", "0x030200") for b in BUS}
    devices["0000:05:00.0"] = ("0x10de", "0x068000")  # NVSwitch: a bridge, no GPU
    devices["0000:18:00.1"] = ("0x10de", "0x040300")  # HDMI audio of a GPU
    devices["0000:c1:00.0"] = ("0x15b3", "0x020700")  # Mellanox
    return pci_tree(tmp_path / "sys", devices)


@pytest.fixture
def no_dev(tmp_path: Path) -> str:
    (tmp_path / "dev").mkdir()
    return str(tmp_path / "dev")


def ctx_for(telemetry: Any, probe: nodeinfo.GpuProbe | None, *, cluster: Any = None) -> CheckContext:
    settings = config.Settings(node_name="gpu-1", periodic_checks=GPU_CHECKS)
    return CheckContext(
        "gpu-1", settings, FakeRunner(), telemetry, cluster=cluster, gpu_probe=probe, checks=shipped_checks()
    )


def h100s(n: int) -> list[FakeGpu]:
    return [FakeGpu(pci_bus_id=f"0000{b.upper()}") for b in BUS[:n]]


# ------------------------------------------------------------------ expected GPUs


def test_expected_gpus_come_from_nvidia_display_functions_device_nodes_and_settings(
    eight_gpus: str, tmp_path: Path
) -> None:
    assert nodeinfo.nvidia_pci_functions(eight_gpus) == tuple(BUS)
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-caps"):
        (dev / name).touch()
    assert nodeinfo.nvidia_device_nodes(str(dev)) == 2
    node = (4, "Node allocatable nvidia.com/gpu=4")
    got = nodeinfo.expected_gpus(setting=0, node=node, sys_root=eight_gpus, dev_root=str(dev))
    assert got.count == 8 and got.bus_ids == tuple(BUS)
    assert "Node allocatable nvidia.com/gpu=4" in got.sources
    nothing = nodeinfo.expected_gpus(sys_root=str(tmp_path / "none"), dev_root=str(tmp_path / "none"))
    assert nothing.count == 0 and nothing.sources == ()
    assert nodeinfo.expected_gpus(setting=2, sys_root=str(tmp_path / "none"), dev_root=str(dev)).count == 2


def test_bus_ids_of_nvml_and_sysfs_are_spelled_alike() -> None:
    assert names.bus_id("00000000:3B:00.0") == names.bus_id("0000:3b:00.0") == "0000:3b:00.0"


def test_the_probe_reads_the_node_allocatable_and_survives_an_api_failure(tmp_path: Path, no_dev: str) -> None:
    fake = FakeCluster()
    fake.add_node("gpu-1", gpus=8)
    probe = nodeinfo.GpuProbe(sys_root=str(tmp_path / "none"), dev_root=no_dev)
    assert probe.read(fake, "gpu-1").count == 8
    assert probe.read(fake, "not-there").count == 0  # NotFound: that source says nothing
    assert probe.read(None, "gpu-1").count == 0


@pytest.mark.parametrize(
    "allocatable, labels, count",
    [
        (8, {}, 8),
        (32, {"nvidia.com/gpu.replicas": "4", "nvidia.com/gpu.sharing-strategy": "time-slicing"}, 8),
        (56, {"nvidia.com/mig.strategy": "single", "nvidia.com/gpu.count": "8"}, 8),
        (56, {"nvidia.com/mig.strategy": "single"}, 1),
        (0, {"nvidia.com/gpu.count": "8"}, 0),
    ],
)
def test_the_node_counts_physical_gpus_not_shares_or_mig_devices(
    allocatable: int, labels: dict[str, str], count: int
) -> None:
    info = cluster_mod.NodeInfo("gpu-1", labels, allocatable_gpus=allocatable)
    assert nodeinfo.node_gpus(info)[0] == count


def test_expect_gpus_setting_is_validated() -> None:
    assert config.Settings.from_env({"AUTOPILOT_EXPECT_GPUS": "8"}).expect_gpus == 8
    with pytest.raises(errors.BadParameter, match="AUTOPILOT_EXPECT_GPUS"):
        config.Settings.from_env({"AUTOPILOT_EXPECT_GPUS": "eight"})


# ------------------------------------------------------------------ NVML start-up


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """pynvml with a scriptable ``nvmlInit`` and devices (the real error classes)."""
    script: dict[str, Any] = {"init": [], "lost": set(), "count": 2}

    def init() -> None:
        if script["init"]:
            raise pynvml.NVMLError(script["init"].pop(0))

    def handle(index: int) -> int:
        if index in script["lost"]:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return index

    monkeypatch.setattr(pynvml, "nvmlInit", init)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: script["count"])
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", handle)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetRemappedRows", lambda h: (0, 0, 0, 0))
    yield script


@pytest.mark.parametrize(
    "code, cause",
    [
        (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "NVML library not found"),
        (pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH, "driver/library version mismatch"),
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "driver not loaded"),
        (pynvml.NVML_ERROR_GPU_IS_LOST, "GPU is lost"),
    ],
)
def test_a_failed_nvml_start_names_its_cause_and_is_tried_again(nvml: dict[str, Any], code: int, cause: str) -> None:
    nvml["init"] = [code]
    telemetry = gpus.NvmlTelemetry()
    with pytest.raises(errors.GpuUnavailable, match=cause) as failed:
        telemetry.count()
    assert failed.value.code == code
    assert telemetry.count() == 2  # the driver is back: seen on the next call, not "no GPU" for life


def test_a_gpu_nvml_calls_lost_raises_gpu_lost_with_its_index(nvml: dict[str, Any]) -> None:
    nvml["lost"] = {1}
    telemetry = gpus.NvmlTelemetry()
    assert telemetry.remapped_rows(0).uncorrectable == 0
    with pytest.raises(errors.GpuLost) as lost:
        telemetry.remapped_rows(1)
    assert lost.value.index == 1 and lost.value.code == pynvml.NVML_ERROR_GPU_IS_LOST


# ------------------------------------------------------------------ GPU checks held to expected GPUs


def test_nvml_down_on_an_expected_gpu_node_is_error_on_every_gpu_check(eight_gpus: str, no_dev: str) -> None:
    broken = FakeTelemetry(h100s(8), unavailable="NVML could not start: driver/library version mismatch")
    probe = nodeinfo.GpuProbe(sys_root=eight_gpus, dev_root=no_dev)
    done = execution.run_checks(GPU_CHECKS, ctx_for(broken, probe))
    assert {r.check: r.status for r in done} == dict.fromkeys(GPU_CHECKS, Status.ERROR)
    for r in done:
        assert "driver/library version mismatch" in r.summary and "should have 8 GPUs" in r.summary
        assert r.data["gpus_expected"] == 8


def test_nvml_down_where_nothing_expects_gpus_is_still_skipped(tmp_path: Path, no_dev: str) -> None:
    broken = FakeTelemetry(unavailable="NVML could not start: NVML library not found")
    probe = nodeinfo.GpuProbe(sys_root=str(tmp_path / "none"), dev_root=no_dev)
    done = execution.run_checks(GPU_CHECKS, ctx_for(broken, probe))
    assert {r.status for r in done} == {Status.SKIPPED}


def test_the_setting_alone_makes_gpus_expected(tmp_path: Path, no_dev: str) -> None:
    broken = FakeTelemetry(unavailable="NVML could not start: NVIDIA driver not loaded")
    probe = nodeinfo.GpuProbe(setting=4, sys_root=str(tmp_path / "none"), dev_root=no_dev)
    done = execution.run_checks(["remapped"], ctx_for(broken, probe))
    assert done[0].status is Status.ERROR and "AUTOPILOT_EXPECT_GPUS=4" in done[0].summary


def test_a_gpu_that_fell_off_the_bus_is_a_fatal_fail_naming_its_bus_id(eight_gpus: str, no_dev: str) -> None:
    seven = FakeTelemetry([g for i, g in enumerate(h100s(8)) if i != 5])
    probe = nodeinfo.GpuProbe(sys_root=eight_gpus, dev_root=no_dev)
    done = execution.run_checks(["remapped", "gpupower"], ctx_for(seven, probe))
    for r in done:
        assert r.status is Status.FAIL and r.fatal
        assert "7 of 8 expected GPUs" in r.summary and BUS[5] in r.summary
        assert [d.id for d in r.devices if d.status is Status.FAIL] == [BUS[5]]


def test_fewer_gpus_than_the_node_allocates_is_a_fail_without_bus_ids(tmp_path: Path, no_dev: str) -> None:
    fake = FakeCluster()
    fake.add_node("gpu-1", gpus=8)
    probe = nodeinfo.GpuProbe(sys_root=str(tmp_path / "none"), dev_root=no_dev)
    done = execution.run_checks(["remapped"], ctx_for(FakeTelemetry(h100s(6)), probe, cluster=fake))
    assert done[0].status is Status.FAIL and done[0].fatal
    assert "6 of 8 expected GPUs" in done[0].summary and "bus ids unknown" in done[0].summary


def test_a_lost_gpu_is_a_fatal_fail_for_that_gpu(eight_gpus: str, no_dev: str) -> None:
    devices = h100s(8)
    devices[3] = FakeGpu(raises=errors.GpuLost(3, "GPU 3 identity: GPU is lost"))
    probe = nodeinfo.GpuProbe(sys_root=eight_gpus, dev_root=no_dev)
    (remapped,) = execution.run_checks(["remapped"], ctx_for(FakeTelemetry(devices), probe))
    assert remapped.status is Status.FAIL and remapped.fatal
    lost = [d for d in remapped.devices if d.id == "3"]
    assert len(lost) == 1 and lost[0].status is Status.FAIL and "lost" in lost[0].detail
    # Without any expectation (no probe) the check's own reading still makes it a fatal fail.
    (alone,) = execution.run_checks(["remapped"], ctx_for(FakeTelemetry(devices), None))
    assert alone.status is Status.FAIL and alone.fatal


def test_a_check_that_meets_a_lost_gpu_answers_a_fatal_fail_for_it() -> None:
    reg = registry.CheckRegistry()

    @registry.check("probe", description="reads a PCIe link", uses_gpu=True, registry=reg)
    def probe(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
        raise errors.GpuLost(2, "GPU 2 PCIe link: GPU is lost")

    got = execution.run_check("probe", ctx_for(FakeTelemetry(h100s(4)), None), checks=reg)
    assert got.status is Status.FAIL and got.fatal
    assert [(d.id, d.status) for d in got.devices] == [("2", Status.FAIL)]


def test_the_census_is_taken_again_on_every_run(eight_gpus: str, no_dev: str) -> None:
    telemetry = FakeTelemetry(h100s(8), unavailable="NVML could not start: NVIDIA driver not loaded")
    ctx = ctx_for(telemetry, nodeinfo.GpuProbe(sys_root=eight_gpus, dev_root=no_dev))
    assert execution.run_checks(["remapped"], ctx)[0].status is Status.ERROR
    telemetry.unavailable = None  # the driver finished loading
    assert execution.run_checks(["remapped"], ctx)[0].status is Status.OK


# ------------------------------------------------------------------ acceptance: real client, this machine


def _nvml_starts() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


def test_a_worker_on_a_node_with_8_allocatable_gpus_and_no_driver_reports_error_and_warn(tmp_path: Path) -> None:
    if _nvml_starts() or shutil.which("nvidia-smi"):
        pytest.skip("this machine has a working NVIDIA driver: the acceptance is about one without")
    api = StandInApi()
    try:
        api.add_node("gpu-1", gpus=8)
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters: [{{name: standin, cluster: {{server: '{api.url}'}}}}]\n"
            "users: [{name: u, user: {token: t}}]\n"
            "contexts: [{name: c, context: {cluster: standin, user: u}}]\n"
            "current-context: c\n"
        )
        settings = config.Settings.from_env(
            {
                "NODE_NAME": "gpu-1",
                "AUTOPILOT_KUBECONFIG": str(kubeconfig),
                "AUTOPILOT_PERIODIC_CHECKS": ",".join(GPU_CHECKS),
            }
        )
        client = cluster_mod.from_settings(settings)
        assert isinstance(client, cluster_mod.KubeClusterClient)
        ctx = CheckContext.default(settings, shipped_checks())  # real NVML, real sysfs and /dev of this machine
        store = ResultsStore(fakeredis.FakeRedis())
        host = NodeHost(settings, store, {"gpu-1": dataclasses.replace(ctx, cluster=client)})
        run = Run.new(GPU_CHECKS, ["gpu-1"], {}, 600)
        store.create_run(run)
        done = tasks.run_checks(host, run_id=run.id, node="gpu-1", checks=GPU_CHECKS, params={}, deadline=run.deadline)
        assert {r.check: r.status for r in done} == dict.fromkeys(GPU_CHECKS, Status.ERROR)
        assert all("NVML could not start" in r.summary and "allocatable nvidia.com/gpu=8" in r.summary for r in done)
        assert store.state("gpu-1").verdict == "WARN"
        assert api.nodes["gpu-1"]["metadata"]["labels"]["autopilot.ibm.com/gpuhealth"] == "WARN"
        client.close()
    finally:
        api.close()


class CountingTelemetry(FakeTelemetry):
    """A ``FakeTelemetry`` that counts NVML's count and identity queries."""

    def __init__(self, devices: list[FakeGpu]) -> None:
        super().__init__(devices)
        self.counts = 0
        self.identities = 0

    def count(self) -> int:
        self.counts += 1
        return super().count()

    def identity(self, index: int) -> gpus.GpuIdentity:
        self.identities += 1
        return super().identity(index)


def test_the_census_and_the_identities_share_one_nvml_reading_per_sequence(eight_gpus: str, no_dev: str) -> None:
    telemetry = CountingTelemetry(h100s(8))
    probe = nodeinfo.GpuProbe(sys_root=eight_gpus, dev_root=no_dev)
    done = execution.run_checks(["remapped", "gpupower"], ctx_for(telemetry, probe))
    assert [r.status for r in done] == [Status.OK, Status.OK]
    assert all(d.uuid for r in done for d in r.devices)  # the identities were stamped
    # One count for the whole sequence (the checks themselves count too, once each), and one
    # identity query per GPU: the census and the identities read NVML together.
    assert telemetry.counts == 1 + len(done)
    assert telemetry.identities == 8
