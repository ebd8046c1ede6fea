"""The OpenAI dialect: request validation, models, follow-ups, sampling refusals, completions and
chunks; and the /v1 app over a real QueryPipeline with fake stages."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from common.errors import INTERNAL
from starlette.testclient import TestClient

from pipelines.api.access import FrontDoor, Gate
from pipelines.api.openai_compat import is_follow_up, resolve_model, standalone_question, to_rag_request
from pipelines.api.openai_request import Message, OpenAIError, parse_request
from pipelines.config import CacheConfig, RagConfig, TierConfig
from pipelines.query.cache import InMemoryCache, SemanticCache
from pipelines.query.pipeline import QueryPipeline
from services.openai_app import make_app
from tests.fakes import FakeStages, unit

TIERS = {"small": TierConfig(name="small", engine="llamacpp", model="smol", context_tokens=2048, max_tokens=96),
         "large": TierConfig(name="large", engine="llamacpp", model="qwen", context_tokens=2048, max_tokens=128)}
Q1 = "What does the with statement do?"


def body(*turns: tuple[str, object], **extra) -> dict:
    return {"model": "ragroute", "messages": [{"role": r, "content": c} for r, c in turns], **extra}


def refused(fn, *args) -> OpenAIError:
    with pytest.raises(OpenAIError) as info:
        fn(*args)
    return info.value


@pytest.mark.parametrize("payload, param", [
    ({"model": "ragroute"}, "messages"),
    (body(), "messages"),
    (body(("tool", "hi")), "messages.[0].role"),
    (body(("user", 5)), "messages.[0].content"),
    (body(("user", [{"type": "image_url", "image_url": {"url": "x"}}])), "messages.[0].content"),
    (body(("user", "x" * 40_000)), "messages.[0].content"),
    (body(("user", "   ")), "messages.[0].content"),
    ({"model": "ragroute", "messages": [{"role": "user"}]}, "messages.[0].content"),
    (body(("user", [])), "messages.[0].content"),
    (body(("user", "q"), temperature="hot"), "temperature"),
    (body(("user", "q"), max_tokens=0), "max_tokens"),
    (body(("user", "q"), ragroute={"tenant": "../other"}), "ragroute.tenant"),
    (body(("user", "q"), ragroute={"unknown": 1}), "ragroute.unknown"),
    ({"messages": [{"role": "user", "content": "q"}]}, "model"),
])
def test_malformed_requests_are_400s_naming_the_parameter(payload, param):
    err = refused(parse_request, payload)
    assert err.status == 400 and err.param == param and err.message.startswith(param)
    assert set(err.body()["error"]) == {"message", "type", "param", "code"}
    assert err.body()["error"]["type"] == "invalid_request_error"


def test_unknown_fields_are_ignored_and_text_parts_are_joined():
    chat = parse_request(body(("user", [{"type": "text", "text": "What does "}, {"type": "text", "text": "with do?"}]),
                              frequency_penalty=0.5, metadata={"a": "b"}))
    assert chat.messages[0].text() == "What does with do?"


@pytest.mark.parametrize("turns, param", [
    ([("user", Q1), ("assistant", "It wraps a block.")], "messages.[1].role"),
    ([("system", "be brief")], "messages.[0].role"),
    ([("user", "x" * 2001)], "messages.[0].content"),
])
def test_the_last_message_must_be_a_usable_question(turns, param):
    err = refused(standalone_question, [Message(role=r, content=c) for r, c in turns])
    assert err.status == 400 and err.param == param


def test_models_map_to_modes_and_unknown_models_are_a_404_listing_the_valid_ones():
    assert [resolve_model(m, list(TIERS)) for m in ("ragroute", "ragroute-cascade", "small", "large")] == [
        "auto", "cascade", "small", "large"]
    err = refused(resolve_model, "gpt-4o", list(TIERS))
    assert err.status == 404 and err.code == "model_not_found" and err.param == "model"
    assert "ragroute, ragroute-cascade, small, large" in err.message
    assert refused(resolve_model, "ragroute-cascade", ["small"]).status == 404  # one tier: no cascade


@pytest.mark.parametrize("question, follow_up", [
    ("Does it close the file?", True), ("And for loops?", True), ("What about sets?", True), ("Why?", True),
    ("How are those evaluated?", True), ("How do I raise an exception?", False), (Q1, False),
    ("What is the difference between a list and a tuple?", False),
])
def test_follow_up_heuristic(question, follow_up):
    assert is_follow_up(question) is follow_up


def test_a_follow_up_is_asked_as_the_standalone_question_it_means_and_a_standalone_one_as_it_is():
    msgs = [Message(role="system", content="ignored"), Message(role="user", content=Q1),
            Message(role="assistant", content="It wraps a block."), Message(role="user", content="Does it close files?")]
    assert standalone_question(msgs) == ("Does the with statement close files?", True)
    msgs[-1] = Message(role="user", content="And what about global?")
    assert standalone_question(msgs) == ("What does the global statement do?", True)
    msgs[-1] = Message(role="user", content="Why?")  # no rule resolves it: asked in its context
    assert standalone_question(msgs) == (f'Regarding "{Q1}": Why?', True)
    msgs[-1] = Message(role="user", content="How do I raise an exception?")
    assert standalone_question(msgs) == ("How do I raise an exception?", False)
    # chained follow-ups keep the original topic, and the rewrite stays within the query limit
    chain = [Message(role="user", content="x" * 1990 + " lists?"), Message(role="user", content="And it?"),
             Message(role="user", content="Why?")]
    question, rewritten = standalone_question(chain)
    assert rewritten and question.endswith(": Why?") and len(question) <= 2000 and "xxx" in question


@pytest.mark.parametrize("extra, param", [
    ({"max_tokens": 50}, "max_tokens"), ({"max_completion_tokens": 100}, "max_completion_tokens"),
    ({"temperature": 0.7}, "temperature"), ({"top_p": 0.5}, "top_p"), ({"n": 2}, "n"), ({"stop": ["\n"]}, "stop"),
    ({"tools": [{"type": "function"}]}, "tools"), ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"logprobs": True}, "logprobs"),
])
def test_parameters_that_would_change_a_shared_answer_are_refused_by_name(extra, param):
    err = refused(to_rag_request, parse_request(body(("user", Q1), **extra)), TIERS)
    assert err.status == 400 and err.param == param and err.code == "unsupported_parameter"


def test_parameters_that_already_hold_are_honoured():
    # max_tokens at or above what the tier generates, the tiers' own temperature and top_p, n=1
    chat = parse_request(body(("user", Q1), max_tokens=128, temperature=0, top_p=1, n=1, stop=[],
                              response_format={"type": "text"}, user="u-1", model="small"))
    req, rewritten = to_rag_request(chat, TIERS)
    assert (req.query, req.tier, rewritten) == (Q1, "small", False)
    # the bound is the longest-answering tier's (large: 128), whichever model is asked
    for model in ("small", "ragroute"):
        err = refused(to_rag_request, parse_request(body(("user", Q1), max_tokens=100, model=model)), TIERS)
        assert err.param == "max_tokens" and "up to 128 tokens" in err.message


# -- the /v1 app over a real pipeline ---------------------------------------------------------------

class Observed(list):
    """RagMetrics' interface, recording."""

    def __init__(self):
        super().__init__()
        self.tenants: list[tuple[str, int]] = []
        self.refused: list[int] = []

    def observe(self, resp):
        self.append(resp)

    def usage(self, tenant, tokens, resp=None):
        self.tenants.append((tenant, tokens))

    def denied(self, status):
        self.refused.append(status)


