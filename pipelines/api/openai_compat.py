"""The OpenAI Chat Completions dialect of ``rag_query``: requests in, completions and chunks out.

Plain logic, no server: ``services/openai_app.py`` mounts it under ``/v1`` on the RAG service;
the request models, their parsing and the error shape are in ``pipelines/api/openai_request.py``.

- ``model`` picks the mode: ``ragroute`` (the router picks the tier), ``ragroute-cascade``, or
  a configured tier's name (``small``, ``large``, ...).
- The last message must be the user's question. Earlier *user* turns are the conversation's
  context: a follow-up is rewritten into the standalone question it means
  (:func:`standalone_question`, by the rules of pipelines/query/followup.py: "And what about
  global?" after "What does the nonlocal statement do?" is asked as "What does the global
  statement do?", "Does it close the file?" after a question about the with statement as "Does
  the with statement close the file?"), so retrieval, routing and the cache see what is really
  asked. A follow-up no rule resolves ("Why?") is asked with the previous question as its
  context (``Regarding "<previous>": Why?``), so the same follow-up in another conversation
  never shares a cached answer. A question that stands on its own is used as it is, so it
  shares the cache with every other client. System, developer and
  assistant turns are accepted and not used (ragroute writes its own grounded prompt).
- Sampling is set per tier and answers are shared through the cache, so parameters that would
  change an answer are honoured only where they already hold (``max_tokens`` at or above
  what the longest-answering tier generates, ``temperature``/``top_p`` equal to the one all
  tiers use, ``n`` = 1) and refused with a 400 naming the parameter otherwise (the published
  OpenAPI document states the same bounds). Unknown fields are ignored.
- ragroute's own report (sources, route, cache, budget, timings, warnings) travels as the
  ``ragroute`` extension field of the completion (and of the last streamed chunk).
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import ValidationError

from pipelines.api.openai_request import ChatRequest, Message, OpenAIError
from pipelines.api.schema import MAX_QUERY_CHARS, WHITESPACE, RagRequest, RagResponse
from pipelines.config import TierConfig
from pipelines.query.followup import is_follow_up, rewrite
from pipelines.query.modes import available

AUTO = "ragroute"  # the auto mode; another mode M is "ragroute-M" (ragroute-cascade)
CREATED = int(time.time())  # "created" of the model list: when this process started


def _modes(tiers: list[str]) -> dict[str, str]:
    """OpenAI model name -> mode, for the modes these tiers can serve (pipelines/query/modes/)."""
    return {AUTO if mode == "auto" else f"{AUTO}-{mode}": mode for mode in available(tiers)}


def model_names(tiers: list[str]) -> list[str]:
    return [*_modes(tiers), *tiers]


def resolve_model(model: str, tiers: list[str]) -> str:
    """The ``tier`` of ``rag_query`` for an OpenAI ``model``; 404 listing the valid ones."""
    mode = _modes(tiers).get(model, model)
    if model not in model_names(tiers):
        raise OpenAIError(404, f"The model '{model}' does not exist; valid: {', '.join(model_names(tiers))}",
                          "model", "model_not_found")
    return mode


def standalone_question(messages: list[Message]) -> tuple[str, bool]:
    """(the question to answer, whether it was rewritten from a follow-up); 400s name the field."""
    last = messages[-1]
    if last.role != "user":
        raise OpenAIError(400, f"messages.[{len(messages) - 1}].role: the last message must be the user's question "
                               f"(got '{last.role}')", f"messages.[{len(messages) - 1}].role", "invalid_value")
    question = last.text().strip(WHITESPACE)
    param = f"messages.[{len(messages) - 1}].content"
    if not question:
        raise OpenAIError(400, f"{param}: the question is empty", param, "invalid_value")
    if len(question) > MAX_QUERY_CHARS:
        raise OpenAIError(400, f"{param}: the question is {len(question)} characters; at most {MAX_QUERY_CHARS}",
                          param, "string_too_long")
    earlier = [i for i, m in enumerate(messages[:-1]) if m.role == "user" and m.text().strip(WHITESPACE)]
    if not earlier or not is_follow_up(question):
        return question, False
    # the previous user turn, itself resolved; errors name its place in *this* conversation
    previous, _ = standalone_question(messages[: earlier[-1] + 1])
    resolved = rewrite(previous, question)
    if resolved and len(resolved) <= MAX_QUERY_CHARS:
        return resolved, True
    room = MAX_QUERY_CHARS - len(question) - len('Regarding "": ')
    if room < 20:
        return question, False
    if len(previous) > room:
        previous = previous[: room - 1].rstrip() + "…"
    return f'Regarding "{previous}": {question}', True


def to_rag_request(chat: ChatRequest, tiers: dict[str, TierConfig]) -> tuple[RagRequest, bool]:
    """The ``rag_query`` request for a chat request (and whether the question was rewritten)."""
    tier = resolve_model(chat.model, list(tiers))
    _check_sampling(chat, list(tiers.values()))
    question, rewritten = standalone_question(chat.messages)
    opts = chat.ragroute
    try:
        return RagRequest(query=question, top_k=opts.top_k, tier=tier, cache=opts.cache, tenant=opts.tenant,
                          collection=opts.collection, stream=chat.stream,
                          allow_degraded=opts.allow_degraded), rewritten
    except ValidationError as exc:  # pragma: no cover - every field was validated above
        raise OpenAIError(400, str(exc)) from None


def max_answer_tokens(tiers: list[TierConfig]) -> int:
    """The least ``max_tokens`` a request may ask for: what the longest-answering tier generates."""
    return max((t.max_tokens for t in tiers), default=1)


def _check_sampling(chat: ChatRequest, tiers: list[TierConfig]) -> None:
    def refuse(param: str, why: str) -> None:
        raise OpenAIError(400, f"{param}: {why}", param, "unsupported_parameter")

    longest = max_answer_tokens(tiers)
    for param in ("max_tokens", "max_completion_tokens"):
        value = getattr(chat, param)
        if value is not None and value < longest:
            refuse(param, f"{value} is below the answer length of the configured tiers (up to {longest} tokens); "
                          "answers are shared through the cache, so their length is set per tier "
                          "(RAGROUTE_<TIER>_MAX_TOKENS)")
    for param in ("temperature", "top_p"):
        value = getattr(chat, param)
        configured = {getattr(t, param) for t in tiers}
        if value is not None and configured != {value}:
            refuse(param, f"{value} differs from the configured tiers' {param} "
                          f"({', '.join(map(str, sorted(configured)))}); answers are shared through the cache, "
                          "so sampling is set per tier (RAGROUTE_<TIER>_" + param.upper() + ")")
    if chat.n not in (None, 1):
        refuse("n", "only one choice per request is generated")
    if chat.stop:
        refuse("stop", "stop sequences are not supported")
    if chat.tools or chat.functions:
        refuse("tools" if chat.tools else "functions", "tool calling is not supported")
    if chat.response_format and chat.response_format.get("type", "text") != "text":
        refuse("response_format", "only {'type': 'text'} is supported")
    if chat.logprobs:
        refuse("logprobs", "token log-probabilities are not returned (usage in the ragroute field has the mean)")


def _finish_reason(resp: RagResponse) -> str:
    return "length" if resp.usage.finish_reason in ("length", "deadline") else "stop"


def _extension(resp: RagResponse, rewritten_query: str | None) -> dict[str, Any]:
    ext = resp.model_dump(exclude={"answer"})
    ext["query"] = rewritten_query  # the standalone question asked, when a follow-up was rewritten
    return ext


def _usage(resp: RagResponse) -> dict[str, int]:
    return {"prompt_tokens": resp.usage.tokens_in, "completion_tokens": resp.usage.tokens_out,
            "total_tokens": resp.usage.tokens_in + resp.usage.tokens_out}


def completion(resp: RagResponse, model: str, fingerprint: str, rewritten_query: str | None = None) -> dict[str, Any]:
    """A ``chat.completion`` object for a whole answer."""
    return {"id": f"chatcmpl-{resp.request_id}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "system_fingerprint": fingerprint,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": resp.answer, "refusal": None},
                         "logprobs": None, "finish_reason": _finish_reason(resp)}],
            "usage": _usage(resp), "ragroute": _extension(resp, rewritten_query)}


class ChunkWriter:
    """The ``chat.completion.chunk`` objects of one streamed answer, in order."""

    def __init__(self, request_id: str, model: str, fingerprint: str, include_usage: bool) -> None:
        self.base = {"id": f"chatcmpl-{request_id}", "object": "chat.completion.chunk", "created": int(time.time()),
                     "model": model, "system_fingerprint": fingerprint}
        self.include_usage = include_usage
        self.started = False

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
        return {**self.base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                **extra}

    def meta(self, report: dict[str, Any]) -> list[dict[str, Any]]:
        """The first chunk: the role (as OpenAI's first chunk) and, before any token, the sources,
        route and cache verdict as the ``ragroute`` extension (a playground shows them at once)."""
        self.started = True
        return [self._chunk({"role": "assistant", "content": ""}, ragroute=report)]

    def token(self, text: str) -> list[dict[str, Any]]:
        out = [] if self.started else self.meta({})
        if text:
            out.append(self._chunk({"content": text}))
        return out

    def done(self, resp: RagResponse, rewritten_query: str | None = None) -> list[dict[str, Any]]:
        out = self.token("")
        out.append(self._chunk({}, _finish_reason(resp), ragroute=_extension(resp, rewritten_query)))
        if self.include_usage:
            out.append({**self.base, "choices": [], "usage": _usage(resp)})
        return out


def models_list(tiers: dict[str, TierConfig]) -> dict[str, Any]:
    return {"object": "list", "data": [model_card(name, tiers) for name in model_names(list(tiers))]}


def model_card(name: str, tiers: dict[str, TierConfig]) -> dict[str, Any]:
    if name not in model_names(list(tiers)):
        raise OpenAIError(404, f"The model '{name}' does not exist; valid: {', '.join(model_names(list(tiers)))}",
                          "model", "model_not_found")
    if name in tiers:
        about = {"mode": "fixed", "tier": name, "engine": tiers[name].engine, "model": tiers[name].model}
    else:
        about = {"mode": _modes(list(tiers))[name], "tiers": list(tiers)}
    return {"id": name, "object": "model", "created": CREATED, "owned_by": "ragroute", "ragroute": about}
