"""Parameter validation shared by the CLI, the API and the tasks."""

from __future__ import annotations

import pytest

from autopilot import errors, registry


@pytest.mark.parametrize(
    "kind, raw, expected",
    [(int, "3", 3), (float, "4.5", 4.5), (bool, "yes", True), (bool, "0", False), (str, "abc", "abc")],
)
def test_param_parses(kind: type, raw: str, expected: object) -> None:
    assert registry.Param("x", kind, None, "").parse(raw) == expected


@pytest.mark.parametrize(
    "param, raw, words",
    [
        (registry.Param("r", int, 1, "", minimum=1, maximum=4), "9", "r: must be <= 4"),
        (registry.Param("r", int, 1, "", minimum=1, maximum=4), "-1", "r: must be >= 1"),
        (registry.Param("r", int, 1, ""), "1;rm -rf /", "r: expected int"),
        (registry.Param("t", float, 1.0, ""), "nan", "t: expected float"),
        (registry.Param("b", bool, False, ""), "maybe", "b: expected bool"),
        (registry.Param("w", str, "a", "", choices=("a", "b")), "c", "w: must be one of a, b"),
    ],
)
def test_param_rejects(param: registry.Param, raw: str, words: str) -> None:
    with pytest.raises(errors.BadParameter) as info:
        param.parse(raw)
    assert str(info.value).startswith(words)
    assert info.value.field == param.name


def test_unknown_parameter_is_named() -> None:
    spec = registry.CheckSpec("c", lambda ctx, p: None, "d", params=(registry.Param("r", int, 1, ""),))  # type: ignore[arg-type,return-value]
    with pytest.raises(errors.BadParameter) as info:
        spec.validate({"bogus": "1"})
    assert info.value.field == "bogus"
    assert spec.validate({}) == {"r": 1}
