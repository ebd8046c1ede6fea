"""The OpenAI-compatible /v1 against `bentoml serve`, driven by the official openai client."""

from __future__ import annotations

import openai
import pytest

QUESTION = "What does the with statement do?"
# The server is shared with test_rag_query (which expects its first question to be a miss): these
# tests ask in a cache partition of their own.
OWN = {"ragroute": {"tenant": "openai-e2e"}}


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused-without-a-key-file", timeout=180, max_retries=0)


def test_models_list_the_modes_and_the_tiers(client):
    assert [m.id for m in client.models.list()] == ["ragroute", "ragroute-cascade", "small", "large"]
    assert client.models.retrieve("large").model_extra["ragroute"]["mode"] == "fixed"


def test_a_chat_completion_answers_from_the_index_with_citations(client):
    out = client.chat.completions.create(model="ragroute", messages=[{"role": "user", "content": QUESTION}],
                                         extra_body=OWN)
    answer = out.choices[0].message.content
    report = out.model_extra["ragroute"]
    assert answer.strip() and "[1]" in answer  # citations stay in the text
    assert report["sources"][0]["doc_id"] == "pydoc:with" and not report["degraded"], report["warnings"]
    assert out.choices[0].finish_reason == "stop" and out.id == f"chatcmpl-{report['request_id']}"
    assert report["route"]["mode"] == "auto" and report["cache"]["status"] in ("miss", "hit")


def test_a_streamed_completion_arrives_in_chunks_with_the_report_last(client):
    stream = client.chat.completions.create(
        model="small", messages=[{"role": "user", "content": "What is a lambda expression?"}], stream=True,
        stream_options={"include_usage": True}, extra_body={"ragroute": {"cache": "bypass", "tenant": "openai-e2e"}})
    chunks = list(stream)
    first, final, usage = chunks[0], chunks[-2], chunks[-1]
    assert first.choices[0].delta.role == "assistant" and first.model_extra["ragroute"]["sources"]
    pieces = [c.choices[0].delta.content for c in chunks[1:-2] if c.choices[0].delta.content]
    assert len(pieces) > 3  # token by token, not one block
    report = final.model_extra["ragroute"]
    assert final.choices[0].finish_reason in ("stop", "length") and report["route"]["tier"] == "small"
    assert report["cache"]["status"] == "bypass" and not report["degraded"], report["warnings"]
    assert usage.choices == [] and usage.usage.completion_tokens == report["usage"]["tokens_out"] > 3


def test_a_follow_up_turn_is_answered_in_the_conversation_s_context(client):
    out = client.chat.completions.create(model="ragroute", messages=[
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "It wraps a block with a context manager's methods. [1]"},
        {"role": "user", "content": "Does it handle exceptions?"}], extra_body=OWN)
    report = out.model_extra["ragroute"]
    assert report["query"] == "Does the with statement handle exceptions?"  # what retrieval and the cache saw
    assert out.choices[0].message.content.strip()
    # a follow-up that names a new subject asks about it, not the previous one (issue 38), and
    # retrieval follows: its topic comes first
    out = client.chat.completions.create(model="ragroute", messages=[
        {"role": "user", "content": "What does the nonlocal statement do?"},
        {"role": "assistant", "content": "It rebinds a variable of the enclosing scope. [1]"},
        {"role": "user", "content": "And what about global?"}], extra_body=OWN)
    report = out.model_extra["ragroute"]
    assert report["query"] == "What does the global statement do?"
    assert report["sources"][0]["doc_id"] == "pydoc:global", [s["doc_id"] for s in report["sources"]]


def test_an_unknown_model_is_a_404_listing_the_valid_ones(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": QUESTION}])
    assert info.value.code == "model_not_found" and "valid: ragroute, ragroute-cascade, small, large" in str(info.value)


@pytest.mark.parametrize("messages, param", [
    ([], "messages"),
    ([{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "..."}], "messages.[1].role"),
    ([{"role": "tool", "content": "x", "tool_call_id": "1"}], "messages.[0].role"),
    ([{"role": "user", "content": "x" * 2001}], "messages.[0].content"),
])
def test_bad_messages_are_a_400_naming_the_field(client, messages, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="ragroute", messages=messages)
    assert info.value.status_code == 400 and info.value.param == param


def test_a_parameter_that_would_change_a_shared_answer_is_refused_by_name(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="ragroute", messages=[{"role": "user", "content": QUESTION}],
                                       temperature=0.9)
    assert info.value.param == "temperature" and info.value.code == "unsupported_parameter"
