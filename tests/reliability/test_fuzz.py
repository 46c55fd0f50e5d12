"""Generated hostile requests (OpenAI-schema bodies with junk fields, raw malformed HTTP) against a live gateway
with a sim replica behind it: no answer >= 500, no crash. The 10,000-request run is ``foresight bench chaos fuzz``;
schemathesis drives the gateway from its own ``/openapi.json``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.chaos_fuzz import fuzz, fuzz_cluster

pytestmark = pytest.mark.slow


def test_fuzz_and_schemathesis_find_no_server_error_and_no_crash() -> None:
    cl = fuzz_cluster()
    try:
        r = fuzz(700, cluster=cl)
        assert r["requests"] == 700
        assert r["server_errors"] == 0, r["server_error_examples"]
        assert r["crashes"] == 0
        assert r["by_status"].get("2xx", 0) > 0 and r["by_status"].get("4xx", 0) > 0  # both paths exercised
        st = Path(sys.executable).with_name("schemathesis")
        if not st.exists():
            pytest.skip("schemathesis is not installed (pip install -e '.[dev]')")
        done = subprocess.run([str(st), "run", cl.gateways[0].url + "/openapi.json", "--checks",
                               "not_a_server_error", "-n", "20", "--seed", "7"], capture_output=True, text=True,
                              timeout=240)
    finally:
        cl.close()
    assert done.returncode == 0, done.stdout[-4000:]
    assert "Tested: 6" in done.stdout
