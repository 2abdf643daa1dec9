"""One grammar for a value wherever it is given: a setting, a check parameter or an API input."""

from __future__ import annotations

import pytest

from api import inputs
from autopilot import config, errors, parsing
from autopilot.registry import Param


@pytest.mark.parametrize(
    ("word", "meant"),
    [
        ("true", True),
        (" Yes", True),
        ("ON", True),
        ("1", True),
        ("false", False),
        ("no", False),
        ("Off ", False),
        ("0", False),
    ],
)
def test_a_boolean_means_the_same_as_a_setting_a_check_parameter_and_an_api_input(word: str, meant: bool) -> None:
    assert parsing.parse_bool(word, field="x") is meant
    assert config.Settings.from_env({"AUTOPILOT_CONFIRM_RUNS": word}).confirm_runs is meant
    assert Param("flag", bool, False, "").parse(word) is meant
    assert inputs.gpus_flag(word) is meant


@pytest.mark.parametrize("word", ["maybe", "tru", "2", "y"])
def test_a_word_that_is_not_a_boolean_is_refused_everywhere(word: str) -> None:
    with pytest.raises(errors.BadParameter):
        config.Settings.from_env({"AUTOPILOT_CONFIRM_RUNS": word})
    with pytest.raises(errors.BadParameter):
        Param("flag", bool, False, "").parse(word)
    with pytest.raises(errors.BadParameter, match="gpus"):
        inputs.gpus_flag(word)


def test_a_duration_means_the_same_as_a_setting_and_an_api_input() -> None:
    assert parsing.parse_duration("2m") == 120.0
    assert config.Settings.from_env({"AUTOPILOT_RUN_TTL": "2m"}).run_ttl_s == 120.0
    assert inputs.parse_seconds("2m", field="deadline", lo=1, hi=600) == 120.0


@pytest.mark.parametrize("text", ["a,,b", ",,,", "a,", " , a"])
def test_a_list_whose_entries_count_refuses_an_empty_one_naming_the_field(text: str) -> None:
    with pytest.raises(errors.BadParameter) as caught:
        parsing.parse_entries(text, field="nodes")
    assert caught.value.field == "nodes"


def test_a_list_whose_entries_count_strips_them_and_bounds_their_number() -> None:
    assert parsing.parse_entries(" a , b", field="x") == ("a", "b")
    with pytest.raises(errors.BadParameter, match="at most 2"):
        parsing.parse_entries("a,b,c", field="x", most=2)


@pytest.mark.parametrize("text", ["0", "-5", "65536", "99999", "+80", "8o"])
def test_parse_port_refuses_what_no_tool_can_bind(text: str) -> None:
    with pytest.raises(errors.BadParameter):
        parsing.parse_port(text, field="--port")


def test_parse_port_reads_the_range_ends() -> None:
    assert parsing.parse_port("1", field="--port") == 1
    assert parsing.check_port(65535, field="--port") == 65535
