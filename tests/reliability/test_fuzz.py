"""Generated hostile requests (OpenAI-schema bodies with junk fields, raw malformed HTTP) against a live gateway
with a sim replica behind it: no answer >= 500, no crash. The 10,000-request run is ``foresight bench chaos fuzz``;
schemathesis drives the gateway from its own ``/openapi.json``."""

from __future__ import annotations

import pytest

from bench.chaos_fuzz import fuzz

pytestmark = pytest.mark.slow


def test_fuzz_and_schemathesis_find_no_server_error_and_no_crash() -> None:
    r = fuzz(700, all_checks=False)
    assert r["requests"] == 700
    assert r["server_errors"] == 0, r["server_error_examples"]
    assert r["crashes"] == 0
    assert r["by_status"].get("2xx", 0) > 0 and r["by_status"].get("4xx", 0) > 0  # both paths exercised
    if "skipped" in r["schemathesis"]:
        pytest.skip("schemathesis is not installed (pip install -e '.[dev]')")
    found = r["schemathesis"]["not_a_server_error"]
    assert found["returncode"] == 0 and found["generated"] and not found["failures"], found
