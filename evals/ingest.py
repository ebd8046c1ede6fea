"""Ingestion throughput through `bentoml serve`, next to raw ``encode`` of the same chunks.

    python -m evals.ingest                 # 300 SciFact documents, 3 runs: ~6 min on 2 cores
    python -m evals.ingest --docs 1000 --runs 1

Starts the service (its own RAGROUTE_HOME, admin token set), creates a managed collection and
upserts ``--docs`` documents of a BEIR corpus (``--data``, default SciFact) in one job, timed
from the request to the job's ``succeeded`` (chunk, embed through the Embedding service in calls
of 64, write the version, swap). The reference, measured in the same run: the packaged embedder's
``encode`` of the same chunk texts in this process, one call (the fastest the embedding can go).
Each run upserts into a fresh collection; medians over ``--runs``. Writes evals/out/ingest.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from evals.cache_verifier import default_data
from evals.serving import ROOT, serving
from pipelines.config import EmbeddingConfig, model_cache
from pipelines.indexing.chunk import DEFAULT_CHUNK_SIZE, DEFAULT_OVERLAP, chunk_documents, embedding_text
from pipelines.indexing.load import load_beir
from pipelines.query.embed import SentenceTransformerEmbedder

log = logging.getLogger("evals.ingest")
TOKEN = "evals-ingest"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def ingest_once(url: str, name: str, documents: list[dict]) -> float:
    """Seconds from the upsert request to the job's success."""
    assert httpx.post(f"{url}/ingest/collections", json={"name": name}, headers=AUTH).status_code == 201
    t0 = time.perf_counter()
    job = httpx.post(f"{url}/ingest/collections/{name}/documents", json={"documents": documents}, headers=AUTH,
                     timeout=120).json()
    while True:
        state = httpx.get(f"{url}/ingest/jobs/{job['id']}", headers=AUTH).json()
        if state["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.05)
    elapsed = time.perf_counter() - t0
    if state["status"] != "succeeded":
        raise SystemExit(f"job failed: {state['error']}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=default_data() / "retrieval" / "scifact")
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "evals" / "out" / "ingest.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    corpus = args.data / "corpus.jsonl"
    if not corpus.is_file():
        raise SystemExit(f"{corpus} not found: pass --data (a BEIR-layout folder)")
    docs = list(itertools.islice(load_beir(corpus), args.docs))
    documents = [{"id": d.id, "title": d.title[:500], "text": d.text} for d in docs]
    texts = [embedding_text(c) for c in chunk_documents(docs, DEFAULT_CHUNK_SIZE, DEFAULT_OVERLAP)]

    service = []
    with tempfile.TemporaryDirectory(prefix="ragroute-ingest-eval-") as home, \
            serving(Path(home), {"RAGROUTE_ADMIN_TOKEN": TOKEN, "RAGROUTE_MODEL_CACHE": str(model_cache())}) as server:
        ingest_once(server.url, "warmup", documents[:5])
        for run in range(args.runs):
            service.append(ingest_once(server.url, f"run{run}", documents))
            log.info("run %d: %d documents in %.1f s through the service", run, len(docs), service[-1])
    embedder = SentenceTransformerEmbedder(EmbeddingConfig())
    embedder.encode(texts[:8])
    raw = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        embedder.encode(texts)
        raw.append(time.perf_counter() - t0)
    result = {
        "documents": len(docs), "chunks": len(texts), "runs": args.runs,
        "service_s": statistics.median(service), "raw_encode_s": statistics.median(raw),
        "service_docs_per_s": len(docs) / statistics.median(service),
        "raw_encode_docs_per_s": len(docs) / statistics.median(raw),
    }
    result["ratio_to_raw_encode"] = result["service_docs_per_s"] / result["raw_encode_docs_per_s"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log.info("wrote %s\n| path | documents/s | seconds for %d documents (%d chunks) |\n|---|---|---|\n"
             "| ingestion API job (service) | %.1f | %.1f |\n| raw encode of the same chunks | %.1f | %.1f |\n"
             "ratio service / raw encode: %.2f", args.out, len(docs), len(texts), result["service_docs_per_s"],
             result["service_s"], result["raw_encode_docs_per_s"], result["raw_encode_s"],
             result["ratio_to_raw_encode"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
