# Set-up and entry points. Every target installs what it needs into .venv first
# (idempotent: a stamp file skips the install until setup.cfg or the installer change).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.convnext_dense-installed
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast lint clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml tools/install_mmcv.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch + torchvision as pip resolves them (install a CUDA torch first to keep it)
	$(PY) -m pip install -q torch torchvision "setuptools>=77,<81" wheel ninja "mmengine==0.10.7"
	$(PY) tools/install_mmcv.py
	$(PY) -m pip install -q --no-build-isolation -e ".[all]"
	touch $(STAMP)

# Until the built-in demo dataset lands, the main job is the smallest end-to-end
# check: Mask R-CNN and UperNet with a ConvNeXt backbone train a step and predict.
demo: setup
	$(PY) -m pytest tests/test_registry.py -k "trains" -v

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) work_dirs .pytest_cache
