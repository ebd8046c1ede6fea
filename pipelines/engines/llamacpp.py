"""llama.cpp engine: one request at a time per loaded model, streamed from a worker thread.

Token log-probabilities come from a logits processor (llama-cpp-python only returns them
with ``logits_all=True``, which keeps n_ctx x vocab floats: 1.2 GB for Qwen's vocabulary).
The processor sees the raw logits of step t and, at step t+1, the token sampled at t, so
it records log p(token) under the model's own distribution (before temperature). The
last token of an answer cut by the length limit is not scored.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator

import numpy as np

from pipelines import models
from pipelines.config import TierConfig
from pipelines.engines.base import Chunk, Final, Processor, Sampling

log = logging.getLogger(__name__)


class _TokenScorer:
    """Logits processor that records log p of each sampled token; returns logits unchanged."""

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.steps = 0
        self.pending: list[float] = []
        self._prev: tuple[np.ndarray, float] | None = None

    def __call__(self, input_ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        if self._prev is None:
            self.prompt_tokens = len(input_ids)
        else:
            prev, lse = self._prev
            self.pending.append(float(prev[input_ids[-1]] - lse))
        top = float(logits.max())
        self._prev = (logits.copy(), top + float(np.log(np.exp(logits - top).sum())))
        self.steps += 1
        return logits

    def take(self) -> tuple[float, ...]:
        out, self.pending = tuple(self.pending), []
        return out


class LlamaCppEngine:
    name = "llamacpp"

    def __init__(self, tier: TierConfig, threads: int, processor: Processor | None = None) -> None:
        """``processor``: shared with the other llama.cpp tiers of this process (they take turns);
        None: this engine's own."""
        from llama_cpp import Llama

        path = models.verified_path(tier.model)
        self.model = models.gguf_model(tier.model).display
        self._llm = Llama(model_path=str(path), n_ctx=tier.context_tokens, n_threads=threads,
                          n_gpu_layers=-1, verbose=False,
                          chat_format=models.gguf_model(tier.model).chat_format)
        processor = processor or Processor()
        self.concurrency = processor.slot  # one request at a time (among the tiers sharing the cores), waiting with its deadline
        self._busy = processor.busy  # held by the decoding thread, which may outlive an abandoned stream
        # Warm-up: the first completion pays one-off costs (~1 s); pay them at start-up.
        self._llm.create_chat_completion(messages=[{"role": "user", "content": "Hi"}], max_tokens=1)
        self.warmup_rates = self.measure()
        log.info("llama.cpp loaded %s for tier %s (n_ctx %d): %.0f tok/s prefill, %.1f tok/s decode",
                 path.name, tier.name, tier.context_tokens, *self.warmup_rates)

    def measure(self, prompt_tokens: int = 256, answer_tokens: int = 24) -> tuple[float, float]:
        """(prefill, decode) tokens/s on this machine, now: a counting prompt (which the model
        continues rather than ending) of ``prompt_tokens``, timed to its first token and then to
        its ``answer_tokens``-th. Its prefix differs from any chat prompt, so nothing is reused
        from the KV cache and the prefill is measured whole. Holds the model like a request."""
        numbers, n = [], 0
        while n < prompt_tokens:
            numbers.append(str(len(numbers) + 1))
            n = len(self._llm.tokenize(("Count: " + ", ".join(numbers)).encode(), add_bos=True))
        prompt = "Count: " + ", ".join(numbers)
        with self._busy:
            self._llm.reset()  # no KV-cache reuse: a second measurement would find the whole prompt cached
            return self._time(prompt, n, answer_tokens)

    def _time(self, prompt: str, n: int, answer_tokens: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        first = None
        out = 0
        for _ in self._llm.create_completion(prompt, max_tokens=answer_tokens, temperature=0.0, stream=True):
            if first is None:
                first = time.perf_counter()
            out += 1  # one chunk per token
        end = time.perf_counter()
        prefill = n / max(first - t0, 1e-6)
        decode = (out - 1) / max(end - first, 1e-6) if out > 1 else 0.0  # 0: not measured, the prior stays
        return prefill, decode

    def count_tokens(self, text: str) -> int:
        return len(self._llm.tokenize(text.encode(), add_bos=False, special=False))

    def _run(self, messages: list[dict[str, str]], sampling: Sampling, emit, stop: threading.Event) -> None:
        from llama_cpp import LogitsProcessorList

        scorer = _TokenScorer()
        finish = "stop"
        with self._busy:
            try:
                stream = self._llm.create_chat_completion(
                    messages=messages, max_tokens=sampling.max_tokens, temperature=sampling.temperature,
                    top_p=sampling.top_p, stop=list(sampling.stop) or None, stream=True, logits_processor=LogitsProcessorList([scorer]))
                for part in stream:
                    choice = part["choices"][0]
                    text = choice["delta"].get("content") or ""
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
                    if text:
                        emit(Chunk(text=text, logprobs=scorer.take()))
                    if stop.is_set():
                        finish = "cancelled"
                        stream.close()  # stops decoding now, not at the token limit
                        break
                emit(Chunk(logprobs=scorer.take(), final=Final(finish, scorer.prompt_tokens, scorer.steps)))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
                emit(exc)

    async def stream(self, messages: list[dict[str, str]], sampling: Sampling) -> AsyncIterator[Chunk]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Chunk | BaseException] = asyncio.Queue()
        stop = threading.Event()
        loop.run_in_executor(None, self._run, messages, sampling,
                             lambda item: loop.call_soon_threadsafe(queue.put_nowait, item), stop)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.final is not None:
                    return
        finally:
            # The consumer may leave early (deadline, disconnect): stop decoding at the next token.
            # The thread keeps self._busy until it has stopped, so the next request waits for it.
            stop.set()

    async def close(self) -> None:
        self._llm.close()
