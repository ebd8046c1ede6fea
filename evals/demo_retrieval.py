"""The rerank stage's choices on the demo corpus itself: how often a question's help topic is
among the prompt's 4 sources, and first, with the shipped retrieval (score fusion) and each
rerank scorer, on the team's in-domain sets (evals/data/qa.jsonl's questions and
cache_paraphrases.jsonl's originals, each labelled with its topic).

    python -m evals.demo_retrieval        # ~30 s on 2 cores; writes evals/out/demo_retrieval.json

The BEIR sets (evals/retrieval.py) have no near-duplicate passages and no Python keywords that
are also English function words ("with", "for", "if"); this corpus has both.
"""

from __future__ import annotations

import json
import logging

from evals import qa
from evals.serving import ROOT

log = logging.getLogger("evals.demo_retrieval")

SOURCES = 4
WEIGHTS = (0.3, 0.5, 0.7)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from index.store import IndexStore
    from pipelines.config import EmbeddingConfig, RagConfig, RetrievalConfig, SearchConfig
    from pipelines.indexing.build import ensure_demo_index
    from pipelines.query.embed import SentenceTransformerEmbedder
    from pipelines.query.rerank import FusionOrder, HybridReranker
    from pipelines.query.retrieve import search

    embedder = SentenceTransformerEmbedder(EmbeddingConfig(device="cpu"))
    index = ensure_demo_index(RetrievalConfig.from_env().demo_index_dir, lambda: embedder)
    store = IndexStore.load(index, embedding_model=embedder.model_id)
    candidates = RagConfig.from_env().candidates
    cache = [json.loads(line) for line in (ROOT / "evals" / "data" / "cache_paraphrases.jsonl").read_text().splitlines()]
    sets = {"qa": [(i.question, i.doc_id) for i in qa.load()],
            "cache originals": [(row["question"], f"pydoc:{row['topic']}") for row in cache]}
    scorers = {"fusion + near-duplicate filter (shipped)": FusionOrder(),
               **{f"hybrid rerank, w = {w}": HybridReranker(w) for w in WEIGHTS}}
    result: dict[str, dict] = {}
    for name, questions in sets.items():
        counts = {k: [0, 0] for k in scorers}
        for question, topic in questions:
            found = search(store, SearchConfig(), embedder.encode([question])[0], question, candidates)
            for k, scorer in scorers.items():
                top = [c.chunk.doc_id for c in scorer.rerank(question, found, SOURCES)]
                counts[k][0] += topic in top
                counts[k][1] += bool(top) and top[0] == topic
        result[name] = {"questions": len(questions), **{k: {"in_sources": round(a / len(questions), 3),
                                                            "first": round(b / len(questions), 3)}
                                                        for k, (a, b) in counts.items()}}
    out = ROOT / "evals" / "out" / "demo_retrieval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| set | scorer | topic in the 4 sources | topic first |", "|---|---|---|---|"]
    lines += [f"| {name} ({r['questions']}) | {k} | {v['in_sources']:.1%} | {v['first']:.1%} |"
              for name, r in result.items() for k, v in r.items() if k != "questions"]
    log.info("wrote %s\n%s", out, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
