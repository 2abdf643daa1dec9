"""Property-based fuzzing of the API from its own ``/openapi.json`` (schemathesis).

Every operation the document describes gets a bounded number of generated requests (valid and
invalid by the schema: ``FUZZ_EXAMPLES`` each, 12 by default, so that the module stays well under
a minute in CI; raise it locally with ``AUTOPILOT_FUZZ_EXAMPLES=500``). The app runs over fakeredis
and a dispatcher that answers like workers, so generated runs complete at once. Whatever is sent:

- no answer is a 5xx;
- every 4xx carries a JSON body with an ``error`` (and a ``detail``), never HTML;
- a 400 names the ``field`` at fault.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

from tests.unit.api_helpers import make_api  # noqa: E402

FUZZ_EXAMPLES = int(os.environ.get("AUTOPILOT_FUZZ_EXAMPLES", "12"))

# Short node deadlines: a generated /status that names a silent or slow selection still ends fast.
API = make_api(deadline_s=0.2)
schema = schemathesis.openapi.from_wsgi("/openapi.json", API.app)


@schema.parametrize()
@hypothesis.settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    database=None,  # no .hypothesis directory in the checkout
    derandomize=True,  # the same examples on every CI run: a failure reproduces
    suppress_health_check=list(hypothesis.HealthCheck),
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
)
def test_no_5xx_and_every_4xx_is_a_json_error(case: Any) -> None:
    response = case.call()
    where = f"{case.method} {case.formatted_path} query={case.query!r} body={case.body!r:.200}"
    assert response.status_code < 500, f"{where} -> {response.status_code}: {response.text[:500]}"
    if 400 <= response.status_code < 500:
        content_type = {k.lower(): v for k, v in response.headers.items()}.get("content-type", [""])
        assert str(content_type[0] if isinstance(content_type, list) else content_type).startswith(
            "application/json"
        ), f"{where}: a {response.status_code} that is not JSON"
        body = response.json()
        assert isinstance(body, dict) and body.get("error") and body.get("detail"), f"{where}: {body!r}"
        if response.status_code == 400:
            # the name as sent, which may be "" (a query like "?=1" or a body key "")
            assert isinstance(body.get("field"), str), f"{where}: a 400 must name its field: {body!r}"
