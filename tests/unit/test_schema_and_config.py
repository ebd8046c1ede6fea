from __future__ import annotations

import pytest
from pydantic import ValidationError

from common.errors import ConfigError
from pipelines.api.schema import RagRequest
from pipelines.config import GenerationConfig, RagConfig, RerankConfig, RetrievalConfig, RoutingConfig
from pipelines.query.generate import check_config


def test_defaults_and_trimming():
    req = RagRequest(query="  What is X?  ")
    assert (req.query, req.top_k, req.tier, req.cache, req.tenant) == ("What is X?", 4, "auto", "use", "default")
    assert RagRequest(query="q", tenant="acme-corp.eu_1", cache="refresh").tenant == "acme-corp.eu_1"


@pytest.mark.parametrize("body,field", [
    ({"query": "   "}, "query"),
    ({"query": ""}, "query"),
    ({"query": "x" * 2001}, "query"),
    ({"query": 5}, "query"),
    ({}, "query"),
    ({"query": "q", "top_k": 0}, "top_k"),
    ({"query": "q", "top_k": 21}, "top_k"),
    ({"query": "q", "top_k": "4"}, "top_k"),
    ({"query": "q", "top_k": 2.5}, "top_k"),
    ({"query": "q", "tier": "XL!"}, "tier"),
        ({"query": "q", "stream": "yes"}, "stream"),
    ({"query": "q", "cache": "maybe"}, "cache"),
    ({"query": "q", "tenant": ""}, "tenant"),
    ({"query": "q", "tenant": "a b"}, "tenant"),
    ({"query": "q", "tenant": "x" * 65}, "tenant"),
    ({"query": "q", "tenant": "-leading-dash"}, "tenant"),
    ({"query": "q", "tenant": "a|b"}, "tenant"),
    ({"query": "q", "user": "a"}, "user"),
])
def test_bad_requests_name_the_field(body, field):
    with pytest.raises(ValidationError) as info:
        RagRequest.model_validate(body)
    assert [e["loc"][0] for e in info.value.errors()] == [field]


def test_query_limit_counts_after_trimming():
    assert RagRequest(query="  " + "x" * 2000 + "  ").query == "x" * 2000


@pytest.mark.parametrize("env,key", [
    ({"RAGROUTE_CANDIDATES": "many"}, "RAGROUTE_CANDIDATES"),
    ({"RAGROUTE_CANDIDATES": "0"}, "RAGROUTE_CANDIDATES"),
    ({"RAGROUTE_CACHE_THRESHOLD": "1.5"}, "RAGROUTE_CACHE_THRESHOLD"),
    ({"RAGROUTE_CACHE_ACCEPT_PROBABILITY": "1.5"}, "RAGROUTE_CACHE_ACCEPT_PROBABILITY"),
    ({"RAGROUTE_CACHE_ACCEPT_PROBABILITY": "likely"}, "RAGROUTE_CACHE_ACCEPT_PROBABILITY"),
    ({"RAGROUTE_CACHE": "redis"}, "RAGROUTE_CACHE"),
    ({"RAGROUTE_DEFAULT_TIER": "xl"}, "RAGROUTE_DEFAULT_TIER"),
    ({"RAGROUTE_RAG_WORKERS": "0"}, "RAGROUTE_RAG_WORKERS"),
    ({"RAGROUTE_RAG_WORKERS": "two"}, "RAGROUTE_RAG_WORKERS"),
])
def test_bad_settings_name_the_variable(env, key):
    with pytest.raises(ConfigError, match=key):
        RagConfig.from_env(env)


def test_several_entry_workers_need_a_cache_they_share():
    with pytest.raises(ConfigError, match="RAGROUTE_RAG_WORKERS=2 needs a cache the workers share: set REDIS_URL"):
        RagConfig.from_env({"RAGROUTE_RAG_WORKERS": "2"})  # each would have its own in-memory cache
    assert RagConfig.from_env({"RAGROUTE_RAG_WORKERS": "2", "REDIS_URL": "redis://127.0.0.1:6379"}).workers == 2
    assert RagConfig.from_env({"RAGROUTE_RAG_WORKERS": "2", "RAGROUTE_CACHE": "off"}).workers == 2
    assert RagConfig.from_env({}).workers == 1


