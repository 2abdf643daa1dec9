"""Settings from the environment: defaults, upstream aliases, and errors that name the variable."""

from __future__ import annotations

import pytest

from autopilot import config, errors


def test_defaults() -> None:
    s = config.Settings.from_env({"NODE_NAME": "gpu-1"})
    assert s.node_name == "gpu-1"
    assert s.periodic_checks == ("pciebw", "remapped", "dcgm", "ping", "gpupower")
    assert s.periodic_interval_s == 3600 and s.invasive_interval_s == 4 * 3600
    assert s.dcgm_fatal_errors == ("PCIe", "NVLink", "ECC", "GPU Memory")
    assert s.stale_after_s == 3 * 3600


def test_upstream_aliases_and_lists() -> None:
    s = config.Settings.from_env(
        {
            "PERIODIC_CHECKS": "ping,iperf, remapped",
            "DCGM_FATAL_ERRORS": "PCIe, GPU Memory",
            "PVC_TEST_STORAGE_CLASS": "fast",
            "INVASIVE_JOB_TTLSEC": "60",
            "AUTOPILOT_PERIODIC_INTERVAL": "30m",
            "AUTOPILOT_INVASIVE_INTERVAL": "0",
            "AUTOPILOT_CHECK_TIMEOUTS": "dcgm=900, pciebw=120",
        }
    )
    # a list with iperf stays a list (upstream's strings.Trim mangled "ping,iperf" into "ng")
    assert s.periodic_checks == ("ping", "iperf", "remapped")
    assert s.dcgm_fatal_errors == ("PCIe", "GPU Memory")
    assert s.pvc_storage_class == "fast"
    assert s.invasive_job_ttl_s == 60
    assert s.periodic_interval_s == 1800
    assert s.invasive_interval_s == 0  # disabled, not a crash
    assert s.check_timeouts == {"dcgm": 900.0, "pciebw": 120.0}


def test_gpu_cv_threshold_defaults_to_5_percent_and_is_read_from_the_environment() -> None:
    assert config.Settings.from_env({}).gpu_cv_threshold_pct == 5.0
    assert config.Settings.from_env({"AUTOPILOT_GPU_CV_THRESHOLD_PCT": "2.5"}).gpu_cv_threshold_pct == 2.5


def test_primary_name_wins_over_alias() -> None:
    s = config.Settings.from_env({"AUTOPILOT_PERIODIC_CHECKS": "remapped", "PERIODIC_CHECKS": "ping"})
    assert s.periodic_checks == ("remapped",)


@pytest.mark.parametrize(
    "env, field",
    [
        ({"AUTOPILOT_PERIODIC_INTERVAL": "soon"}, "AUTOPILOT_PERIODIC_INTERVAL"),
        ({"AUTOPILOT_DCGM_LEVEL": "9"}, "AUTOPILOT_DCGM_LEVEL"),
        ({"AUTOPILOT_API_PORT": "http"}, "AUTOPILOT_API_PORT"),
        ({"AUTOPILOT_PCIEBW_THRESHOLD_GBPS": "-1"}, "AUTOPILOT_PCIEBW_THRESHOLD_GBPS"),
        ({"AUTOPILOT_GPU_CV_THRESHOLD_PCT": "-5"}, "AUTOPILOT_GPU_CV_THRESHOLD_PCT"),
        ({"AUTOPILOT_CHECK_TIMEOUTS": "dcgm"}, "AUTOPILOT_CHECK_TIMEOUTS"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], field: str) -> None:
    with pytest.raises(errors.BadParameter) as info:
        config.Settings.from_env(env)
    assert info.value.field.startswith(field)


@pytest.mark.parametrize(
    "text, seconds", [("1h", 3600), ("30m", 1800), ("15s", 15), ("250ms", 0.25), ("90", 90), ("0", 0)]
)
def test_durations(text: str, seconds: float) -> None:
    assert config.parse_duration(text) == seconds


def test_settings_are_frozen() -> None:
    s = config.Settings()
    with pytest.raises(AttributeError):
        s.redis_url = "x"  # type: ignore[misc]
