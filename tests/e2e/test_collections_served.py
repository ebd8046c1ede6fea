"""Named collections through `bentoml serve`: a collection built while the service runs is
listed and answers, an unknown one is a 404 on both APIs, and answers stay in their collection."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

FACT = "The Zorblax release train ships every second Tuesday at 14:00 UTC, after the freeze review."
QUESTION = "When does the Zorblax release train ship?"


def collections(server) -> list[dict]:
    resp = httpx.post(f"{server.url}/collections", json={}, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()["collections"]


@pytest.fixture(scope="module")
def handbook(server, tmp_path_factory) -> dict:
    """Before: only the demo corpus. Then the `ragroute` CLI builds "handbook" into the
    collections folder of the running service (RAGROUTE_HOME/collections)."""
    assert [c["name"] for c in collections(server)] == ["default"]
    refused = server.post({"query": QUESTION, "collection": "handbook"})
    assert refused.status_code == 404 and "'handbook' is not a collection; valid: default" in refused.text
    docs = tmp_path_factory.mktemp("handbook-docs")
    (docs / "releases.md").write_text(f"# Release process\n\n{FACT}\n\nHotfixes skip the train.\n")
    (docs / "oncall.md").write_text("# On-call\n\nThe on-call engineer owns paging for the payments cluster.\n")
    cli = Path(sys.executable).with_name("ragroute")
    env = {"RAGROUTE_HOME": str(server.home), "PATH": str(cli.parent)}
    subprocess.run([str(cli), "index", "build", "--source", str(docs), "--collection", "handbook", "--quiet"],
                   check=True, env=env, capture_output=True, timeout=300)
    return json.loads((server.home / "collections" / "handbook" / "manifest.json").read_text())


def cacheable(body: dict) -> bool:
    """The service caches only good answers (pipelines/query/pipeline.py): not degraded, safety
    checked without problems, no unsure answer kept."""
    return (not body["degraded"] and body["safety"]["checked"] and not body["safety"]["problems"]
            and all(step["outcome"] != "kept" for step in body["route"]["path"]))


@pytest.fixture(scope="module")
def handbook_answer(server, handbook) -> dict:
    resp = server.post({"query": QUESTION, "collection": "handbook", "tenant": "collections-e2e"})
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_a_collection_built_while_serving_is_listed_and_answers(server, handbook, handbook_answer):
    listed = {c["name"]: c for c in collections(server)}
    assert set(listed) == {"default", "handbook"}
    assert listed["handbook"]["index_version"] == handbook["index_version"]
    assert listed["handbook"]["document_count"] == 2
    body = handbook_answer
    assert body["collection"] == "handbook" and body["index_version"] == handbook["index_version"]
    assert body["sources"][0]["doc_id"] == "releases.md" and not body["degraded"]
    assert {s["doc_id"] for s in body["sources"]} <= {"releases.md", "oncall.md"}


def test_the_same_question_elsewhere_is_answered_and_cached_apart(server, handbook, handbook_answer):
    body = server.post({"query": QUESTION, "tenant": "collections-e2e"}).json()
    assert body["collection"] == "default" and body["index_version"] != handbook["index_version"]
    assert all(s["doc_id"].startswith("pydoc:") for s in body["sources"])
    assert not body["cache"]["hit"]  # the handbook's answer is not served for the default collection
    again = server.post({"query": QUESTION, "collection": "handbook", "tenant": "collections-e2e"}).json()
    # the handbook's own answer comes back from the cache exactly when it was good enough to store
    assert again["cache"]["hit"] == cacheable(handbook_answer) and again["collection"] == "handbook"
    if again["cache"]["hit"]:
        assert again["answer"] == handbook_answer["answer"]


def test_bad_collection_names_are_400_and_unknown_ones_404_on_the_openai_api(server, handbook):
    bad = server.post({"query": QUESTION, "collection": "Bad Name"})
    assert bad.status_code == 400 and "collection" in bad.text
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", timeout=180, max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="ragroute", messages=[{"role": "user", "content": QUESTION}],
                                       extra_body={"ragroute": {"collection": "nope"}})
    assert info.value.param == "ragroute.collection" and "valid: default, handbook" in str(info.value)
    done = client.chat.completions.create(model="ragroute", messages=[{"role": "user", "content": QUESTION}],
                                          extra_body={"ragroute": {"collection": "handbook", "cache": "bypass"}})
    assert done.model_extra["ragroute"]["sources"][0]["doc_id"] == "releases.md"
