"""Names that reach queues, selectors and command lines are validated first."""

from __future__ import annotations

import pytest

from autopilot import errors, names


@pytest.mark.parametrize("name", ["gpu-1", "node.example.com", "a", "sim-999"])
def test_valid_node_names(name: str) -> None:
    assert names.node_queue(name) == f"autopilot.node.{name}"


@pytest.mark.parametrize(
    "name", ["", "Node", "-a", "a-", "a;rm -rf /", "a b", "$(id)", "../etc", "a" * 254, "a\nb", "ü", "a..b", "*"]
)
def test_invalid_node_names(name: str) -> None:
    with pytest.raises(errors.BadParameter) as info:
        names.node_name(name)
    assert info.value.field == "host"


def test_selectors() -> None:
    assert names.label_selector("nvidia.com/gpu.present=true") == ("nvidia.com/gpu.present", "true")
    assert names.job_selector("default:app=train") == ("default", "app", "train")
    for bad in ("app", "a=b,c=d", "x=$(id)", "=v", "k=" + "v" * 64):
        with pytest.raises(errors.BadParameter):
            names.label_selector(bad)
    for bad in ("default", "Default:app=x", "ns:app", "ns;x:app=y"):
        with pytest.raises(errors.BadParameter) as info:
            names.job_selector(bad)
        assert info.value.field == "job"
