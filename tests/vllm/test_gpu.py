"""GPU-only: the vLLM engine on CUDA with the GPU tier settings (runs where a GPU and plain
`vllm` exist; CI has neither and skips with the reason)."""

from __future__ import annotations

import asyncio

import pytest

from pipelines.config.budget import gpu_present

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def engine(model_cache):
    if not gpu_present():
        pytest.skip("no CUDA GPU on this machine")
    pytest.importorskip("vllm", reason="plain vllm (GPU build) is not installed: pip install -e '.[gpu]'")
    from pipelines import models
    from pipelines.config import GenerationConfig
    from pipelines.engines import ENGINES

    models.convert("smollm2-135m-instruct", model_cache)
    cfg = GenerationConfig.from_env({"RAGROUTE_GEN_PROFILE": "gpu", "RAGROUTE_SMALL_MODEL": "smollm2-135m-instruct",
                                     "RAGROUTE_SMALL_CONTEXT_TOKENS": "2048", "RAGROUTE_SMALL_MAX_TOKENS": "128",
                                     "RAGROUTE_SMALL_GPU_MEMORY_UTILIZATION": "0.3"})
    return ENGINES["vllm"](cfg.tiers["small"], 1)


def test_vllm_on_gpu_streams_with_logprobs(engine):
    from pipelines.engines import Sampling

    async def collect():
        return [c async for c in engine.stream([{"role": "user", "content": "What is the capital of France?"}],
                                               Sampling(32, 0.0, 1.0))]

    chunks = asyncio.run(collect())
    assert "Paris" in "".join(c.text for c in chunks) and chunks[-1].final is not None
    assert any(c.logprobs for c in chunks)
