"""What share of the cache survives a small document update, and how often a survivor is stale.

    python -m evals.cache_survival                    # SciFact: ~6 min on 2 cores (+~4 min first index)
    python -m evals.cache_survival --data DIR --update 0.02 --runs 3

The corpus (a BEIR-layout folder) is indexed once by the project's own path (evals/retrieval.py's
index). Each run makes a version v1 of the collection without some held-out documents, fills an
in-process cache (pipelines/query/cache/memory.py) with one entry per question of ``--split``
(retrieved and reranked as the service does: hybrid search, the configured reranker, ``--top-k``
sources; ``reach`` recorded as the service records it), then applies one update in the way an
ingestion job does (pipelines/indexing/ingest.py: the untouched chunks keep their vectors), of
``--update`` x the corpus documents in three equal parts:

- replaced: a document's text edited (its last sentence dropped, a new one appended);
- deleted;
- added: held-out documents, half of them judged relevant to some question (so some cached
  answers should change), half at random.

Three rules are compared on the same cache, by the backend's own ``carry``:

- ``drop all``: the version is in the partition, nothing is carried (the rule before carry.py);
- ``cited only``: keep an entry unless a document among its sources changed or went;
- ``cited + reach`` (shipped, carry.py): also drop it when an added chunk is nearer its question
  than its ``reach`` (carry.reach);
- ``cited + reach (<variant>)``: the same with reach measured otherwise, for comparison: the
  farthest candidate of the pool (``pool min``), the 10th nearest (``pool 10th``), the farthest
  source (``sources min``).

For each rule: the share of entries kept, and among them the share that is stale, i.e. whose
sources would differ if the question were asked again on the new version (retrieved and
reranked afresh): ``stale (sources)`` any source differs, ``stale (top source)`` the first
differs. A kept entry citing a changed or deleted document is counted separately and must be 0.
Medians over ``--runs`` updates (different random documents each). Writes
evals/out/cache-survival-<data>.json and logs a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import faiss
import numpy as np

from common.records import Chunk
from evals.cache_verifier import default_data
from evals.retrieval import open_index, read_beir
from evals.serving import ROOT
from index import store as index_store
from index.manifest import INDEX_FILE
from index.store import IndexStore
from pipelines.config import CacheConfig, EmbeddingConfig, RerankConfig, SearchConfig
from pipelines.indexing.build import DEFAULT_CHUNK_SIZE, DEFAULT_OVERLAP
from pipelines.indexing.chunk import chunk_documents, embedding_text
from pipelines.indexing.load import Document, load_beir
from pipelines.query.cache import InMemoryCache, Partition, VersionChange
from pipelines.query.cache.carry import reach
from pipelines.query.cache.records import doc_tag
from pipelines.query.embed import SentenceTransformerEmbedder
from pipelines.query.rerank import Reranker, make_reranker
from pipelines.query.retrieve import search

log = logging.getLogger("evals.cache_survival")

RULES = ("drop all", "cited only", "cited + reach")  # the last: carry.py as shipped, through the backend
VARIANTS = ("pool min", "pool 5th", "pool 10th", "sources min")  # other ways to measure reach: "cited + reach (<variant>)"


@dataclass
class Asked:
    qid: str
    text: str
    vector: np.ndarray


def build(chunks: list[Chunk], vectors: np.ndarray, folder: Path, model: str) -> IndexStore:
    index_store.write(folder, chunks, vectors, embedding_model=model, index_type="flat",
                      chunk_size=DEFAULT_CHUNK_SIZE, chunk_overlap=DEFAULT_OVERLAP, source="evals.cache_survival")
    return IndexStore.load(folder, embedding_model=model, gpu=False)


def answer(store: IndexStore, reranker: Reranker, cfg: SearchConfig, q: Asked, candidates: int,
           top_k: int) -> tuple[list[str], list[str], dict[str, float], set[str]]:
    """(source chunk ids, source doc ids, reach by each way of measuring it) as the service would
    store them; ``shipped``: carry.reach, what the service records."""
    pool = search(store, cfg, q.vector, q.text, candidates)
    ranked = reranker.rerank(q.text, pool, top_k)
    cosines = sorted((c.dense_score for c in pool), reverse=True)
    reaches = {"shipped": reach(pool), "pool min": cosines[-1], "sources min": min(s.dense_score for s in ranked),
               "pool 10th": cosines[min(9, len(cosines) - 1)], "pool 5th": cosines[min(4, len(cosines) - 1)]}
    return [s.chunk.id for s in ranked], [s.chunk.doc_id for s in ranked], reaches, {c.chunk.doc_id for c in pool}


def edited(doc: Document, rng: random.Random) -> Document:
    sentences = [s for s in doc.text.split(". ") if s]
    head = ". ".join(sentences[:-1]) if len(sentences) > 1 else doc.text[: len(doc.text) // 2]
    return replace(doc, text=f"{head}. Revised {rng.randint(1, 10**6)}: this section was updated and reviewed.")


def one_run(seed: int, docs: dict[str, Document], base: IndexStore, corpus_vectors: np.ndarray, asked: list[Asked], relevant: set[str],
            embedder: SentenceTransformerEmbedder, reranker: Reranker, cfg: SearchConfig, args, work: Path) -> dict:
    rng = random.Random(seed)
    per_part = max(1, round(len(docs) * args.update / 3))
    relevant_pool = sorted(relevant & docs.keys())
    held = set(rng.sample(relevant_pool, min(per_part // 2 or 1, len(relevant_pool))))
    held |= set(rng.sample(sorted(docs.keys() - held), per_part - len(held)))
    rest = sorted(docs.keys() - held)
    picked = rng.sample(rest, 2 * per_part)
    replaced, deleted = picked[:per_part], picked[per_part:]

    # v1: the corpus without the held-out documents (vectors from the corpus index: no re-embedding)
    keep = [i for i, c in enumerate(base.chunks) if c.doc_id not in held]
    v1_chunks = [base.chunks[i] for i in keep]
    v1_vectors = corpus_vectors[keep]
    v1 = build(v1_chunks, v1_vectors, work / f"run{seed}-v1", embedder.model_id)

    caches = {rule: InMemoryCache(CacheConfig(max_entries=10**6)) for rule in RULES}
    old = Partition("eval", v1.manifest.index_version, "fp", "eval")
    cached: dict[str, tuple[list[str], list[str], dict[str, float], set[str]]] = {}
    for q in asked:
        chunk_ids, doc_ids, reaches, pool_docs = answer(v1, reranker, cfg, q, args.candidates, args.top_k)
        cached[q.qid] = (chunk_ids, doc_ids, reaches, pool_docs)
        for cache in caches.values():
            cache.put(old, q.qid, q.text, q.vector, {"sources": chunk_ids}, doc_ids, reaches["shipped"])

    # the update, as an ingestion job applies it
    new_docs = [edited(docs[d], rng) for d in replaced] + [docs[d] for d in sorted(held)]
    touched = set(replaced) | set(deleted) | held
    new_chunks = list(chunk_documents(new_docs, DEFAULT_CHUNK_SIZE, DEFAULT_OVERLAP))
    t0 = time.perf_counter()
    added = embedder.encode([embedding_text(c) for c in new_chunks])
    embed_s = time.perf_counter() - t0
    stay = [i for i, c in enumerate(v1_chunks) if c.doc_id not in touched]
    v2 = build([v1_chunks[i] for i in stay] + new_chunks, np.concatenate([v1_vectors[stay], added]),
               work / f"run{seed}-v2", embedder.model_id)
    new = replace(old, index_version=v2.manifest.index_version)

    changed = sorted(set(replaced) | set(deleted))
    changes = {"cited only": VersionChange.of("eval", old.index_version, new.index_version, changed),
               "cited + reach": VersionChange.of("eval", old.index_version, new.index_version, changed, added)}
    carry_ms = {}
    for rule, change in changes.items():
        t0 = time.perf_counter()
        caches[rule].carry(change)
        carry_ms[rule] = (time.perf_counter() - t0) * 1000

    fresh: dict[str, list[str]] = {}

    def measure(kept: list[Asked]) -> dict:
        stale = stale_top = cites_changed = 0
        for q in kept:
            if q.qid not in fresh:
                fresh[q.qid] = answer(v2, reranker, cfg, q, args.candidates, args.top_k)[0]
            was_chunks, was_docs, _, _ = cached[q.qid]
            stale += set(fresh[q.qid]) != set(was_chunks)
            stale_top += fresh[q.qid][:1] != was_chunks[:1]
            cites_changed += bool(set(was_docs) & set(changed))
        n = len(kept)
        return {"kept": n, "kept_share": n / len(asked), "stale_sources_share": stale / n if n else 0.0,
                "stale_top_share": stale_top / n if n else 0.0, "kept_citing_changed": cites_changed}

    out = {rule: {**measure([q for q in asked if caches[rule].get_exact(new, q.qid) is not None]),
                  "carry_ms": carry_ms.get(rule, 0.0)} for rule in RULES}
    reach_rule = changes["cited + reach"]
    for variant in VARIANTS:
        out[f"cited + reach ({variant})"] = measure([
            q for q in asked if reach_rule.keeps({doc_tag(d) for d in cached[q.qid][1]}, q.vector, cached[q.qid][2][variant])])
        out[f"candidates + reach ({variant})"] = measure([
            q for q in asked if reach_rule.keeps({doc_tag(d) for d in cached[q.qid][3]}, q.vector, cached[q.qid][2][variant])])
    # what a perfect rule would keep: every entry whose sources are the same on v2
    for q in asked:
        if q.qid not in fresh:
            fresh[q.qid] = answer(v2, reranker, cfg, q, args.candidates, args.top_k)[0]
    unchanged = sum(set(fresh[q.qid]) == set(cached[q.qid][0]) for q in asked)
    log.info("run %d: %d replaced, %d deleted, %d added documents (%d chunks, embedded in %.1f s); "
             "%d of %d entries still correct", seed, len(replaced), len(deleted), len(held), len(new_chunks),
             embed_s, unchanged, len(asked))
    return {"rules": out, "replaced": len(replaced), "deleted": len(deleted), "added": len(held),
            "added_chunks": len(new_chunks), "oracle_kept_share": unchanged / len(asked)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=default_data() / "retrieval" / "scifact",
                        help="BEIR-layout folder (default: ../shared/data/retrieval/scifact, or RAGROUTE_DATA/retrieval/scifact)")
    parser.add_argument("--split", default="test", help="the questions cached (qrels/<split>.tsv)")
    parser.add_argument("--update", type=float, default=0.01,
                        help="documents touched by the update, as a share of the corpus (default 0.01)")
    parser.add_argument("--candidates", type=int, default=20, help="chunks reranked (RAGROUTE_CANDIDATES)")
    parser.add_argument("--top-k", type=int, default=4, help="sources per answer (rag_query's default)")
    parser.add_argument("--runs", type=int, default=3, help="updates measured; medians over them")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("bm25s", "index.store", "pipelines"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not (args.data / "corpus.jsonl").is_file():
        raise SystemExit(f"{args.data}/corpus.jsonl not found: pass --data (a BEIR-layout folder)")
    if not 0 < args.update <= 0.3:
        raise SystemExit("--update must be in (0, 0.3]")

    queries, qrels = read_beir(args.data, args.split)
    embedder = SentenceTransformerEmbedder(EmbeddingConfig())
    base = open_index(args.data, embedder, DEFAULT_CHUNK_SIZE, DEFAULT_OVERLAP)
    index = faiss.read_index(str(base.directory / INDEX_FILE))
    corpus_vectors = index.reconstruct_n(0, index.ntotal)
    docs = {d.id: d for d in load_beir(args.data / "corpus.jsonl")}
    ids = sorted(queries)
    vectors = embedder.encode([queries[q] for q in ids])
    asked = [Asked(q, queries[q], v) for q, v in zip(ids, vectors)]
    relevant = {d for judged in qrels.values() for d, grade in judged.items() if grade > 0}
    reranker = make_reranker(RerankConfig.from_env())
    cfg = SearchConfig.from_env()

    import tempfile

    with tempfile.TemporaryDirectory(prefix="cache-survival-") as tmp:
        runs = [one_run(seed, docs, base, corpus_vectors, asked, relevant, embedder, reranker, cfg, args, Path(tmp))
                for seed in range(args.runs)]
    med = {rule: {k: statistics.median(r["rules"][rule][k] for r in runs) for k in runs[0]["rules"][rule]}
           for rule in runs[0]["rules"]}
    oracle = statistics.median(r["oracle_kept_share"] for r in runs)
    result = {"data": str(args.data), "split": args.split, "questions": len(asked), "documents": len(docs),
              "update_share": args.update, "top_k": args.top_k, "candidates": args.candidates,
              "search": {"mode": cfg.mode, "fusion": cfg.fusion}, "reranker": RerankConfig.from_env().scorer,
              "runs": runs, "median": med, "oracle_kept_share": oracle}
    out = args.out or ROOT / "evals" / "out" / f"cache-survival-{args.data.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    first = runs[0]
    lines = [f"{args.data.name}: {len(asked)} cached questions, {len(docs)} documents; update of "
             f"{args.update:.0%} ({first['replaced']} replaced, {first['deleted']} deleted, {first['added']} added); "
             f"medians of {args.runs} runs", "",
             "| rule | kept | stale among kept (sources) | stale among kept (top source) | kept citing a changed doc |",
             "|---|---|---|---|---|"]
    lines += [f"| {rule} | {m['kept_share']:.1%} | {m['stale_sources_share']:.1%} | {m['stale_top_share']:.1%} | "
              f"{m['kept_citing_changed']:.0f} |" for rule, m in med.items()]
    lines += ["", f"entries whose sources are unchanged on the new version (what a perfect rule keeps): {oracle:.1%}"]
    log.info("wrote %s\n%s", out, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
