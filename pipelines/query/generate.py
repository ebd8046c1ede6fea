"""Generate stage: tier -> engine + model.

Engines satisfy :class:`Engine`; ``ENGINES`` maps config names to classes (the vLLM and
OpenAI-compatible engines of a later issue register there). :class:`Generator` holds one
engine per tier and turns (tier, question, sources) into a :class:`Generation`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pipelines import models
from pipelines.config import GenerationConfig, TierConfig
from pipelines.errors import BadRequest, ConfigError, StageError
from pipelines.query.prompt import build_messages
from pipelines.records import Generation, ScoredChunk

log = logging.getLogger(__name__)

MIN_ANSWER_TOKENS = 8
SAFETY_MARGIN_S = 0.2


@dataclass(frozen=True)
class EngineOutput:
    text: str
    finish_reason: str
    tokens_in: int
    tokens_out: int


class Engine(Protocol):
    name: str
    model: str
    lock: threading.Lock  # held for one generation: an engine that batches requests may use a no-op lock

    def count_tokens(self, text: str) -> int: ...

    def chat(self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float) -> EngineOutput: ...


class LlamaCppEngine:
    """llama.cpp on CPU (or GPU when llama-cpp-python was built with CUDA); loads a verified GGUF."""

    name = "llamacpp"

    def __init__(self, tier: TierConfig, threads: int) -> None:
        from llama_cpp import Llama

        path = models.verified_path(tier.model)
        self.model = models.gguf_model(tier.model).display
        self._llm = Llama(model_path=str(path), n_ctx=tier.context_tokens, n_threads=threads,
                          n_gpu_layers=-1, verbose=False)
        self.lock = threading.Lock()  # a Llama context serves one request at a time; Generator holds it
        # Warm-up: the first completion pays one-off costs (~1 s); pay them at start-up.
        self._llm.create_chat_completion(messages=[{"role": "user", "content": "Hi"}], max_tokens=1)
        log.info("llama.cpp loaded %s for tier %s (n_ctx %d)", path.name, tier.name, tier.context_tokens)

    def count_tokens(self, text: str) -> int:
        return len(self._llm.tokenize(text.encode(), add_bos=False, special=False))

    def chat(self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float) -> EngineOutput:
        out = self._llm.create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=temperature)
        choice = out["choices"][0]
        return EngineOutput(
            text=(choice["message"]["content"] or "").strip(),
            finish_reason=choice.get("finish_reason") or "stop",
            tokens_in=out["usage"]["prompt_tokens"],
            tokens_out=out["usage"]["completion_tokens"],
        )


ENGINES: dict[str, type] = {"llamacpp": LlamaCppEngine}


def check_config(cfg: GenerationConfig) -> None:
    """Fail at start-up, naming the key, for an unknown engine or model."""
    for tier in cfg.tiers.values():
        key = f"RAGROUTE_{tier.name.upper()}"
        if tier.engine not in ENGINES:
            raise ConfigError(f"{key}_ENGINE={tier.engine!r} is not a known engine; valid: {', '.join(sorted(ENGINES))}")
        if tier.model not in models.GGUF_MODELS:
            raise ConfigError(f"{key}_MODEL={tier.model!r} is not a known model; valid: {', '.join(models.GGUF_MODELS)}")
        if tier.max_tokens >= tier.context_tokens // 2:
            raise ConfigError(f"{key}_MAX_TOKENS ({tier.max_tokens}) must be < half of {key}_CONTEXT_TOKENS ({tier.context_tokens})")


class Generator:
    def __init__(self, cfg: GenerationConfig, engines: dict[str, Engine] | None = None) -> None:
        check_config(cfg)
        self.cfg = cfg
        self.engines = engines or {
            name: ENGINES[tier.engine](tier, cfg.threads) for name, tier in cfg.tiers.items()
        }

    def token_limit(self, tier: TierConfig, prompt_tokens: int, budget_ms: float | None) -> int:
        """The answer length that fits the time budget: (budget - prefill - margin) x decode rate."""
        if budget_ms is None:
            return tier.max_tokens
        seconds = budget_ms / 1000 - prompt_tokens / tier.prefill_tok_s - SAFETY_MARGIN_S
        return min(tier.max_tokens, int(seconds * tier.decode_tok_s))

    def generate(self, tier: str, question: str, sources: Sequence[ScoredChunk],
                 budget_ms: float | None = None, received_at: float | None = None) -> Generation:
        """Answer within ``budget_ms`` counted from ``received_at`` (time.monotonic(); default now).

        Waiting for a busy engine counts against the budget: a request whose time runs out
        in the queue is dropped without generating (its caller has already given up), and the
        token limit is computed from the time left once the engine is free.
        """
        if tier not in self.engines:
            raise BadRequest("tier", f"{tier!r} is not a configured tier; valid: {', '.join(self.engines)}")
        engine, tier_cfg = self.engines[tier], self.cfg.tiers[tier]
        deadline = None if budget_ms is None else (received_at or time.monotonic()) + budget_ms / 1000
        messages = build_messages(
            question, sources,
            prompt_tokens=tier_cfg.context_tokens - tier_cfg.max_tokens,
            count_tokens=engine.count_tokens,
        )
        prompt_tokens = sum(engine.count_tokens(m["content"]) for m in messages)
        if not engine.lock.acquire(timeout=-1 if deadline is None else max(0.0, deadline - time.monotonic())):
            raise StageError(f"generate[{tier}]", f"the engine stayed busy for the whole {budget_ms:.0f} ms budget")
        try:
            left_ms = None if deadline is None else (deadline - time.monotonic()) * 1000
            max_tokens = self.token_limit(tier_cfg, prompt_tokens, left_ms)
            if max_tokens < MIN_ANSWER_TOKENS:
                # Refuse at once: the caller falls back (another tier, an extractive answer).
                raise StageError(f"generate[{tier}]", f"{left_ms:.0f} ms left is not enough for a {prompt_tokens}-"
                                 f"token prompt and an answer at ~{tier_cfg.prefill_tok_s:.0f}/"
                                 f"{tier_cfg.decode_tok_s:.0f} tok/s")
            started = time.perf_counter()
            out = engine.chat(messages, max_tokens=max_tokens, temperature=self.cfg.temperature)
        finally:
            engine.lock.release()
        return Generation(
            text=out.text, tier=tier, model=engine.model, engine=engine.name, finish_reason=out.finish_reason,  # type: ignore[arg-type]
            tokens_in=out.tokens_in, tokens_out=out.tokens_out, latency_ms=(time.perf_counter() - started) * 1000,
        )
