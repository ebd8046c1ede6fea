"""Typed configuration, loaded from ``RAGROUTE_*`` env vars: the config layer (the only code that
reads the environment).

    env.py          the helpers every setting is read with (errors name the variable)
    budget.py       the per-stage latency budgets: shipped profiles, BudgetProfile
    safety.py       SafetyConfig (the safety stage's action, grounding floor, blocked pattern)
    retrieval.py    EmbeddingConfig, SearchConfig, RetrievalConfig, RerankConfig
    routing.py      RoutingConfig, CascadeConfig
    generation.py   TierConfig, the per-tier settings table, the shipped profiles, GenerationConfig
    rag.py          CacheConfig, RagConfig (the entry service's own)
    services.py     one settings object per service (RagSettings), ProcessSettings

Every option is listed in docs/configuration.md ("Configuration"). Invalid values raise
:class:`ConfigError` naming the variable, at service start-up.
"""

from pipelines.config.env import DEFAULT_EMBED_MODEL, home, model_cache
from pipelines.config.generation import (ENGINE_NAMES, RESERVED_TIER_NAMES, TIER_NAME, TIER_PROFILES, TIER_SETTINGS,
                                         GenerationConfig, TierConfig)
from pipelines.config.rag import CacheConfig, RagConfig, rag_workers
from pipelines.config.retrieval import EmbeddingConfig, RerankConfig, RetrievalConfig, SearchConfig
from pipelines.config.routing import (CASCADE_SIGNALS, CASCADE_STARTS, DEFAULT_CASCADE_SIGNAL,
                                      DEFAULT_CASCADE_THRESHOLDS, CascadeConfig, RoutingConfig)

__all__ = ["CASCADE_SIGNALS", "CASCADE_STARTS", "DEFAULT_CASCADE_SIGNAL", "DEFAULT_CASCADE_THRESHOLDS",
           "DEFAULT_EMBED_MODEL", "ENGINE_NAMES", "RESERVED_TIER_NAMES", "TIER_NAME", "TIER_PROFILES", "TIER_SETTINGS",
           "CacheConfig", "CascadeConfig", "EmbeddingConfig", "GenerationConfig", "RagConfig", "RerankConfig",
           "RetrievalConfig", "RoutingConfig", "SearchConfig", "TierConfig", "home", "model_cache", "rag_workers"]
