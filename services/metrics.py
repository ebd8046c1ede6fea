"""Prometheus metrics of the RAG service (prometheus_client; bentoml serves them on /metrics).

    ragroute_stage_latency_seconds{stage}              histogram of each stage's wall time
    ragroute_stage_outcomes_total{stage,outcome}       ok | timeout | error | skipped
    ragroute_budget_overruns_total{stage}              stages that took longer than their budget
    ragroute_requests_total{degraded,cache}            answered requests; cache = hit | miss | bypass |
                                                       refresh | off | unavailable
    ragroute_cache_hits_total{kind}                    exact | semantic
    ragroute_route_decisions_total{tier,router}        tier that answered a generated request
    ragroute_tokens_total{tier,direction}              direction = in | out
    ragroute_cost_usd_total{tier}                      estimated generation cost (tokens x tier prices)
    ragroute_generation_ttft_seconds{tier}             generation's time to first token
    ragroute_cache_errors_total{op}                    cache operations that failed (Redis down/slow)
    ragroute_tenant_requests_total{tenant}             answered requests per tenant (REST and /v1)
    ragroute_tenant_tokens_total{tenant}               generated-answer tokens (in + out) per tenant;
                                                       cache hits cost none
    ragroute_denied_total{status}                      requests refused by the front door: 401 | 403 | 429
    ragroute_limit_errors_total{op}                    rate/quota checks that failed (Redis down): let through
    ragroute_cache_decisions_total{tenant,decision}    the error-bounded cache's decision on a semantic
                                                       candidate: hit | verify (a verification sample) | observe
  the tenant's statistics as the cache holds them (shared by replicas, persistent with Redis),
  refreshed after each semantic decision:
    ragroute_cache_verification_samples{tenant}        would-be hits answered fresh and compared
    ragroute_cache_wrong_hit_rate{tenant,stat}         wrong among them: observed | ci95_low | ci95_high
    ragroute_cache_observations{tenant,outcome}        every comparison (samples and not-yet-served
                                                       candidates): agree | wrong
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from pipelines.api.schema import RagResponse

# Without a key file tenants are whatever clients write: past this many, they count as "other".
MAX_TENANT_LABELS = 100

# Stage latencies span 0.1 ms (a cache lookup) to tens of seconds (CPU generation).
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80)


class RagMetrics:
    def __init__(self) -> None:
        self.stage_latency = Histogram(
            name="ragroute_stage_latency_seconds", documentation="wall time of each pipeline stage",
            labelnames=["stage"], buckets=BUCKETS)
        self.stage_outcomes = Counter(
            name="ragroute_stage_outcomes_total", documentation="stage outcomes: ok, timeout, error, skipped",
            labelnames=["stage", "outcome"])
        self.overruns = Counter(
            name="ragroute_budget_overruns_total", documentation="stages that took longer than their budget",
            labelnames=["stage"])
        self.requests = Counter(
            name="ragroute_requests_total", documentation="answered rag_query requests",
            labelnames=["degraded", "cache"])
        self.cache_hits = Counter(
            name="ragroute_cache_hits_total", documentation="cache hits by kind", labelnames=["kind"])
        self.routes = Counter(
            name="ragroute_route_decisions_total", documentation="tier that answered a generated request, by "
            "who chose it: router (tier auto), cascade, request (a fixed tier)", labelnames=["tier", "router"])
        self.escalations = Counter(
            name="ragroute_cascade_escalations_total", documentation="cascade answers judged not confident enough, "
            "by tier and what followed: escalated, or kept (no time left, or the next tier failed)",
            labelnames=["tier", "outcome"])
        self.tokens = Counter(
            name="ragroute_tokens_total", documentation="tokens processed by generation",
            labelnames=["tier", "direction"])
        self.cost = Counter(
            name="ragroute_cost_usd_total", documentation="estimated generation cost in USD (tokens x tier prices)",
            labelnames=["tier"])
        self.ttft = Histogram(
            name="ragroute_generation_ttft_seconds", documentation="generation's time to first token",
            labelnames=["tier"], buckets=BUCKETS)
        self.cache_errors = Counter(
            name="ragroute_cache_errors_total", documentation="cache operations that failed and were bypassed",
            labelnames=["op"])

        self.tenant_requests = Counter(
            name="ragroute_tenant_requests_total", documentation="answered requests per tenant", labelnames=["tenant"])
        self.tenant_tokens = Counter(
            name="ragroute_tenant_tokens_total", documentation="tokens (in + out) of generated answers per tenant; "
            "cache hits cost none", labelnames=["tenant"])
        self.denied_total = Counter(
            name="ragroute_denied_total", documentation="requests refused: 401 no or wrong API key, 403 another "
            "tenant, 429 over a rate limit or token quota", labelnames=["status"])
        self.limit_errors = Counter(
            name="ragroute_limit_errors_total", documentation="rate/quota checks that failed (their store is down); "
            "the request was let through", labelnames=["op"])
        self.cache_decisions = Counter(
            name="ragroute_cache_decisions_total", documentation="the error-bounded cache's decision on the best "
            "semantic candidate: hit, verify (a verification sample, answered fresh), observe (not served yet)",
            labelnames=["tenant", "decision"])
        self.feedback = Counter(
            name="ragroute_feedback_total", documentation="verdicts taken by POST /feedback, by verdict and by what "
            "the answer was (exact, semantic, fresh)", labelnames=["verdict", "answer"])
        # gauges of values read from the cache: the most recent write wins across worker processes
        self.cache_samples = Gauge(
            name="ragroute_cache_verification_samples", documentation="would-be semantic hits answered fresh and "
            "compared with the cached answer", labelnames=["tenant"], multiprocess_mode="mostrecent")
        self.cache_wrong_rate = Gauge(
            name="ragroute_cache_wrong_hit_rate", documentation="share of verification samples whose cached answer "
            "was judged wrong: observed, and its 95% Clopper-Pearson interval", labelnames=["tenant", "stat"],
            multiprocess_mode="mostrecent")
        self.cache_observations = Gauge(
            name="ragroute_cache_observations", documentation="comparisons of cached answers with fresh ones",
            labelnames=["tenant", "outcome"], multiprocess_mode="mostrecent")
        self._tenants: set[str] = set()

    def cache_policy(self, tenant: str, t: dict[str, Any]) -> None:
        """The tenant's error-bounded cache statistics (CacheStats.tenants[tenant])."""
        if tenant not in self._tenants:
            return  # label budget spent: usage() counts it as "other"
        self.cache_samples.labels(tenant=tenant).set(t["verification_samples"])
        if t["wrong_hit_rate"] is not None:
            self.cache_wrong_rate.labels(tenant=tenant, stat="observed").set(t["wrong_hit_rate"])
        self.cache_wrong_rate.labels(tenant=tenant, stat="ci95_low").set(t["wrong_hit_rate_ci95"][0])
        self.cache_wrong_rate.labels(tenant=tenant, stat="ci95_high").set(t["wrong_hit_rate_ci95"][1])
        self.cache_observations.labels(tenant=tenant, outcome="agree").set(t["observations"] - t["observed_wrong"])
        self.cache_observations.labels(tenant=tenant, outcome="wrong").set(t["observed_wrong"])

    def usage(self, tenant: str, tokens: int, resp: RagResponse | None = None) -> None:
        if tenant not in self._tenants:
            if len(self._tenants) >= MAX_TENANT_LABELS:
                tenant = "other"
            else:
                self._tenants.add(tenant)
        self.tenant_requests.labels(tenant=tenant).inc()
        self.tenant_tokens.labels(tenant=tenant).inc(tokens)
        if resp is not None and resp.cache.decision is not None:
            self.cache_decisions.labels(tenant=tenant, decision=resp.cache.decision).inc()


    def denied(self, status: int) -> None:
        self.denied_total.labels(status=str(status)).inc()

    def observe(self, resp: RagResponse) -> None:
        for stage, report in resp.budget.items():
            self.stage_latency.labels(stage=stage).observe(report.used_ms / 1000)
            self.stage_outcomes.labels(stage=stage, outcome=report.outcome).inc()
            if report.overrun:
                self.overruns.labels(stage=stage).inc()
        self.requests.labels(degraded=str(resp.degraded).lower(), cache=resp.cache.status).inc()
        if resp.cache.hit:
            self.cache_hits.labels(kind=resp.cache.kind).inc()
            return  # route and tokens belong to the request that generated the cached answer
        router = {"auto": "router", "cascade": "cascade"}.get(resp.route.mode, "request")
        self.routes.labels(tier=resp.route.tier, router=router).inc()
        for step in resp.route.path:  # every generation counts, including a cascade's discarded answer
            self.tokens.labels(tier=step.tier, direction="in").inc(step.tokens_in)
            self.tokens.labels(tier=step.tier, direction="out").inc(step.tokens_out)
            self.cost.labels(tier=step.tier).inc(step.cost_usd)
            if step.outcome in ("escalated", "kept"):
                self.escalations.labels(tier=step.tier, outcome=step.outcome).inc()
        if resp.usage.ttft_ms is not None:
            self.ttft.labels(tier=resp.route.tier).observe(resp.usage.ttft_ms / 1000)
