"""Wire types of the public ``rag_query`` API (the HTTP boundary).

Strict: unknown fields are rejected (``extra="forbid"``), every field is bounded, and
validation errors name the field (BentoML turns them into HTTP 400).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt, StringConstraints

MAX_QUERY_CHARS = 2000
# Unicode White_Space: what pydantic's strip_whitespace trims (Python's str.strip also trims
# U+001C-U+001F; use strip(WHITESPACE) where the two must agree). NON_BLANK: a pattern any
# regex dialect reads the same way (Python, Rust, ECMA: the published OpenAPI document).
WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
NON_BLANK = "[^" + "".join(f"\\u{ord(c):04x}" for c in WHITESPACE) + "]"
# Control characters other than tab and line breaks (NUL, ESC, DEL, ...): never in a question.
CONTROL = "".join(map(chr, [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F]))
_C = "".join(f"\\u{ord(c):04x}" for c in CONTROL)
# TEXT: at least one non-blank character and no control character (anchored: the whole string).
TEXT = f"^[^{_C}]*{NON_BLANK[:-1]}{_C}][^{_C}]*$"

_CONTROL = frozenset(CONTROL)


def _no_control(text: str) -> str:
    if not _CONTROL.isdisjoint(text):
        raise ValueError("must not contain control characters (NUL, ESC, DEL, ...); tabs and line breaks are fine")
    return text


# The published document states the same rule as TEXT (services/openapi.py).
Query = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_QUERY_CHARS),
                  AfterValidator(_no_control)]
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Tenant = Annotated[str, StringConstraints(pattern=TENANT_PATTERN)]
COLLECTION_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"  # index/collections.py NAME
Collection = Annotated[str, StringConstraints(pattern=COLLECTION_PATTERN)]


class RagRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: Query = Field(description=f"the question; 1..{MAX_QUERY_CHARS} characters after trimming")
    top_k: Annotated[StrictInt, Field(ge=1, le=20)] = Field(4, description="number of sources to answer from")
    tier: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")] = Field(
        "auto", description="auto = the router picks the tier before generating; cascade = answer with the "
                            "cheapest tier (or, with a routed start, where the router sends the question) and "
                            "escalate while it is not confident; or a configured tier (small, large, ...)")
    cache: Literal["use", "bypass", "refresh"] = Field(
        "use", description="bypass = neither read nor write the cache; refresh = skip the lookup, store the new answer")
    tenant: Tenant = Field("default", description="cache partition: answers are never shared across tenants; with "
                                              "API keys (RAGROUTE_API_KEYS), the key's tenant (another is a 403)")
    stream: StrictBool = Field(False, description="stream the answer as server-sent events while it is generated")
    collection: Collection = Field("default", description="the document collection to answer from (GET /collections "
                                                          "lists them); an unknown one is a 404")
    allow_degraded: StrictBool = Field(True, description="false: when no tier can answer in time (the service is "
                                                         "at capacity), a 503 with Retry-After instead of an "
                                                         "extract of the best source")


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Source(_Out):
    id: str = Field(description="chunk id (content hash)")
    doc_id: str
    title: str
    snippet: str
    score: float = Field(description="reranker score (higher is better)")


class RouteStep(_Out):
    tier: str
    outcome: Literal["answered", "accepted", "escalated", "kept", "failed"] = Field(
        description="answered: the routed/requested tier answered; accepted: confident enough (cascade); "
                    "escalated: not confident, the next tier was asked; kept: not confident but no time "
                    "to escalate, or the next tier failed; failed: the tier errored or ran out of time")
    confidence: float | None = Field(None, description="the cascade's confidence signal for this answer")
    threshold: float | None = Field(None, description="the cascade's escalation threshold")
    latency_ms: float | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    reason: str = ""


class RouteInfo(_Out):
    mode: str = Field(
        "auto", max_length=32,
        description="the mode that answered (pipelines/query/modes/): auto: the router picked the tier; cascade: "
                    "small first (or large, when a routed start's router says so), escalate on low confidence; "
                    "fixed: the request named the tier")
    tier: str
    model: str
    score: float | None = Field(description="router score; null when the tier was requested explicitly or "
                                            "the cascade started at the cheapest tier without the router")
    reason: str
    path: list[RouteStep] = Field(default_factory=list, description="every tier asked, in order, and what came of it")


class CacheInfo(_Out):
    hit: bool
    kind: Literal["exact", "semantic"] | None = None
    similarity: float | None = None
    status: Literal["hit", "miss", "bypass", "refresh", "off", "unavailable"] = Field(
        "miss", description="unavailable = the cache backend failed and was bypassed")
    verifier: list[str] = Field(default_factory=list,
                                description="why each semantic candidate was accepted or rejected")
    decision: Literal["hit", "verify", "observe"] | None = Field(
        None, description="the error-bounded policy's decision on the best semantic candidate: hit; verify (a "
                          "verification sample: answered fresh to check the cached answer); observe (not served yet: "
                          "answered fresh, the cached answer compared); null: no candidate")
    verification_sample: bool = Field(False, description="this lookup was a verification sample (decision verify)")


class Usage(_Out):
    tokens_in: int = Field(description="over every generation of the request (a cascade may ask two tiers)")
    tokens_out: int
    cost_usd: float = Field(0.0, description="estimated, over every generation: tokens x the tier's price per "
                                             "1M input/output tokens")
    finish_reason: str | None = Field(None, description="stop | length | deadline | cancelled; null if not generated")
    logprob_mean: float | None = Field(None, description="confidence: mean token log-probability of the answer")
    logprob_min: float | None = Field(None, description="lowest token log-probability of the answer")
    ttft_ms: float | None = Field(None, description="generation's time to first token")


class SafetyInfo(_Out):
    checked: bool = Field(description="false when the check did not run (no generated answer, off, or no time)")
    grounding: float | None = Field(None, description="share of the answer's content words found in the sources")
    problems: list[str] = Field(default_factory=list)
    action: Literal["flag", "replace", "off"] = "flag"


class StageBudget(_Out):
    budget_ms: float
    used_ms: float
    outcome: Literal["ok", "timeout", "error", "skipped"]
    overrun: bool = Field(False, description="took longer than its budget")
    detail: str = ""


class RagResponse(_Out):
    request_id: str = Field(description="also in the service logs, to follow one request")
    answer: str
    sources: list[Source]
    route: RouteInfo
    cache: CacheInfo
    usage: Usage
    timings_ms: dict[str, float] = Field(description="wall time per stage, and total")
    budget: dict[str, StageBudget] = Field(description="per stage: budget, time used and outcome")
    budget_profile: str = Field(description="the latency budget profile in force (cpu | gpu)")
    index_version: str
    collection: str = Field("default", description="the collection the sources came from")
    safety: SafetyInfo = Field(default_factory=lambda: SafetyInfo(checked=False))
    degraded: bool = Field(False, description="true when a stage failed and a fallback produced this answer")
    warnings: list[str] = Field(default_factory=list, description="what failed or degraded, and why")


class StatsRequest(BaseModel):
    """``cache_stats`` and ``collections`` take no fields (an empty object, or no body)."""

    model_config = ConfigDict(extra="forbid")


class PurgeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: Tenant | None = Field(None, description="delete this tenant's entries")
    doc_ids: Annotated[list[Annotated[str, StringConstraints(min_length=1, max_length=512)]],
                       Field(max_length=10_000)] = Field(default_factory=list,
                                                         description="delete entries citing any of these documents")


Verdict = Literal["good", "bad"]  # a user's verdict on an answer (POST /feedback, /v1/feedback)


class FeedbackRequest(BaseModel):
    """``POST /feedback``: a verdict on one answer (pipelines/query/feedback.py)."""

    model_config = ConfigDict(extra="forbid")

    request_id: Annotated[str, StringConstraints(pattern=r"^(chatcmpl-)?[0-9a-f]{12}$")] = Field(
        description="the answer's request_id (rag_query) or id (/v1/chat/completions: chatcmpl-...)")
    verdict: Verdict = Field(description="was the answer right? 'bad' on a cached answer stops "
                                                        "it being served again for this question")
    tenant: Tenant = Field("default", description="the tenant the answer was given to; with API keys, the key's")
