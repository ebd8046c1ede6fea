"""The ingestion API through `bentoml serve`: jobs upsert and delete documents while queries
run, versions swap with no failed request, every answer's sources belong to the version it
names, and a job killed mid-way (SIGKILL of the process running it) leaves the served version."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import pytest

from evals.serving import serving
from tests.e2e.conftest import GENEROUS_BUDGETS

TOKEN = "ingest-e2e-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUESTIONS = ["When does the release train ship?", "Who owns paging for payments?",
             "How are hotfixes released?", "What does the freeze review check?"]


@pytest.fixture(scope="module")
def server(e2e_home, model_cache):
    env = {"RAGROUTE_MODEL_CACHE": str(model_cache), "RAGROUTE_ADMIN_TOKEN": TOKEN, **GENEROUS_BUDGETS}
    with serving(e2e_home("ragroute-ingest"), env) as srv:
        yield srv


def call(server, method: str, path: str, body=None, **kw) -> httpx.Response:
    return httpx.request(method, f"{server.url}/ingest{path}", json=body, headers=kw.pop("headers", AUTH),
                         timeout=120, **kw)


def wait_job(server, job_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = call(server, "GET", f"/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def doc(i: int, words: str = "") -> dict:
    return {"id": f"kb/{i}.md", "title": f"Note {i}",
            "text": f"Note {i}. {words or 'The release train ships every second Tuesday after the freeze review.'} "
                    f"Hotfixes skip the train; the on-call engineer owns paging for payments (revision {i})."}


def snapshot(server, name: str) -> tuple[str, set[str]]:
    """(index_version, chunk ids) of the version the collection's CURRENT names."""
    folder = server.home / "collections" / name
    version = folder / "versions" / (folder / "CURRENT").read_text().strip()
    manifest = json.loads((version / "manifest.json").read_text())
    ids = {json.loads(line)["id"] for line in (version / "chunks.jsonl").read_text().splitlines() if line.strip()}
    return manifest["index_version"], ids


def test_the_api_needs_the_admin_token_and_refuses_bad_input(server):
    assert call(server, "POST", "/collections", {"name": "kb"}, headers={}).status_code == 401
    assert call(server, "POST", "/collections", {"name": "Bad Name"}).status_code == 400
    assert call(server, "POST", "/collections", {"name": "kb"}).status_code == 201
    assert call(server, "POST", "/collections", {"name": "kb"}).status_code == 409
    assert call(server, "POST", "/collections/nope/documents", {"documents": [doc(1)]}).status_code == 404
    bad = call(server, "POST", "/collections/kb/documents", {"documents": [{"id": "a b", "text": "x"}]})
    assert bad.status_code == 400 and bad.json()["field"] == "documents.0.id"
    assert call(server, "POST", "/collections/kb/documents", {"documents": [{"id": "a", "text": ""}]}).status_code == 400
    assert call(server, "POST", "/collections/kb/documents", {"documents": [doc(1)], "x": 1}).status_code == 400
    big = httpx.post(f"{server.url}/ingest/collections/kb/documents", headers={**AUTH, "content-type": "application/json"},
                     content=b'{"documents": [' + b" " * (33 * 2**20) + b"]}", timeout=120)
    assert big.status_code == 413
    assert call(server, "GET", "/jobs/0123456789abcdef").status_code == 404


def test_queries_during_swaps_never_fail_and_name_the_version_their_sources_are_in(server):
    first = [doc(0, "An early draft nobody should read."), *[doc(i) for i in range(4)]]  # kb/0.md twice: the last wins
    job = call(server, "POST", "/collections/kb/documents", {"documents": first})
    assert job.status_code == 202 and job.json()["documents"] == 4, job.text
    assert wait_job(server, job.json()["id"])["status"] == "succeeded"
    versions = dict([snapshot(server, "kb")])
    folder = server.home / "collections" / "kb"
    served = (folder / "versions" / (folder / "CURRENT").read_text().strip() / "chunks.jsonl").read_text()
    assert "early draft" not in served and served.count('"doc_id": "kb/0.md"') + served.count('"doc_id":"kb/0.md"') >= 1

    answers, failures, stop = [], [], threading.Event()

    def load() -> None:
        with httpx.Client(timeout=120) as client:
            i = 0
            while not stop.is_set():
                resp = client.post(f"{server.url}/rag_query", json={
                    "query": QUESTIONS[i % len(QUESTIONS)], "collection": "kb", "cache": "bypass", "top_k": 2,
                    "tier": "small"})
                i += 1
                (answers if resp.status_code == 200 else failures).append(resp.json() if resp.status_code == 200
                                                                          else resp.text)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for round_ in range(3):  # each job replaces two notes, adds one and deletes one: a new version each time
            upsert = call(server, "POST", "/collections/kb/documents", {"documents": [
                doc(round_, f"Round {round_}: the train now ships on Thursdays."), doc(10 + round_)]}).json()
            assert wait_job(server, upsert["id"])["status"] == "succeeded"
            versions.update([snapshot(server, "kb")])
            deleted = call(server, "POST", "/collections/kb/documents/delete", {"ids": [f"kb/{round_ + 1}.md"]}).json()
            assert wait_job(server, deleted["id"])["status"] == "succeeded"
            versions.update([snapshot(server, "kb")])
        deadline = time.monotonic() + 120
        while len(answers) < 12 and time.monotonic() < deadline:  # and on the last version
            time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == [] and len(answers) >= 10
    seen = {a["index_version"] for a in answers}
    assert len(seen) >= 2  # the swaps happened under load
    for a in answers:
        assert a["collection"] == "kb" and a["index_version"] in versions
        assert {s["id"] for s in a["sources"]} <= versions[a["index_version"]]
    # old versions are collected: the served one and the one before it remain
    assert len(list((server.home / "collections" / "kb" / "versions").iterdir())) <= 2


