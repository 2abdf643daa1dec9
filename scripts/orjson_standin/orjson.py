"""A stand-in for orjson, from the standard library, for the GPU run alone.

The GPU machine's python3 has no orjson and no package registry; ``autopilot.jsoncodec`` imports
it. ``scripts/gpu_check.py`` puts this folder on ``PYTHONPATH`` only when ``import orjson`` fails
there. It offers just what ``jsoncodec`` calls, with the same results for what it encodes
(compact UTF-8 JSON); it is never on the path of the service itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

OPT_NON_STR_KEYS = 1


class JSONEncodeError(TypeError):
    pass


class JSONDecodeError(json.JSONDecodeError):
    pass


def dumps(obj: Any, default: Callable[[Any], Any] | None = None, option: int = 0) -> bytes:
    try:
        return json.dumps(obj, default=default, separators=(",", ":"), ensure_ascii=False).encode()
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        raise JSONEncodeError(str(exc)) from exc


def loads(data: str | bytes) -> Any:
    return json.loads(data)
