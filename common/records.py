"""Typed, immutable records passed between stages and services.

They are pydantic models (frozen) because they also cross process boundaries between
BentoML services; inside one process they behave like frozen dataclasses.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Tier = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]  # a configured tier name


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Chunk(_Record):
    """A piece of a document, as stored in the index's chunk store."""

    id: str = Field(description="content hash of (doc_id, text)")
    doc_id: str
    title: str
    text: str
    metadata: dict[str, str | int | float] = Field(default_factory=dict)


class ScoredChunk(_Record):
    """A chunk with the score of the stage that produced it (retrieval or rerank)."""

    chunk: Chunk
    score: float
    dense_score: float = Field(description="cosine similarity of query and chunk (from retrieval)")


class RouteDecision(_Record):
    tier: Tier
    score: float = Field(description="estimated probability that the small tier is not good enough")
    threshold: float
    router: str
    reason: str


class TierAnswer(_Record):
    """One tier's answer: what the Generation service returns (and the last event of its stream)."""

    text: str
    tier: Tier
    model: str
    engine: str
    finish_reason: str
    tokens_in: int
    tokens_out: int
    latency_ms: float
    ttft_ms: float | None = Field(None, description="time to the first token")
    logprob_mean: float | None = Field(None, description="mean log-probability of the answer's tokens (confidence)")
    logprob_min: float | None = Field(None, description="lowest token log-probability of the answer")
    cost_usd: float = Field(0.0, description="tokens x the tier's price per 1M input/output tokens")
    prefill_tok_s: float | None = Field(None, description="the tier's measured prefill rate after this answer")
    decode_tok_s: float | None = Field(None, description="the tier's measured decode rate after this answer")
