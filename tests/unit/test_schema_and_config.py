from __future__ import annotations

import pytest
from pydantic import ValidationError

from pipelines.config import GenerationConfig, RagConfig, RerankConfig, RoutingConfig
from pipelines.errors import ConfigError
from pipelines.query.generate import check_config
from pipelines.schema import RagRequest


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
    ({"query": "q", "tier": "xl"}, "tier"),
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
    ({"RAGROUTE_CACHE": "redis"}, "RAGROUTE_CACHE"),
    ({"RAGROUTE_DEFAULT_TIER": "xl"}, "RAGROUTE_DEFAULT_TIER"),
])
def test_bad_settings_name_the_variable(env, key):
    with pytest.raises(ConfigError, match=key):
        RagConfig.from_env(env)


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
