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


LONG_NODE = "node-" + "x" * 60 + ".rack-7.example.com"


def test_one_hash_scheme_shortens_job_names_and_label_values_and_keeps_their_earlier_spelling() -> None:
    from autopilot import devicetaints, invasive

    # The names Jobs and DeviceTaintRules already carry in clusters: the shared helper spells them alike.
    assert invasive.job_name(LONG_NODE) == "autopilot-dcgm3-node-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx-053b9361de"
    assert devicetaints.node_label_value(LONG_NODE) == "node-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx-053b9361de2a3a1d"
    assert invasive.job_name("a.b") == "autopilot-dcgm3-a-b-2e7336dc8e"
    assert invasive.job_name("gpu-1") == "autopilot-dcgm3-gpu-1"


@pytest.mark.parametrize("node", [LONG_NODE, "a" * 253, "a" + "-" * 45 + "z" + ".b" * 20, "a.b" * 30])
def test_a_shortened_name_fits_is_valid_and_tells_apart_names_that_share_their_start(node: str) -> None:
    assert names.node_name(node) == node  # the names shortened are valid node names
    label = names.shortened(node, 47, label=True)
    assert len(label) <= 47 and names.is_dns1123_label(label)
    value = names.shortened(node, 63, digest_chars=16)
    assert len(value) <= 63 and names.label_value(value, field="v") == value
    twin = node[:-1] + ("b" if node[-1] != "b" else "c")
    assert names.shortened(twin, 47, label=True) != label and names.shortened(twin, 63, digest_chars=16) != value
