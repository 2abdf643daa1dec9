"""The API's JSON provider: Flask's default behaviour, with compact answers encoded by orjson.

A 1,000-node ``/status?format=json`` is about 5,000 results; the standard library spent a quarter
of the API's CPU encoding it. Indented output (debug mode, or ``compact = False``) and sorted keys
still go through Flask's own encoder, as do the types only Flask's ``default`` knows (dates as
HTTP dates, dataclasses, decimals), which orjson is told to pass through to it. A stored result
(``jsoncodec.Preencoded``) is written as the JSON it was stored as (decoded first for Flask's
encoder).
"""

from __future__ import annotations

from typing import Any, cast

import orjson
from flask.json.provider import DefaultJSONProvider
from werkzeug.sansio.response import Response

from autopilot import jsoncodec

# Left to Flask's ``default``: orjson would write datetimes as ISO and dataclasses by itself.
_PASS_THROUGH = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
_SPLICING = jsoncodec.splicing(DefaultJSONProvider.default)


class FastJSONProvider(DefaultJSONProvider):
    """``jsonify`` through orjson when the answer is compact and unsorted, as the API sets it."""

    default = staticmethod(jsoncodec.decoding(DefaultJSONProvider.default))

    def response(self, *args: Any, **kwargs: Any) -> Response:
        pretty = (self.compact is None and self._app.debug) or self.compact is False
        if pretty or self.sort_keys:
            return super().response(*args, **kwargs)
        obj = self._prepare_response_obj(args, kwargs)
        try:
            body = orjson.dumps(obj, default=_SPLICING, option=orjson.OPT_NON_STR_KEYS | _PASS_THROUGH)
        except orjson.JSONEncodeError:  # integers past 64 bits, lone surrogates: Flask's way
            return super().response(*args, **kwargs)
        return cast(Response, cast(Any, self._app).response_class(body + b"\n", mimetype=self.mimetype))
