# minidiff course tooling.  `make help` lists the targets.
#
#   make test [WORKERS=2]     unit tests + every notebook (nbval), quick mode, on 2 workers (0: one process)
#   make course [QUICK=1]     execute the notebooks into build/ (ipynb + HTML); NB="01 03" for some
#   make lab                  Jupyter Lab on notebooks/ (LAB_DIR=build/student for the student edition)
#   make student              student edition (solutions blanked) into build/student/
#   make strip                strip outputs from notebooks/ (keeps # NBVAL_CHECK_OUTPUT references)
#   make refs [NB=01]         record # NBVAL_CHECK_OUTPUT reference outputs from a quick-mode run
#   make bench [QUICK=1]      run benchmarks/*.py
#   make clean / distclean    remove build outputs / also .venv and the model cache
#
# PYTHON=python3.11 make ...  picks the interpreter that creates .venv.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
QUICK ?=
NB ?=
LAB_DIR ?= notebooks
PYTEST_ARGS ?=

# QUICK=1 (or yes/true) -> MINIDIFF_QUICK=1. Otherwise MINIDIFF_QUICK is *removed* from the
# environment rather than set to 0, so a value exported in the shell cannot silently shorten a
# full course build.
QUICK_ENV := $(if $(filter 1 yes true,$(QUICK)),env MINIDIFF_QUICK=1,env -u MINIDIFF_QUICK)

# Tests: quick mode, no progress bars, headless matplotlib, never touch the network.
# Two pytest-xdist workers with one torch thread each: measured on 2 cores, 538 s against 917 s for one
# process with two threads (815 tests, same results). --dist loadfile keeps each notebook (and each test
# file) on one worker, so a notebook's cells run in order in one kernel. WORKERS=0 runs in one process
# (then TEST_THREADS=2 uses both cores).
WORKERS ?= 2
TEST_THREADS ?= 1
TEST_ENV := MINIDIFF_QUICK=1 TQDM_DISABLE=1 MPLBACKEND=Agg HF_HUB_OFFLINE=1 OMP_NUM_THREADS=$(TEST_THREADS)
# nbval: --nbval-lax compares outputs only in cells marked `# NBVAL_CHECK_OUTPUT` (assertions in
# the cells do the checking); --nbval-current-env runs the kernel on this venv's python,
# whatever kernelspec the notebook names. No cache dir: CI runs in a fresh clone anyway.
PYTEST := $(PY) -m pytest -p no:cacheprovider --durations=10
NBVAL := --nbval-lax --nbval-current-env
XDIST := $(if $(filter 0,$(WORKERS)),,-n $(WORKERS) --dist loadfile)
# `notebooks` is passed only once it holds a notebook: pytest errors on a missing path.
TEST_PATHS := $(strip tests $(if $(wildcard notebooks/*.ipynb),notebooks))

.DEFAULT_GOAL := help
.PHONY: help venv test course lab student strip refs bench clean distclean

help:
	@sed -n 's/^#   //p' $(MAKEFILE_LIST)

# The stamp is rebuilt only when pyproject.toml is newer: `make test` on a ready venv costs nothing.
# torch is pinned in the SAME pip command as everything else: pinned there, the resolver takes
# the local CPU wheel; resolved on its own (or by another package in a later pip call), torch
# would come as a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || { echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	@start=$$(date +%s); \
	$(PY) -m pip install --quiet torch==2.13.0 -e ".[course]" && \
	echo "installed minidiff[course] into $(VENV) in $$(( $$(date +%s) - start )) s"
	@touch $@

venv: $(VENV)/.installed

test: venv
	@start=$$(date +%s); status=0; \
	echo "$(strip $(TEST_ENV) $(PYTEST) $(TEST_PATHS) $(NBVAL) $(XDIST) $(PYTEST_ARGS))"; \
	$(TEST_ENV) $(PYTEST) $(TEST_PATHS) $(NBVAL) $(XDIST) $(PYTEST_ARGS) || status=$$?; \
	echo "make test: $$(( $$(date +%s) - start )) s in total (pytest exit status $$status)"; \
	exit $$status

course: venv
	$(QUICK_ENV) $(PY) tools/render_course.py $(NB)

# Lab's own python3 kernelspec (installed into .venv by ipykernel) runs the server's python,
# i.e. this venv's. --allow-root only when root (containers); Jupyter refuses root otherwise.
LAB_ARGS ?= $(if $(filter 0,$(shell id -u)),--allow-root)
lab: venv
	cd $(LAB_DIR) && $(abspath $(VENV))/bin/jupyter lab $(LAB_ARGS)

student: venv
	$(PY) tools/student_edition.py $(NB)

strip: venv
	$(PY) tools/strip_outputs.py $(NB)

# nbval compares a `# NBVAL_CHECK_OUTPUT` cell only against a stored output, and the tests run
# in quick mode: so run the notebooks in quick mode (into build/quick, not to clobber the full
# build) and copy just those cells' outputs back into notebooks/.
refs: venv
	env MINIDIFF_QUICK=1 $(PY) tools/render_course.py --no-html --out build/quick $(NB)
	$(PY) tools/strip_outputs.py --from-executed build/quick $(NB)

bench: venv
	@shopt -s nullglob; files=(benchmarks/*.py); \
	if [ $${#files[@]} -eq 0 ]; then echo "no benchmarks/*.py yet"; exit 0; fi; \
	status=0; for f in "$${files[@]}"; do \
		echo "== $$f"; $(QUICK_ENV) TQDM_DISABLE=1 MPLBACKEND=Agg $(PY) "$$f" || status=1; \
	done; exit $$status

clean:
	rm -rf build .pytest_cache *.egg-info
	find . -path ./$(VENV) -prune -o -type d \( -name __pycache__ -o -name .ipynb_checkpoints \) -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) .minidiff_cache