@pytest.fixture
def app():
    cfg = RagConfig(candidates=6, default_tier="small", cache=CacheConfig(threshold=0.95))
    stages = FakeStages()
    pipeline = QueryPipeline(stages, SemanticCache(InMemoryCache(cfg.cache), 0.95, None), cfg, "fp1",
                             tiers=list(TIERS), tier_configs=TIERS)
    metrics = Observed()
    rag = SimpleNamespace(pipeline=pipeline, metrics=metrics, stages=stages, front=FrontDoor(Gate(None), metrics))
    return rag, TestClient(make_app(lambda: rag))


def test_models_list_the_modes_and_tiers(app):
    _, client = app
    data = client.get("/models").json()
    assert [m["id"] for m in data["data"]] == ["ragroute", "ragroute-cascade", "small", "large"]
    assert data["object"] == "list" and all(m["object"] == "model" for m in data["data"])
    assert client.get("/models/large").json()["ragroute"] == {"mode": "fixed", "tier": "large",
                                                                "engine": "llamacpp", "model": "qwen"}
    missing = client.get("/models/gpt-4o")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_a_completion_carries_the_answer_usage_and_the_ragroute_report(app):
    rag, client = app
    resp = client.post("/chat/completions", json=body(("user", Q1)))
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["object"] == "chat.completion" and out["id"] == f"chatcmpl-{resp.headers['x-request-id']}"
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "the text of the chunk [1]", "refusal": None}
    assert out["choices"][0]["finish_reason"] == "stop" and out["system_fingerprint"] == "fp1"
    assert out["usage"] == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}
    ext = out["ragroute"]
    assert ext["route"]["tier"] == "large" and len(ext["sources"]) == 4 and ext["cache"]["status"] == "miss"
    assert "answer" not in ext and ext["query"] is None and len(rag.metrics) == 1
    again = client.post("/chat/completions", json=body(("user", Q1))).json()
    assert again["ragroute"]["cache"]["kind"] == "exact" and again["choices"][0]["message"]["content"] == \
        out["choices"][0]["message"]["content"]


