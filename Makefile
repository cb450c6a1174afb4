# Two commands matter: `make book` and `make test`. Both set up .venv first (idempotent).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BOOK_FLAGS := -W -n --keep-going
SOURCES := $(wildcard transformer_lib tools tests chapters labs benchmarks book/_ext conftest.py)

.PHONY: help setup book book-clean check-browser check-lab test lint check-export check-labs check-notebooks pytest export labs lab clean bench portability

help:
	@echo "make book    build the HTML book into _build/html"
	@echo "make test    run every check (lint, sync, hygiene, pytest + nbval, strict book build, browser checks)"
	@echo "make check-browser  build the book, then open every page in headless Chromium, offline (needs chromium)"
	@echo "make lab     open JupyterLab on the repository"
	@echo "make check-lab  open every chapter and learner lab in JupyterLab in headless Chromium and run it (needs chromium)"
	@echo "make export  regenerate transformer_lib/ from the chapters"
	@echo "make labs    regenerate the learner versions labs/*.ipynb from labs/solutions/"
	@echo "make bench   print benchmark tables"
	@echo "make portability  every notebook's asserted outcomes under 3 CPU kernel selections x 3 seeds"
	@echo "make clean   remove build outputs (keeps .venv)"

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ is required, found " + sys.version.split()[0]'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# The book shows each notebook as nbval last ran it (tools/book_cache.py hands those runs, kept
# in _build/executed/ by conftest.py, to Jupyter Book's execution cache) and runs the rest itself.
book: setup
	$(BIN)/python tools/book_cache.py
	$(BIN)/jupyter-book build . $(BOOK_FLAGS)
	$(BIN)/python tools/check_html.py
	@echo
	@echo "The book is at file://$(CURDIR)/_build/html/index.html"

# From nothing but nbval's kept runs: every other build output is removed first.
book-clean: setup
	@mkdir -p _build && find _build -mindepth 1 -maxdepth 1 ! -name executed -exec rm -rf {} +
	$(BIN)/python tools/book_cache.py
	$(BIN)/jupyter-book build . $(BOOK_FLAGS)
	$(BIN)/python tools/check_html.py

# Every page of the built book in headless Chromium, offline, on a 1280 px and a 390 px screen:
# fails on error output, raw TeX, broken links or anchors, requests to other servers, console
# errors, sideways scrolling on the phone, figure text under 9 px (tools/check_browser.py).
# Needs Chromium (apt-get install chromium; CHROMIUM=/path/to/chrome to choose one).
check-browser: book
	$(BIN)/python tools/check_browser.py

# Every chapter and learner lab opened in JupyterLab in headless Chromium, as a learner does, and
# run from the browser: fails on the unsaved-changes dot, raw MyST in rendered markdown, solutions
# shown without a click (before or after Run All), kernel errors in a chapter, cells past their
# budget, widget errors, a learner lab that does not stop at its first check with the check's
# verdict first (tools/check_lab.py). NOTEBOOKS=chapters/01_attention.ipynb for one.
check-lab: setup
	$(BIN)/python tools/check_lab.py $(NOTEBOOKS)

lint: setup
	$(BIN)/ruff check $(SOURCES)

check-export: setup
	$(BIN)/python tools/export.py --check

check-labs: setup
	$(BIN)/python tools/make_labs.py --check

check-notebooks: setup
	$(BIN)/python tools/notebooks.py --check

# Running the notebooks: pytest runs two at a time (two workers), one thread each, so that
# two-thread kernels do not stall each other. check-lab and the book (for a notebook nbval has not
# run) run them one at a time, so they keep PyTorch's default of one thread per core (the
# training chapters take about 40% less time on two cores); `make lab` and `make bench` too.
pytest: export OMP_NUM_THREADS ?= 1
# A progress bar in a notebook is a widget, which a static page can only show blank: nbval's runs,
# which the book shows, and the book's own runs go without them (tqdm reads TQDM_DISABLE);
# JupyterLab keeps them, and check-lab sees them there.
pytest book book-clean: export TQDM_DISABLE ?= 1

pytest: setup
	$(BIN)/python -m pytest -n 2 --dist loadscope

# `make test` runs each chapter twice, under two families of CPU kernels: pytest (nbval) with this
# machine's own kernels, and check-lab, in JupyterLab, with PyTorch's unvectorized kernels and
# AVX2-only matmuls (the `baseline` selection of tools/portability.py), with a torch.compile cache
# of its own: the default cache does not tell kernel selections apart, and code compiled for this
# machine's kernels fails to build under the baseline ones. The book shows nbval's runs.
BASELINE_KERNELS := ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
	TORCHINDUCTOR_CACHE_DIR=$(CURDIR)/_build/.inductor-baseline

test: lint check-export check-labs check-notebooks pytest
	$(MAKE) --no-print-directory book-clean
	$(BIN)/python tools/check_browser.py --if-available
	env $(BASELINE_KERNELS) $(BIN)/python tools/check_lab.py --if-available
	@echo "make test: all checks passed"

export: setup
	$(BIN)/python tools/export.py

labs: setup
	$(BIN)/python tools/make_labs.py

lab: setup
	$(BIN)/jupyter lab --notebook-dir=.

bench: setup
	@for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

# Each notebook under three CPU kernel selections and three seeds (about 40 minutes on 2 cores):
# the value of every asserted outcome in every run, beside its threshold. Pass options with
# PORTABILITY_FLAGS, e.g. make portability PORTABILITY_FLAGS="--notebooks 04_decoding --force".
PORTABILITY_FLAGS ?=
portability: setup
	$(BIN)/python tools/portability.py $(PORTABILITY_FLAGS)

clean:
	rm -rf _build .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +
