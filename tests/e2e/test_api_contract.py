"""The published OpenAPI document (/docs.json) against the service: schemathesis (pinned) runs
every phase (examples, coverage, fuzzing, stateful, undeclared methods and content types) over
every operation of a real `bentoml serve` with API keys and the admin API on, and every check
(schemathesis' default: all of them):
no 5xx, responses (status, content type, headers, body) as published, schema-valid requests
accepted and schema-invalid ones refused.

Two exceptions, stated in the config below, for rules OpenAPI 3.0 cannot write:
- /v1/chat/completions: the *last* message must be the user's question, so a schema-valid
  conversation that ends with an assistant turn is refused (400 naming the field) and
  positive_data_acceptance is off for that operation only;
- every endpoint: a body over its limit (RAGROUTE_MAX_BODY_BYTES, 1 MiB; /ingest 32 MiB) is a
  413 (published) whatever it holds, unread, so 413 counts as a refusal of a valid or an invalid
  body (schemathesis' defaults leave it out)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from evals.serving import serving
from pipelines.api.access import add_key

EXAMPLES = 25  # per operation and phase
CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2XX", "401", "403", "404", "409", "413", "429"]

[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]

[[operations]]
include-path = "/v1/chat/completions"
checks.positive_data_acceptance.enabled = false

[[operations]]
include-path-regex = "^/ingest/"
checks.positive_data_acceptance.expected-statuses = ["2XX", "401", "403", "404", "409", "413", "429"]
checks.negative_data_rejection.expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415",
                                                    "422", "428", "429"]
"""


@pytest.fixture(scope="module")
def contract_server(e2e_home, model_cache):
    home = e2e_home("ragroute-contract")
    key = add_key(home / "keys.json", "fuzz", "fuzz")
    # Short generation: fuzzed questions are answered (degraded, cut at the time limit) in about
    # a second each. One bearer token serves both the query API (its key) and the admin API.
    # Admission off: in 500 ms no tier can answer, so with admission every fuzzed request that
    # says `allow_degraded: false` would rightly get its (published) 503; the contract checked
    # here is that of answering (tests/e2e/test_load_admission.py checks the 503).
    env = {"RAGROUTE_MODEL_CACHE": str(model_cache), "RAGROUTE_API_KEYS": str(home / "keys.json"),
           "RAGROUTE_ADMIN_TOKEN": key, "RAGROUTE_BUDGET_GENERATE_MS": "500", "RAGROUTE_BUDGET_TOTAL_MS": "3000",
           "RAGROUTE_ADMISSION": "off"}
    with serving(home, env) as server:
        yield server, key, home


def test_the_service_keeps_its_published_contract(contract_server):
    server, key, home = contract_server
    config = home / "schemathesis.toml"
    config.write_text(CONFIG)
    cmd = [str(Path(sys.executable).with_name("schemathesis")), "--no-color", "--config-file", str(config), "run",
           f"{server.url}/docs.json", "-n", str(EXAMPLES), "--generation-deterministic",
           "--request-timeout", "60", "-H", f"Authorization: Bearer {key}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "SCHEMATHESIS_HOOKS": ""}, cwd=home)
    report = out.stdout + out.stderr
    tested = re.search(r"Tested: (\d+)", report)
    (home / "schemathesis-report.txt").write_text(report)
    assert out.returncode == 0, report[-12000:]
    # every published operation was exercised: BentoML's infra endpoints, the five APIs (rag_query,
    # feedback, cache_purge, cache_stats, collections), /v1 (chat, feedback, two models), the page and
    # the ingestion API's five
    assert tested and int(tested.group(1)) == 19, report[-3000:]
    assert "No issues found" in report or "passed" in report, report[-3000:]
