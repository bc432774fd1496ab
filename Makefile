# Set-up and entry points. Every target installs what it needs into .venv first
# (idempotent: a stamp file skips the install until setup.cfg or the installer change).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.convnext_dense-installed
PYTEST_ARGS ?=

.PHONY: setup demo demo-seg test test-fast lint clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml tools/install_mmcv.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch + torchvision as pip resolves them (install a CUDA torch first to keep it)
	$(PY) -m pip install -q torch torchvision "setuptools>=77,<81" wheel ninja "mmengine==0.10.7"
	$(PY) tools/install_mmcv.py
	$(PY) -m pip install -q --no-build-isolation -e ".[all]"
	touch $(STAMP)

# The main job on the built-in demo dataset: generate it (data/demo/), train Mask R-CNN
# ConvNeXt from scratch, evaluate, draw; results in work_dirs/demo/mask_rcnn/. DEMO_ARGS
# passes options to tools/demo.py (e.g. DEMO_ARGS=--quick for a short smoke run).
DEMO_ARGS ?=
demo: setup
	$(PY) tools/demo.py det --work-dir work_dirs/demo $(DEMO_ARGS)

# The same for UperNet (mIoU); results in work_dirs/demo/upernet/.
demo-seg: setup
	$(PY) tools/demo.py seg --work-dir work_dirs/demo $(DEMO_ARGS)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) work_dirs .pytest_cache data/demo
