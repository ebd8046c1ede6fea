"""POST /feedback and /v1/feedback over HTTP against `bentoml serve` (the shared server): a
verdict is taken once, only from the answer's tenant, and bad input is a 400 naming the field.
What a verdict changes in the cache: tests/integration/test_feedback_redis.py."""

from __future__ import annotations

import re

import httpx
import pytest


def feedback(server, body: dict, path: str = "/feedback") -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=30)


@pytest.fixture(scope="module")
def answered(server) -> dict:
    # bypass: a fresh answer, not cached (a "bad" verdict then changes nothing other tests read)
    resp = server.post({"query": "What does the pass statement do?", "cache": "bypass", "tenant": "fb"})
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_a_verdict_is_taken_once(server, answered):
    resp = feedback(server, {"request_id": answered["request_id"], "verdict": "bad", "tenant": "fb"})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"request_id": answered["request_id"], "verdict": "bad", "answer": "fresh",
                           "effect": "kept as a label for the router's calibration"}
    again = feedback(server, {"request_id": answered["request_id"], "verdict": "good", "tenant": "fb"})
    assert again.status_code == 409 and "already rated 'bad'" in again.json()["error"]
    metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    counted = re.search(r'^ragroute_feedback_total\{answer="fresh",verdict="bad"\} (\S+)$', metrics, re.M)
    assert counted and float(counted.group(1)) == 1.0, "the verdict taken is counted, the 409 is not"


def test_another_tenant_cannot_rate_an_answer(server):
    resp = server.post({"query": "What does the pass statement do?", "cache": "bypass", "tenant": "fb2"})
    rid = resp.json()["request_id"]
    for tenant in ("default", "FB2"):
        other = feedback(server, {"request_id": rid, "verdict": "bad", "tenant": tenant})
        assert other.status_code == 404 and other.json()["field"] == "request_id", other.text
    assert feedback(server, {"request_id": rid, "verdict": "good", "tenant": "fb2"}).status_code == 200


@pytest.mark.parametrize("body,field", [
    ({"request_id": "nope", "verdict": "good"}, "request_id"),
    ({"request_id": "0123456789ab", "verdict": "great"}, "verdict"),
    ({"request_id": "0123456789ab", "verdict": "good", "note": "x"}, "note"),
    ({"verdict": "good"}, "request_id"),
])
def test_bad_input_is_a_400_naming_the_field(server, body, field):
    resp = feedback(server, body)
    assert resp.status_code == 400, resp.text
    assert [d["loc"][0] for d in resp.json()["detail"]] == [field]


def test_v1_answers_are_rated_by_their_id(server):
    chat = httpx.post(f"{server.url}/v1/chat/completions", timeout=120, json={
        "model": "ragroute", "messages": [{"role": "user", "content": "What does the pass statement do?"}],
        "ragroute": {"cache": "bypass", "tenant": "fb3"}})
    assert chat.status_code == 200, chat.text
    cid = chat.json()["id"]
    resp = feedback(server, {"id": cid, "verdict": "good", "ragroute": {"tenant": "fb3"}}, "/v1/feedback")
    assert resp.status_code == 200, resp.text
    assert resp.json()["id"] == cid and resp.json()["object"] == "feedback" and resp.json()["answer"] == "fresh"
    unknown = feedback(server, {"id": "chatcmpl-0123456789ab", "verdict": "good"}, "/v1/feedback")
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "request_id"
    invalid = feedback(server, {"id": cid, "verdict": "so-so"}, "/v1/feedback")
    assert invalid.status_code == 400 and invalid.json()["error"]["param"] == "verdict"