def test_a_follow_up_is_cached_under_its_conversation_not_its_words(app):
    rag, client = app
    asked = {"What does the with statement do?": "Is the with statement fast?",
             "How do for loops work?": "Is for loops fast?"}
    for i, (previous, standalone) in enumerate(asked.items()):
        rag.stages.vectors[standalone] = unit([0, 0, 1] if i else [0, 1, 1])
        out = client.post("/chat/completions", json=body(("user", previous), ("assistant", "..."),
                                                         ("user", "Is it fast?"))).json()
        assert out["ragroute"]["query"] == standalone
        assert out["ragroute"]["cache"]["hit"] is False  # the other conversation's answer is not reused
    assert rag.stages.embedded[-2:] == list(asked.values())


def sse_events(text: str) -> list:
    lines = [line[len("data: "):] for line in text.split("\n\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_a_stream_sends_the_report_first_then_tokens_then_the_finish_and_usage(app):
    _, client = app
    resp = client.post("/chat/completions", json=body(("user", Q1), stream=True,
                                                      stream_options={"include_usage": True}))
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    chunks = sse_events(resp.text)
    first, *middle, final, usage = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [s["doc_id"] for s in first["ragroute"]["sources"]] and first["ragroute"]["cache"]["status"] == "miss"
    assert len(middle) > 1 and "".join(c["choices"][0]["delta"]["content"] for c in middle) == \
        "the text of the chunk [1]"
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == first["id"] for c in chunks)
    assert final["choices"][0]["finish_reason"] == "stop" and final["ragroute"]["usage"]["tokens_out"] == 6
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 6


def test_a_generation_failing_mid_stream_ends_the_stream_degraded_and_says_why(app):
    rag, client = app
    rag.stages.stream_fail_after = 2
    chunks = sse_events(client.post("/chat/completions", json=body(("user", Q1), stream=True)).text)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "the text"
    final = chunks[-1]["ragroute"]
    assert final["degraded"] and "injected failure mid-stream" in " ".join(final["warnings"])


def test_an_error_after_the_status_is_sent_ends_the_stream_with_an_error_event(app):
    rag, client = app

    async def broken(req, request_id, meter=None):
        yield {"event": "meta", "request_id": request_id, "route": {}, "sources": [], "cache": {}}
        yield {"event": "token", "text": "partial"}
        raise RuntimeError("the pipeline broke")

    rag.pipeline.stream = broken
    resp = client.post("/chat/completions", json=body(("user", Q1), stream=True))
    lines = [line[6:] for line in resp.text.split("\n\n") if line.startswith("data: ")]
    assert resp.status_code == 200 and "[DONE]" not in lines
    error = json.loads(lines[-1])["error"]
    assert error["message"] == INTERNAL and error["type"] == "server_error"  # the RuntimeError's text is the log's
    assert json.loads(lines[1])["choices"][0]["delta"]["content"] == "partial"


def test_bad_requests_get_the_openai_error_shape(app):
    _, client = app
    bad_json = client.post("/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and bad_json.json()["error"]["code"] == "invalid_json"
    unknown = client.post("/chat/completions", json=body(("user", Q1), model="gpt-4o"))
    assert unknown.status_code == 404 and "valid: ragroute" in unknown.json()["error"]["message"]
    nowhere = client.get("/completions")
    assert nowhere.status_code == 404 and nowhere.json()["error"]["code"] == "unknown_url"
    wrong_method = client.get("/chat/completions")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == "method_not_allowed"


# -- with an API key file ---------------------------------------------------------------------------

@pytest.fixture
def keyed(app, tmp_path):
    from pipelines.api.access import add_key, load_keys

    rag, client = app
    path = tmp_path / "keys.json"
    keys = {"acme": add_key(path, "acme", "acme", rate="2/minute"), "globex": add_key(path, "globex", "globex")}
    rag.front = FrontDoor(Gate(load_keys(path)), rag.metrics)
    return rag, client, keys


def test_with_keys_a_missing_or_wrong_key_is_a_401_in_the_openai_shape(keyed):
    rag, client, _ = keyed
    for headers in ({}, {"Authorization": "Bearer rr-nope"}):
        for resp in (client.post("/chat/completions", json=body(("user", Q1)), headers=headers),
                     client.get("/models", headers=headers)):
            assert resp.status_code == 401 and resp.headers["www-authenticate"] == "Bearer"
            assert resp.json()["error"]["code"] == "invalid_api_key" and resp.json()["error"]["type"] == \
                "authentication_error"
    assert rag.metrics.refused == [401] * 4 and rag.metrics == []


def test_with_keys_the_tenant_is_the_key_s(keyed):
    rag, client, keys = keyed
    auth = {"acme": {"Authorization": f"Bearer {keys['acme']}"}, "globex": {"Authorization": f"Bearer {keys['globex']}"}}
    other = client.post("/chat/completions", json=body(("user", Q1), ragroute={"tenant": "globex"}), headers=auth["acme"])
    assert other.status_code == 403 and other.json()["error"]["param"] == "ragroute.tenant"
    first = client.post("/chat/completions", json=body(("user", Q1)), headers=auth["acme"]).json()
    assert first["ragroute"]["cache"]["status"] == "miss"
    # the same question from the other tenant's key is not served acme's cached answer
    second = client.post("/chat/completions", json=body(("user", Q1)), headers=auth["globex"]).json()
    assert second["ragroute"]["cache"]["status"] == "miss"
    assert rag.metrics.tenants == [("acme", 13), ("globex", 13)]


def test_with_keys_over_the_rate_is_a_429_with_retry_after(keyed):
    rag, client, keys = keyed
    auth = {"Authorization": f"Bearer {keys['acme']}"}
    codes = [client.post("/chat/completions", json=body(("user", Q1)), headers=auth).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    refused = client.post("/chat/completions", json=body(("user", Q1)), headers=auth)
    assert refused.json()["error"]["code"] == "rate_limit_exceeded" and 1 <= int(refused.headers["retry-after"]) <= 60
    assert rag.metrics.refused == [429, 429]
