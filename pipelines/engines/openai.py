"""OpenAI-compatible engine: any ``/v1/chat/completions`` endpoint (a standalone vLLM server,
TGI, llama.cpp's server, a hosted API), streamed over server-sent events.

Bounded: a connect/read timeout per attempt (``RAGROUTE_<TIER>_TIMEOUT_S``) and at most
``RAGROUTE_<TIER>_RETRIES`` retries, only before the first token arrives and only for errors
worth retrying (connection failures, 408/429/5xx). Every failure becomes an UpstreamError
naming the tier, the endpoint and what it answered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator

import httpx

from common.errors import UpstreamError
from pipelines.config import TierConfig
from pipelines.engines.base import Chunk, Final, Sampling

log = logging.getLogger(__name__)

RETRYABLE = {408, 409, 429, 500, 502, 503, 504}


class OpenAIEngine:
    name = "openai"

    def __init__(self, tier: TierConfig) -> None:
        self.tier = tier.name
        self.model = tier.model
        self.url = tier.base_url.rstrip("/") + "/chat/completions"
        self.retries = tier.retries
        self.concurrency = None  # the server queues and batches
        key = tier.api_key  # RAGROUTE_<TIER>_API_KEY, else OPENAI_API_KEY (pipelines/config/generation.py)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(tier.timeout_s),
                                         limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))
        self._logprobs = True  # turned off for a server that refuses them
        log.info("openai engine for tier %s: %s model %s", tier.name, self.url, tier.model)

    def count_tokens(self, text: str) -> int:
        # No tokenizer for a remote model: ~4 characters per token, rounded up (prompt fitting only).
        return math.ceil(len(text) / 4)

    def _body(self, messages: list[dict[str, str]], sampling: Sampling) -> dict:
        body = {"model": self.model, "messages": messages, "max_tokens": sampling.max_tokens,
                "temperature": sampling.temperature, "top_p": sampling.top_p, "stream": True,
                "stream_options": {"include_usage": True}}
        if sampling.stop:
            body["stop"] = list(sampling.stop)[:4]  # OpenAI accepts at most four
        if self._logprobs:
            body["logprobs"] = True
        return body

    def _fail(self, public: str, detail: str) -> UpstreamError:
        """``public``: what the client reads; ``detail`` (with the URL): the log's."""
        return UpstreamError(f"generate[{self.tier}]", f"the remote engine {public}", f"{self.url} {detail}")

    async def stream(self, messages: list[dict[str, str]], sampling: Sampling) -> AsyncIterator[Chunk]:
        attempt = 0
        while True:
            started = False
            try:
                async with self._client.stream("POST", self.url, json=self._body(messages, sampling)) as resp:
                    if resp.status_code != 200:
                        detail = (await resp.aread()).decode(errors="replace")[:300]
                        if resp.status_code == 400 and self._logprobs and "logprob" in detail.lower():
                            self._logprobs = False
                            log.warning("tier %s: %s does not support logprobs; confidence unavailable",
                                        self.tier, self.url)
                            continue
                        if resp.status_code in RETRYABLE and attempt < self.retries:
                            raise _Retry(f"answered {resp.status_code}: {detail}")
                        raise self._fail(f"answered {resp.status_code}", f"answered {resp.status_code}: {detail}")
                    async for chunk in self._parse(resp, messages):
                        started = True
                        yield chunk
                    return
            except _Retry as exc:
                reason = str(exc)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                if started or attempt >= self.retries:
                    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "unreachable"
                    raise self._fail(kind if kind == "timed out" else "is unreachable",
                                     f"{kind} ({type(exc).__name__}: {exc})") from None
                reason = f"{type(exc).__name__}: {exc}"
            attempt += 1
            log.warning("tier %s: %s; retry %d/%d", self.tier, reason, attempt, self.retries)
            await asyncio.sleep(min(2.0, 0.2 * 2 ** (attempt - 1)))

    async def _parse(self, resp: httpx.Response, messages: list[dict[str, str]]) -> AsyncIterator[Chunk]:
        finish, usage, out_tokens, deltas = "stop", None, 0, 0
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            try:
                event = json.loads(data)
            except ValueError:
                raise self._fail("sent a malformed event", f"sent a malformed event: {data[:200]!r}") from None
            if "error" in event:
                raise self._fail("reported an error", f"reported an error: {str(event['error'])[:300]}")
            usage = event.get("usage") or usage
            for choice in event.get("choices") or []:
                finish = choice.get("finish_reason") or finish
                text = (choice.get("delta") or {}).get("content") or ""
                content = (choice.get("logprobs") or {}).get("content") or []
                lps = tuple(float(t["logprob"]) for t in content if t.get("logprob") is not None)
                out_tokens += len(content)
                deltas += bool(text)
                if text or lps:
                    yield Chunk(text=text, logprobs=lps)
        if usage:
            tokens_in, tokens_out = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        else:  # a server without usage reporting: estimate (a streamed delta is about one token)
            tokens_in = sum(self.count_tokens(m["content"]) for m in messages)
            tokens_out = out_tokens or deltas
        yield Chunk(final=Final(finish, tokens_in, tokens_out))

    async def close(self) -> None:
        await self._client.aclose()


class _Retry(Exception):
    pass