@pytest.mark.parametrize("env,key", [
    ({"RAGROUTE_RETRIEVAL": "sparse"}, "RAGROUTE_RETRIEVAL"),
    ({"RAGROUTE_FUSION": "max"}, "RAGROUTE_FUSION"),
    ({"RAGROUTE_FUSION_WEIGHT": "1.5"}, "RAGROUTE_FUSION_WEIGHT"),
    ({"RAGROUTE_RRF_K": "0"}, "RAGROUTE_RRF_K"),
    ({"RAGROUTE_FUSION_DEPTH": "deep"}, "RAGROUTE_FUSION_DEPTH"),
])
def test_bad_search_settings_name_the_variable(env, key):
    with pytest.raises(ConfigError, match=key):
        RetrievalConfig.from_env(env)


def test_search_settings_and_the_collections_folder(tmp_path):
    cfg = RetrievalConfig.from_env({"RAGROUTE_HOME": str(tmp_path), "RAGROUTE_FUSION": "rrf", "RAGROUTE_RRF_K": "20"})
    assert (cfg.search.mode, cfg.search.fusion, cfg.search.rrf_k) == ("hybrid", "rrf", 20.0)
    assert cfg.collections_dir == tmp_path / "collections"
    assert RetrievalConfig.from_env({"RAGROUTE_COLLECTIONS_DIR": str(tmp_path / "c")}).collections_dir == tmp_path / "c"


def test_cross_encoder_needs_a_model():
    with pytest.raises(ConfigError, match="RAGROUTE_RERANK_MODEL"):
        RerankConfig.from_env({"RAGROUTE_RERANKER": "cross-encoder"})
    assert RoutingConfig.from_env({"RAGROUTE_ROUTE_THRESHOLD": "0.7"}).threshold == 0.7


@pytest.mark.parametrize("env,key", [
    ({"RAGROUTE_LARGE_ENGINE": "tgi"}, "RAGROUTE_LARGE_ENGINE"),
    ({"RAGROUTE_SMALL_MODEL": "gpt-5"}, "RAGROUTE_SMALL_MODEL"),
    ({"RAGROUTE_SMALL_MAX_TOKENS": "1500", "RAGROUTE_SMALL_CONTEXT_TOKENS": "2048"}, "RAGROUTE_SMALL_MAX_TOKENS"),
])
def test_bad_generation_config_fails_at_start_up_naming_the_key(env, key):
    with pytest.raises(ConfigError, match=key):
        check_config(GenerationConfig.from_env(env))


@pytest.mark.parametrize("env,key", [
    ({"RAGROUTE_XL_ENGINE": "openai"}, "RAGROUTE_XL_ENGINE configures tier 'xl', which is not in RAGROUTE_TIERS"),
    ({"RAGROUTE_LARGE_ENGINE": "openai"}, "RAGROUTE_LARGE_BASE_URL"),
    ({"RAGROUTE_TIERS": "small"}, "RAGROUTE_TIERS"),
    ({"RAGROUTE_TIERS": "small,large,XL"}, "RAGROUTE_TIERS"),
    ({"RAGROUTE_GEN_PROFILE": "tpu"}, "RAGROUTE_GEN_PROFILE"),
    ({"RAGROUTE_SMALL_PRICE_IN": "-1"}, "RAGROUTE_SMALL_PRICE_IN"),
])
def test_bad_tier_settings_name_the_key(env, key):
    with pytest.raises(ConfigError, match=key):
        GenerationConfig.from_env(env)


def test_tier_profiles_and_extra_tiers():
    cpu = GenerationConfig.from_env({"RAGROUTE_GEN_PROFILE": "cpu"})
    assert [(t.engine, t.model) for t in cpu.tiers.values()] == [
        ("llamacpp", "qwen2.5-coder-0.5b-instruct"), ("llamacpp", "qwen2.5-coder-1.5b-instruct")]
    gpu = GenerationConfig.from_env({"RAGROUTE_GEN_PROFILE": "gpu"})
    assert {t.engine for t in gpu.tiers.values()} == {"vllm"} and gpu.tiers["large"].model.startswith("Qwen/")
    hybrid = GenerationConfig.from_env({
        "RAGROUTE_GEN_PROFILE": "cpu", "RAGROUTE_TIERS": "small,large,xl", "RAGROUTE_XL_ENGINE": "openai",
        "RAGROUTE_XL_MODEL": "gpt-4o-mini", "RAGROUTE_XL_BASE_URL": "https://api.example.com/v1",
        "RAGROUTE_XL_PRICE_IN": "0.15", "RAGROUTE_XL_PRICE_OUT": "0.6"})
    xl = hybrid.tiers["xl"]
    assert list(hybrid.tiers) == ["small", "large", "xl"] and xl.engine == "openai"
    assert xl.cost_usd(1000, 500) == pytest.approx((1000 * 0.15 + 500 * 0.6) / 1e6)
