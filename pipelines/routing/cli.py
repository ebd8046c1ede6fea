"""``ragroute router ...``: train, calibrate and inspect the complexity router's artifact."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines import config

def _embedder(model: str | None):
    """The embedder the router is trained with: ``model``, else the configured one (RAGROUTE_EMBED_*)."""
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


def add_router_commands(sub) -> None:
    """The ``router`` subcommands, on the CLI's subparsers."""
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
                        "logprob_min, grounded, selfcheck, coverage) and small_score, large_score (evals/routing_live.py writes "
                        "them for the first four); with --start routed also the question (query), which the artifact's router scores: "
                        "use questions it was not trained on.")
    c.add_argument("directory", type=Path, help="router artifact to update (created with --router heuristic)")
    c.add_argument("--data", type=Path, required=True, help="labelled data (.jsonl or .csv)")
    c.add_argument("--router", choices=("artifact", "heuristic"), default="artifact",
                   help="heuristic: write a new artifact holding the heuristic router and its threshold")
    c.add_argument("--cascade", action="store_true", help="calibrate the cascade's confidence threshold instead")
    c.add_argument("--signal", choices=tuple(config.CASCADE_SIGNALS), default=config.DEFAULT_CASCADE_SIGNAL,
                   help="cascade confidence signal: mean/lowest token log-probability of the small answer; "
                   "grounded: the share of its content words found in its sources; selfcheck: 1/(1 + problems the "
                   "answer shows: arithmetic that does not compute, cut off, unsure wording); coverage: the share of the "
                   "question's terms its first statement contains (for an extractive small tier)")
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
