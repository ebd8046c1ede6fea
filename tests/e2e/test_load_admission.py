"""Under load, answer fast instead of waiting out the budget (issue 41), on a real stack with the
shipped cpu budgets (generate 16 s, total 20 s): concurrent distinct questions that the tiers
cannot all answer in time get the extract at once, flagged "capacity"; none overruns its total
budget; a client that wants no degraded answer gets 503 + Retry-After; a stuck generation worker
(SIGSTOP) costs one budget, is then routed around, and is used again once it resumes."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from evals.serving import serving
from pipelines.config.budget import PROFILES
from pipelines.query.tiers import STALL_S

TOTAL_S = PROFILES["cpu"]["total"] / 1000  # the cpu profile's total budget (20 s)
EMBED_S = PROFILES["cpu"]["embed"] / 1000  # ... and its embed stage's (2.5 s)
QUESTIONS = [f"What does the {w} statement do?" for w in
             ("pass", "break", "continue", "return", "yield", "raise", "import", "global", "nonlocal", "del",
              "assert", "with", "for", "while", "try", "if")]


@pytest.fixture(scope="module")
def server(e2e_home, model_cache):
    env = {"RAGROUTE_MODEL_CACHE": str(model_cache), "RAGROUTE_CACHE": "off", "RAGROUTE_BUDGET_PROFILE": "cpu"}
    with serving(e2e_home("ragroute-admission-home"), env) as srv:
        yield srv


def ask(server, question: str, **extra) -> tuple[httpx.Response, float]:
    t0 = time.monotonic()
    resp = httpx.post(f"{server.url}/rag_query", json={"query": question, "tier": "large", **extra}, timeout=120)
    return resp, time.monotonic() - t0


def test_concurrent_questions_beyond_capacity_get_the_extract_at_once_and_none_overruns(server):
    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        results = list(pool.map(lambda q: ask(server, q), QUESTIONS))
    assert all(r.status_code == 200 for r, _ in results), [r.text for r, _ in results if r.status_code != 200]
    outs = [(r.json(), t) for r, t in results]
    assert max(t for _, t in outs) < TOTAL_S * 1.05 + 1.0, sorted(t for _, t in outs)  # +1 s: HTTP and the client
    # answered by the extract because every tier refused it for capacity (no tier was tried for real)
    capacity = [(o, t) for o, t in outs if o["degraded"] and o["route"]["path"]
                and all("capacity:" in step["reason"] for step in o["route"]["path"])]
    # ... and some were let through: a tier ran for real (whether it then finished in time under
    # this burst depends on the machine: evals/admission.py measures that, not this test)
    admitted = [o for o, _ in outs if not o["degraded"]
                or any("capacity:" not in step["reason"] for step in o["route"]["path"] or [])]
    assert capacity and admitted, [(o["degraded"], o["warnings"]) for o, _ in outs]
    # a capacity answer is not made to wait for the generations it could not join: it costs the
    # stages before generation (under this burst, embedding may use its whole budget), not ~20 s
    waited = sorted(t for _, t in capacity)[int(0.95 * (len(capacity) - 1))]
    assert waited < EMBED_S + 1.5, sorted(t for _, t in capacity)
    for o, _ in capacity:
        assert o["answer"] and o["route"]["model"] == "extractive" and o["sources"]
        assert o["warnings"][-1].startswith("capacity: no tier can answer in time")
        assert any("would finish in ~" in s["reason"] or "full" in s["reason"] for s in o["route"]["path"])


def test_a_client_that_wants_no_degraded_answer_gets_503_with_retry_after(server):
    # One burst against a quiet service: the burst above may leave a generation running (at most
    # one budget), and requests admitted behind it would give up late, which is not this test's point.
    time.sleep(TOTAL_S)
    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        results = list(pool.map(lambda q: ask(server, q, allow_degraded=False), QUESTIONS))
    statuses = [r.status_code for r, _ in results]
    assert set(statuses) <= {200, 503} and 503 in statuses, statuses
    for r, t in results:
        if r.status_code == 503:
            assert int(r.headers["Retry-After"]) >= 1 and "capacity" in r.json()["error"] and t < TOTAL_S * 1.05 + 1.0
        else:  # a model answered (possibly the cheaper tier it fell back to), never the extract
            assert r.json()["route"]["model"] != "extractive", r.json()["warnings"]
    # Refused at once, not after the generations it could not join. (A request the cheaper tier
    # admitted behind the running answer, which this burst then slowed past its estimate, gives up
    # within its budget instead: one that falls behind its estimate is handled as before.)
    refused = sorted(t for r, t in results if r.status_code == 503)
    assert refused[0] < EMBED_S + 1.5, refused


def test_a_stuck_generation_worker_is_routed_around_then_used_again(server):
    # Start from a healthy service: the bursts above may leave a generation running (at most one
    # budget) and a tier marked stalled (STALL_S): this test is about the stall it causes itself.
    time.sleep(TOTAL_S + STALL_S + 1)
    worker = server.worker("ragroute-generation")
    worker.send_signal(signal.SIGSTOP)
    try:
        first, t_first = ask(server, "What does the lambda expression do?")
        second, t_second = ask(server, "What does the match statement do?")
    finally:
        worker.send_signal(signal.SIGCONT)
    first, second = first.json(), second.json()
    assert first["degraded"] and t_first < TOTAL_S * 1.05 + 1.0  # the one request that found it stuck
    assert second["degraded"] and t_second < EMBED_S + 1.5, (t_second, second["warnings"])  # seen as full: not asked
    assert any("skipped for" in w for w in second["warnings"]), second["warnings"]
    time.sleep(11)  # the stall period (10 s) is over: one request probes it
    back, _ = ask(server, "What does the try statement do?")
    assert back.status_code == 200 and not back.json()["degraded"], back.json()["warnings"]
