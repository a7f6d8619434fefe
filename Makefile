# Two entry points: `make demo` and `make test`. Both create/update .venv themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# torch/torchvision are pinned in constraints.txt (on these machines pip serves them from local disk).
PIP_INSTALL := $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt

.PHONY: extra-data demo test venv export-check nbtest pytest clean-nbs bench gpu-check notebooks docs

venv: $(STAMP)

$(STAMP): setup.py settings.ini constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) torch torchvision
	$(PIP_INSTALL) -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mmvae-nb demo --out out/demo

# Fails when the library is out of sync with the notebooks (what nbdev's own CI checks).
export-check: $(STAMP)
	@if git rev-parse --git-dir >/dev/null 2>&1; then \
	  before=$$( (git status --porcelain; git diff) | sha1sum); \
	  $(VENV)/bin/nbdev_export; \
	  after=$$( (git status --porcelain; git diff) | sha1sum); \
	  if [ "$$before" != "$$after" ]; then \
	    echo "nbdev_export changed files: mmvae_nb/ is out of sync with nbs/ (run nbdev_export and commit)"; \
	    git status --short; exit 1; fi; \
	  echo "nbdev_export: library in sync with notebooks"; \
	else echo "not a git checkout: skipping the export sync check"; fi

# OMP_NUM_THREADS=1: nbdev_test runs 2 workers; torch's own threads would oversubscribe 2 cores.
nbtest: $(STAMP)
	OMP_NUM_THREADS=1 MPLBACKEND=Agg $(VENV)/bin/nbdev_test --n_workers 2

pytest: $(STAMP)
	OMP_NUM_THREADS=1 MPLBACKEND=Agg $(PY) -m pytest -q -n 2

# pytest runs last so its summary line closes the run.
# Fashion-MNIST (the own-data example, its reference classifier) comes from Debian's dataset-fashion-mnist:
# installed when apt-get can (as root); without it those tests skip with the reason.
FASHION_DIR := /usr/share/datasets/fashion-mnist
extra-data:
	@test -f $(FASHION_DIR)/train-images-idx3-ubyte.gz || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } || \
	  echo "Fashion-MNIST not installed (apt-get install dataset-fashion-mnist): its tests will skip"

test: extra-data export-check nbtest pytest

clean-nbs: $(STAMP)
	$(VENV)/bin/nbdev_clean

# Execute every chapter and assignment in place (`#| slow` cells too, `#| eval: false` ones not) and keep light
# outputs (PNGs palette-encoded, <= 100 KB each; nbs/ <= 3 MB). Not part of `make test`. NOTEBOOKS=nbs/02_elbo.ipynb for one.
NOTEBOOKS ?=
notebooks: $(STAMP)
	@if [ -z "$${MMVAE_NB_DATA:-}" ] && [ -d ../shared/data ]; then export MMVAE_NB_DATA="$$(cd ../shared/data && pwd)"; fi; \
	  OMP_NUM_THREADS=1 $(PY) tools/run_notebooks.py $(NOTEBOOKS)

bench: $(STAMP)
	@for f in bench/bench_*.py; do echo "== $$f"; $(PY) $$f; done

# On a CUDA machine: the prepared GPU check (<= 8 min; bench/gpu_check.py says what it checks). Without CUDA: its
# dry run (tiny steps on the CPU, CUDA-only parts skipped and named). Writes gpu_check.{json,md,log} to GPU_CHECK_OUT.
GPU_CHECK_OUT ?= out/gpu_check
gpu-check: $(STAMP)
	PYTHONUNBUFFERED=1 $(PY) bench/gpu_check.py --out $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)

# The documentation site, built offline into site/ by docs/build_site.py: the executed chapters in reading order, the
# API from the docstrings, the assignments' student versions, the reproduction reports (no notebook is executed).
# Its tools (docs/requirements.txt) go into .venv; Debian's chromium (the browser check) is installed when root.
DOCS_STAMP := $(VENV)/.docs-stamp
$(DOCS_STAMP): $(STAMP) docs/requirements.txt
	$(PIP_INSTALL) -r docs/requirements.txt
	@touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	  echo "chromium not installed (apt-get install chromium): the site's browser check will skip"
	OMP_NUM_THREADS=1 $(PY) docs/build_site.py
	OMP_NUM_THREADS=1 MMVAE_NB_SITE=site $(PY) -m pytest -q -p no:cacheprovider tests/test_site.py
