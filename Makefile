# Two commands do everything on a fresh machine:
#   make figures   set up, then run every notebook on the default profile (PROFILE=name|path.yaml for another)
#   make test      set up, then lint (ruff) and run every test: the unit tests (two processes; the slowest named at
#                  the end), then the nbval regression of the notebooks
#   make lab       set up, then open JupyterLab on the repository (notebooks/ first, so links to docs/ open) with the
#                  project's kernel and autosave off (LAB_ARGS="--no-browser --port 8890")
#   make html      set up, then render every profile's executed notebooks and report.md into build/html/ (nothing executed)
# For developers:
#   make test-fast       the edit loop: lint and the tests not marked slow (no subprocesses, no notebooks; about 1.5 min)
#   make lint            ruff over helpers/, tests/, benchmarks/ and the notebooks (settings in pyproject.toml)
#   make reference       the run in figures/$(PROFILE)/ becomes the committed regression reference
#                        (tests/reference/$(PROFILE)/), when a change is meant to move the numbers
#   make kernel-matrix   $(PROFILE) from an empty cache under every CPU instruction set and 1 / 2 threads,
#                        each compared with the reference (not part of make test; about 6 min for digits)
#   make gpu-check       on a machine with a CUDA GPU, in one 8-minute window: the environment, the gpu tests,
#                        digits end to end on the GPU against its CPU reference, the benchmarks' GPU variants;
#                        each step within its own budget, results in gpu-check/ (helpers/tools/gpu_check.py).
#                        Without a GPU: prints the plan and records why the GPU steps did not run
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PROFILE ?= digits
STAMP   := $(VENV)/.installed
LAB_ARGS ?=
# the unit tests run on two worker processes (pytest-xdist); the notebooks then run in order, in one
# (notebook 00 starts the metrics.json that the later ones add to and check).  PYTEST_WORKERS= : one process
PYTEST_WORKERS ?= -n 2

# Our venv's kernelspec first, whatever "python3" kernels the user has elsewhere.
export JUPYTER_PATH := $(CURDIR)/$(VENV)/share/jupyter
export PYTHONHASHSEED := 0

.PHONY: setup figures test test-fast lint lab html bench reference kernel-matrix gpu-check clean-artifacts

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[notebooks,test]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (companion)" > /dev/null
	$(PY) -c "from helpers.notebook import write_kernel_config, write_lab_settings; write_kernel_config(); write_lab_settings()"
	touch $(STAMP)

figures: $(STAMP)
	$(PY) -m helpers.tools.run_notebooks --profile $(PROFILE)

test: lint
	TQDM_DISABLE=1 COMPANION_OUTPUT_DIR=$$(mktemp -d) $(PY) -m pytest -q tests -p no:cacheprovider $(PYTEST_WORKERS) \
		--durations=8
	TQDM_DISABLE=1 COMPANION_OUTPUT_DIR=$$(mktemp -d) $(PY) -m pytest -q notebooks --nbval-lax \
		--nbval-kernel-name python3 -p no:cacheprovider

test-fast: lint
	TQDM_DISABLE=1 COMPANION_OUTPUT_DIR=$$(mktemp -d) $(PY) -m pytest -q tests -m "not slow and not gpu" \
		-p no:cacheprovider $(PYTEST_WORKERS)

lint: $(STAMP)
	$(VENV)/bin/ruff check helpers tests benchmarks notebooks docs/tools

# The venv's JupyterLab; JUPYTER_PATH (above) puts the venv's "python3" kernel ("Python 3 (companion)") first.
# As root (a container), JupyterLab refuses to start without --allow-root: added then.
lab: $(STAMP)
	$(VENV)/bin/jupyter-lab --notebook-dir=. --LabApp.default_url=/lab/tree/notebooks \
		$(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

html: $(STAMP)
	$(PY) -m helpers.tools.html_site --out build/html --check

bench: $(STAMP)
	TQDM_DISABLE=1 $(PY) -m benchmarks.run_all

reference: $(STAMP)
	$(PY) -m helpers.tools.regression update $(PROFILE)

kernel-matrix: $(STAMP)
	$(PY) -m helpers.tools.kernel_matrix --profile $(PROFILE)

GPU_PROFILE ?= digits
gpu-check: $(STAMP)
	$(PY) -m helpers.tools.gpu_check --profile $(GPU_PROFILE)

clean-artifacts:
	rm -rf artifacts
