"""Settings from the environment: defaults, upstream aliases, and errors that name the variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from autopilot import config, errors, parsing


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
        ({"AUTOPILOT_INVASIVE_DEADLINE": "0"}, "AUTOPILOT_INVASIVE_DEADLINE"),
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
    assert parsing.parse_duration(text) == seconds


def test_settings_are_frozen() -> None:
    s = config.Settings()
    with pytest.raises(AttributeError):
        s.redis_url = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    "env, var, entry",
    [
        ({"AUTOPILOT_PERIODIC_CHECKS": "pciebw,pciebww"}, "AUTOPILOT_PERIODIC_CHECKS", "pciebww"),
        ({"PERIODIC_CHECKS": "remapped, gpu-power"}, "PERIODIC_CHECKS", "gpu-power"),
        ({"AUTOPILOT_CHECK_TIMEOUTS": "dcgm=900,dcmg=60"}, "AUTOPILOT_CHECK_TIMEOUTS", "dcmg"),
        ({"AUTOPILOT_GPUMEM_THRESHOLDS": "daxpy_gbps=1300,dgemm=16"}, "AUTOPILOT_GPUMEM_THRESHOLDS", "dgemm"),
    ],
)
def test_an_unknown_check_or_map_key_stops_start_naming_variable_and_entry(
    env: dict[str, str], var: str, entry: str
) -> None:
    # before: accepted, and the misspelt check never ran / the override never applied
    with pytest.raises(errors.BadParameter) as info:
        config.Settings.from_env(env)
    assert info.value.field == var
    assert repr(entry) in info.value.reason


@pytest.mark.parametrize("value", ["0_3", "+3", "\uff13", "3.0"])
def test_integer_settings_take_canonical_digits_only(value: str) -> None:
    with pytest.raises(errors.BadParameter) as info:
        config.Settings.from_env({"AUTOPILOT_DCGM_LEVEL": value})
    assert info.value.field == "AUTOPILOT_DCGM_LEVEL"


@pytest.mark.parametrize("env", [{"AUTOPILOT_PERIODIC_INTERVAL": "\uff11h"}, {"AUTOPILOT_CHECK_TIMEOUTS": "dcgm=9_0"}])
def test_numbers_in_durations_and_maps_are_ascii(env: dict[str, str]) -> None:
    with pytest.raises(errors.BadParameter):
        config.Settings.from_env(env)


def test_known_names_in_lists_and_maps_are_kept() -> None:
    s = config.Settings.from_env(
        {
            "AUTOPILOT_CHECK_TIMEOUTS": "dcgm=900",
            "AUTOPILOT_GPUMEM_THRESHOLDS": "dgemm_tflops=16",
            "AUTOPILOT_DCGM_LEVEL": " 3 ",
        }
    )
    assert s.check_timeouts == {"dcgm": 900.0} and s.gpumem_thresholds == {"dgemm_tflops": 16.0}
    assert s.dcgm_level == 3


def test_a_process_with_an_unknown_periodic_check_exits_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from autopilot import cli

    monkeypatch.setenv("PERIODIC_CHECKS", "remapped,nosuch")
    assert cli.main(["checks"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "PERIODIC_CHECKS" in err[0] and "'nosuch'" in err[0], err


def test_checks_of_extra_modules_are_known_to_the_settings() -> None:
    # In a child: the extra module registers its checks in the process-wide registry.
    code = (
        "from autopilot import config;"
        "s = config.Settings.from_env({'AUTOPILOT_EXTRA_CHECKS': 'tests.integration.checks_for_tests',"
        " 'AUTOPILOT_PERIODIC_CHECKS': 'echo,remapped'}); print(','.join(s.periodic_checks))"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(  # noqa: S603 - argv list
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
        env={"PYTHONPATH": str(root)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "echo,remapped"


def test_the_cli_and_test_variables_are_settings_read_and_checked_like_the_others() -> None:
    env = {"AUTOPILOT_LOG_LEVEL": " info ", "AUTOPILOT_API_URL": "http://api:3333", "AUTOPILOT_EXTRA_CHECKS": ""}
    s = config.Settings.from_env(env)
    assert (s.log_level, s.api_url, s.extra_checks) == ("INFO", "http://api:3333", ())
    assert config.Settings.one(env, "log_level") == "INFO" and config.Settings.one({}, "log_level") == "WARNING"
    with pytest.raises(errors.BadParameter, match="AUTOPILOT_LOG_LEVEL"):
        config.Settings.from_env({"AUTOPILOT_LOG_LEVEL": "loud"})
    with pytest.raises(errors.BadParameter, match="AUTOPILOT_EXTRA_CHECKS"):
        config.Settings.one({"AUTOPILOT_EXTRA_CHECKS": "os; rm"}, "extra_checks")


@pytest.mark.parametrize(
    "tolerations",
    [
        '[{"key": "nvidia.com/gpu", "operator": "Exists", "value": "present"}]',  # Exists takes no value
        '[{"operator": "Equal", "value": "x"}]',  # an empty key needs Exists
        '[{"key": "nvidia.com/gpu", "effect": "NoSchedule", "tolerationSeconds": 60}]',  # seconds: NoExecute only
        '[{"key": "nvidia.com/gpu health", "operator": "Exists"}]',  # not a qualified name
        '[{"key": "k", "operator": "Equal", "value": "a:b"}]',  # not a label value
        # JSON types the server's decoder cannot read into the field (a 400 for the whole Job):
        '[{"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": "300"}]',
        '[{"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30.5}]',
        '[{"key": "k", "operator": "Equal", "value": 1, "effect": "NoSchedule"}]',
    ],
)
def test_tolerations_the_api_server_would_refuse_are_refused_at_start(tolerations: str) -> None:
    # before: accepted, and every invasive Job and consumer pod was then refused with a 422
    with pytest.raises(errors.BadParameter) as info:
        config.Settings.from_env({"AUTOPILOT_INVASIVE_TOLERATIONS": tolerations})
    assert info.value.field == "AUTOPILOT_INVASIVE_TOLERATIONS"


def test_valid_tolerations_are_kept() -> None:
    text = '[{"operator": "Exists"}, {"key": "k", "value": "v", "effect": "NoExecute", "tolerationSeconds": 30}]'
    assert len(config.Settings.from_env({"AUTOPILOT_INVASIVE_TOLERATIONS": text}).invasive_tolerations) == 2


@pytest.mark.parametrize("text, seconds", [("2m", 120.0), ("90", 90.0), ("0", 0.0)])
def test_clock_skew_warn_is_a_duration_and_0_turns_the_note_off(text: str, seconds: float) -> None:
    assert config.Settings.from_env({"AUTOPILOT_CLOCK_SKEW_WARN": text}).clock_skew_warn_s == seconds
    assert config.Settings.from_env({}).clock_skew_warn_s == 300.0


@pytest.mark.parametrize("text", ["-5", "-1m", "soon"])
def test_a_negative_or_unreadable_clock_skew_warn_is_refused_naming_it(text: str) -> None:
    with pytest.raises(errors.BadParameter) as info:
        config.Settings.from_env({"AUTOPILOT_CLOCK_SKEW_WARN": text})
    assert info.value.field == "AUTOPILOT_CLOCK_SKEW_WARN"