def test_deleted_documents_are_never_cited_again_even_from_the_cache(server):
    ask = {"query": QUESTIONS[0], "collection": "kb", "top_k": 4}
    first = server.post(ask).json()
    assert not first["degraded"], first["warnings"]  # only good answers are cached
    cited = {s["doc_id"] for s in first["sources"]}
    again = server.post(ask).json()
    assert again["cache"]["hit"]
    job = call(server, "POST", "/collections/kb/documents/delete", {"ids": sorted(cited)[:1]}).json()
    assert wait_job(server, job["id"])["status"] == "succeeded"
    gone = sorted(cited)[0]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the new version is served within a second or so
        after = server.post(ask).json()
        if after["index_version"] != first["index_version"]:
            break
        time.sleep(0.2)
    assert after["index_version"] != first["index_version"] and not after["cache"]["hit"]
    assert gone not in {s["doc_id"] for s in after["sources"]}


HANDBOOK = [
    {"id": "canteen", "title": "Canteen", "text": "The canteen on the third floor serves lunch from 11:30 to 14:00 "
                                                   "on weekdays; the salad bar closes at 13:30."},
    {"id": "parking", "title": "Parking", "text": "Parking permits for the underground garage are issued by "
                                                   "facilities; visitors park on level minus two."},
    {"id": "vpn", "title": "VPN", "text": "The VPN client must be updated every quarter; IT pushes the update on "
                                           "the first Monday of the quarter."},
    {"id": "holidays", "title": "Holidays", "text": "Employees get 28 days of paid holiday a year; unused days "
                                                     "carry over until the end of March."},
]


def await_served(server, name: str, version: str, timeout: float = 30) -> None:
    """Until the RAG service answers ``name`` from ``version`` (the Retrieval service loads a new
    version in the background), asking its collection list, not a question (which would be cached)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = httpx.post(f"{server.url}/collections", json={}, timeout=60).json()["collections"]
        if {c["name"]: c["index_version"] for c in listed}.get(name) == version:
            return
        time.sleep(0.2)
    raise AssertionError(f"{name} still not served from {version}")


def test_cached_answers_survive_changes_to_documents_they_do_not_cite(server):
    """carry.py through `bentoml serve`: deleting a document an answer does not cite keeps the
    answer cached under the new version; replacing the document it cites drops it."""
    assert call(server, "POST", "/collections", {"name": "handbook"}).status_code == 201
    job = call(server, "POST", "/collections/handbook/documents", {"documents": HANDBOOK}).json()
    assert wait_job(server, job["id"])["status"] == "succeeded"
    ask = {"query": "When does the canteen serve lunch?", "collection": "handbook", "top_k": 1}
    first = server.post(ask).json()
    assert not first["degraded"], first["warnings"]
    assert [s["doc_id"] for s in first["sources"]] == ["canteen"]
    assert server.post(ask).json()["cache"]["hit"]

    unrelated = wait_job(server, call(server, "POST", "/collections/handbook/documents/delete",
                                      {"ids": ["parking"]}).json()["id"])
    assert unrelated["status"] == "succeeded" and unrelated["result"]["cache"]["kept"] >= 1, unrelated
    await_served(server, "handbook", unrelated["result"]["version"])
    kept = server.post(ask).json()
    assert kept["cache"]["hit"] and kept["answer"] == first["answer"]
    assert kept["index_version"] == unrelated["result"]["version"] != first["index_version"]
    assert snapshot(server, "handbook")[0] == kept["index_version"]
    assert {s["id"] for s in kept["sources"]} <= snapshot(server, "handbook")[1]  # its sources are in that version

    changed = dict(HANDBOOK[0], text="The canteen on the third floor now serves lunch from 12:00 to 15:00 "
                                     "on weekdays; the salad bar is gone.")
    cited = wait_job(server, call(server, "POST", "/collections/handbook/documents",
                                  {"documents": [changed]}).json()["id"])
    assert cited["status"] == "succeeded" and cited["result"]["cache"]["dropped"] >= 1, cited
    await_served(server, "handbook", cited["result"]["version"])
    fresh = server.post(ask).json()
    assert not fresh["cache"]["hit"] and fresh["index_version"] == cited["result"]["version"]
    assert "15:00" in fresh["sources"][0]["snippet"]


def test_a_job_killed_mid_way_leaves_the_served_version_and_reads_as_failed(server):
    before = snapshot(server, "kb")
    big = [doc(100 + i, "Filler paragraph about release logistics. " * 60) for i in range(120)]
    job = call(server, "POST", "/collections/kb/documents", {"documents": big}).json()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = call(server, "GET", f"/jobs/{job['id']}").json()
        if state["status"] == "running" and state["progress"]["chunks_embedded"] > 0:
            break
        time.sleep(0.05)
    assert state["status"] == "running" and state["progress"]["chunks_embedded"] < state["progress"]["chunks_to_embed"]
    os.kill(state["pid"], signal.SIGKILL)  # the RAG worker running the job
    folder = server.home / "collections" / "kb"
    assert snapshot(server, "kb") == before
    assert not any(p.name.startswith("v") and p.name > (folder / "CURRENT").read_text().strip()
                   for p in (folder / "versions").iterdir())
    # The killed worker is replaced; the job reads as failed, and the served version still answers.
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            resp = call(server, "GET", f"/jobs/{job['id']}")
            if resp.status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(1)
    assert resp.json()["status"] == "failed" and "interrupted" in resp.json()["error"]
    answer = server.post({"query": QUESTIONS[0], "collection": "kb", "cache": "bypass"}, timeout=180)
    assert answer.status_code == 200 and answer.json()["index_version"] == before[0]
