"""The API's JSON provider: Flask's default behaviour, with compact answers encoded by orjson.

A 1,000-node ``/status?format=json`` is about 5,000 results; the standard library spent a quarter
of the API's CPU encoding it. Indented output (debug mode, or ``compact = False``) and sorted keys
still go through Flask's own encoder, as do the types only Flask's ``default`` knows (dates as
HTTP dates, dataclasses, decimals), which orjson is told to pass through to it. A stored result
(``jsoncodec.Preencoded``) is written as the JSON it was stored as (decoded first for Flask's
encoder).
"""

from __future__ import annotations

from typing import Any

import orjson
from flask.json.provider import DefaultJSONProvider

from autopilot import jsoncodec

# Left to Flask's ``default``: orjson would write datetimes as ISO and dataclasses by itself.
_PASS_THROUGH = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
_SPLICING = jsoncodec.splicing(DefaultJSONProvider.default)
# What Flask's ``DefaultJSONProvider.response`` passes to ``dumps`` for a compact answer.
_COMPACT = {"separators": (",", ":")}


class FastJSONProvider(DefaultJSONProvider):
    """``jsonify`` through orjson when the answer is compact and unsorted, as the API sets it."""

    default = staticmethod(jsoncodec.decoding(DefaultJSONProvider.default))

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        """Flask's ``dumps``; through orjson for what Flask's ``response`` asks of a compact answer.

        ``response`` calls ``dumps(obj, separators=(",", ":"))`` for a compact answer and
        ``indent=2`` for a pretty one. Overriding this public method (not ``response``, whose
        helpers are Flask's private ones) costs one decode and encode of the answer: about 30 ms
        for a 17 MiB answer, measured alone.
        """
        if kwargs == _COMPACT and not self.sort_keys:
            try:
                return orjson.dumps(obj, default=_SPLICING, option=orjson.OPT_NON_STR_KEYS | _PASS_THROUGH).decode()
            except orjson.JSONEncodeError:  # integers past 64 bits, lone surrogates: Flask's way
                pass
        return super().dumps(obj, **kwargs)
