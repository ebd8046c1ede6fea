"""The ``openai`` engine against a real OpenAI-compatible server (llama.cpp's, started here),
and its failure modes: endpoint down, endpoint silent, wrong API key."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from evals.serving import free_port
from pipelines.config import GenerationConfig
from pipelines.errors import UpstreamError
from pipelines.query.generate import Delta, Generator
from tests.integration.test_rerank_and_generate import lighthouse


def remote_generator(base_url: str, key: str = "test-key", **extra: str) -> Generator:
    env = {"RAGROUTE_GEN_PROFILE": "cpu", "RAGROUTE_LARGE_ENGINE": "openai", "RAGROUTE_LARGE_MODEL": "smollm2-remote",
           "RAGROUTE_LARGE_BASE_URL": base_url, "RAGROUTE_LARGE_API_KEY": key, "RAGROUTE_LARGE_PRICE_IN": "1",
           "RAGROUTE_LARGE_PRICE_OUT": "2", **extra}
    cfg = GenerationConfig.from_env(env)
    from pipelines.engines import ENGINES

    return Generator(cfg, engines={"large": ENGINES["openai"](cfg.tiers["large"], 1)})


def test_remote_tier_answers_and_streams(openai_server):
    g = remote_generator(openai_server.base_url)

    async def scenario():
        items = [i async for i in g.stream("large", "Who designed the Zorvik lighthouse?", lighthouse())]
        await g.close()
        return items

    items = asyncio.run(scenario())
    deltas, out = items[:-1], items[-1]
    assert len(deltas) > 1 and all(isinstance(d, Delta) for d in deltas)
    assert "Castellanos" in out.text and out.engine == "openai" and out.model == "smollm2-remote"
    assert out.finish_reason in ("stop", "length") and out.tokens_in > 100 and out.tokens_out > 0
    assert out.cost_usd == pytest.approx((out.tokens_in * 1 + out.tokens_out * 2) / 1e6)


def test_a_wrong_api_key_is_an_upstream_error_naming_the_status(openai_server):
    g = remote_generator(openai_server.base_url, key="wrong")
    with pytest.raises(UpstreamError, match="answered 401"):
        asyncio.run(g.generate("large", "Hi?", lighthouse()))


def test_an_endpoint_that_is_down_fails_fast_after_bounded_retries():
    g = remote_generator(f"http://127.0.0.1:{free_port()}/v1", RAGROUTE_LARGE_RETRIES="2")
    t0 = time.monotonic()
    with pytest.raises(UpstreamError, match="unreachable"):
        asyncio.run(g.generate("large", "Hi?", lighthouse()))
    assert time.monotonic() - t0 < 2.0  # 3 refused connections and 0.2 + 0.4 s of backoff


def test_a_silent_endpoint_times_out_within_the_tier_timeout():
    # Accepts connections and never answers: a hung server or a black-holed load balancer.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    accepted = []
    threading.Thread(target=lambda: [accepted.append(sock.accept()) for _ in range(4)], daemon=True).start()
    g = remote_generator(f"http://127.0.0.1:{sock.getsockname()[1]}/v1", RAGROUTE_LARGE_TIMEOUT_S="0.5",
                         RAGROUTE_LARGE_RETRIES="1")
    t0 = time.monotonic()
    with pytest.raises(UpstreamError, match="timed out"):
        asyncio.run(g.generate("large", "Hi?", lighthouse()))
    took = time.monotonic() - t0
    sock.close()
    assert 1.0 <= took < 2.5 and len(accepted) == 2  # two attempts of 0.5 s, 0.2 s apart
