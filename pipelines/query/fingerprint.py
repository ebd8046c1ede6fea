"""The generation fingerprint: what shapes an answer besides the question and its sources.

Cached answers are keyed by it (pipelines/query/prepare.py): a change of a tier's model or
sampling, the prompt, the router or the cascade settings starts the cache afresh.
"""

from __future__ import annotations

from common.text import content_id
from pipelines.config import GenerationConfig, RagConfig, RoutingConfig
from pipelines.query.prompt import PROMPT_VERSION


def generation_fingerprint(rag: RagConfig, cfg: GenerationConfig, routing: RoutingConfig) -> str:
    """Identifies everything that shapes an answer besides the question and the sources."""
    tiers = sorted((t.name, t.engine, t.model, t.revision, t.max_tokens, t.context_tokens, t.temperature, t.top_p)
                   for t in cfg.tiers.values())
    # auto and cascade answers also depend on the router (and its threshold) and the cascade settings
    cascade = rag.cascade
    router = (routing.router, routing.threshold, routing.default_threshold,
              _file_digest(routing.artifact / "router.json") if routing.artifact else "",
              cascade.signal, cascade.threshold, cascade.start, cascade.route_threshold)
    return content_id(repr(tiers), repr(router), PROMPT_VERSION)


def _file_digest(path) -> str:
    try:
        return content_id(path.read_text())
    except OSError:
        return "unreadable"
