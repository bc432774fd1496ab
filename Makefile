# Set-up and entry points. Every target installs what it needs into .venv first
# (idempotent: a stamp file skips the install until setup.cfg or the installer change).
PYTHON ?= python3
# The OpenMMLab stack: upstream (mmengine 0.10.7, mmcv 2.1.0, mmdet 3.3.0, mmsegmentation
# 1.2.2; the default) or onedl (the maintained forks onedl-mmengine, onedl-mmcv,
# onedl-mmdetection, onedl-mmsegmentation; same import names). Each stack has its own venv:
# `make setup STACK=onedl` builds .venv-onedl. See setup.cfg's extras and docs/get_started.md.
STACK ?= upstream
ifeq ($(STACK),upstream)
VENV ?= .venv
MMENGINE_REQ := mmengine==0.10.7
MMCV_DIST := mmcv
else ifeq ($(STACK),onedl)
VENV ?= .venv-onedl
MMENGINE_REQ := onedl-mmengine==0.10.12
MMCV_DIST := onedl-mmcv
else
$(error STACK=$(STACK) is not a stack; choose STACK=upstream or STACK=onedl)
endif
PY := $(VENV)/bin/python
STAMP := $(VENV)/.convnext_dense-installed
# mmpretrain and the deps .venv lacks, put on sys.path only by the tests that need it
MMPRETRAIN_OVERLAY := $(VENV)/overlays/mmpretrain
PYTEST_ARGS ?=

.PHONY: setup demo demo-seg demo-deeplab demo-export test test-fast lint clean \
	test-other-stack test-this-stack-briefly

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml tools/install_mmcv.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch + torchvision as pip resolves them (install a CUDA torch first to keep it).
	# pip byte-compiles what it installs: with PYTHONDONTWRITEBYTECODE set (as on the CI
	# machines) Python would otherwise compile every import from source, in every process.
	$(PY) -m pip install -q torch torchvision "setuptools>=77,<81" wheel ninja "$(MMENGINE_REQ)"
	$(PY) tools/install_mmcv.py --dist $(MMCV_DIST)
	$(PY) -m pip install -q --no-build-isolation -e ".[all,$(STACK)]"
	# mmpretrain (tests compare checkpoints with its real ConvNeXt) goes into an overlay
	# folder, never into site-packages: mmdet imports it whenever it is importable, and it
	# breaks next to transformers 5. Only the runtime deps .venv lacks are added there: the
	# packages of the `benchmark` extra (setup.cfg), pinned. tools/benchmark.py activates it
	# (convnext_dense/benchmark/mmpretrain_env.py).
	rm -rf $(MMPRETRAIN_OVERLAY)
ifeq ($(STACK),upstream)
	$(PY) -m pip install -q --no-deps --target $(MMPRETRAIN_OVERLAY) mmpretrain==1.2.0 \
		einops==0.8.2 model-index==0.1.11 ordered-set==4.1.0 markdown==3.11.3 \
		importlib-metadata==10.2.0 zipp==4.1.2 lazy-importer==0.1.0
	# model-index ships a top-level `tests` package, which would shadow this repo's
else
	# the forks' own mmpretrain (made for onedl-mmengine/onedl-mmcv), source only: built here
	$(PY) -m pip install -q --no-deps --no-build-isolation --target $(MMPRETRAIN_OVERLAY) \
		onedl-mmpretrain==1.3.6 einops==0.8.2 model-index==0.1.11 ordered-set==4.1.0 \
		markdown==3.11.3 importlib-metadata==10.2.0 zipp==4.1.2 lazy-importer==0.1.0
endif
	rm -rf $(MMPRETRAIN_OVERLAY)/tests $(MMPRETRAIN_OVERLAY)/bin
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

# DeepLabV3+ at output stride 16 on the same data (mIoU); results in work_dirs/demo/deeplabv3plus/.
demo-deeplab: setup
	$(PY) tools/demo.py deeplab --work-dir work_dirs/demo $(DEMO_ARGS)

# After `make demo` and `make demo-seg`: both trained demo models exported to ONNX (and to int8
# where verified), evaluated with ONNX Runtime and OpenVINO next to PyTorch (onnx_metrics.json),
# predictions drawn (onnx_infer/).
demo-export: setup
	$(PY) tools/demo.py det --export --work-dir work_dirs/demo
	$(PY) tools/demo.py seg --export --work-dir work_dirs/demo

# The suite runs on every core with pytest-xdist: whole test files per worker (their module
# fixtures are built once), a crashed worker ends the run instead of being replaced (xdist's
# file scheduler can wait forever after a replacement); tests/conftest.py splits torch's threads
# between the workers and hands out the minutes-long demo tests first, each on its own (its
# order replaces xdist's reordering). XDIST= runs it in one process (about twice as long on
# two cores).
XDIST ?= -n auto --dist loadfile --no-loadscope-reorder --max-worker-restart=0
test: setup
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

# CI's check of the other stack (after `make test`, which runs the full suite on upstream): in
# its own venv, the non-slow suite and the quick det and seg demos with their checks (the tests
# marked other_stack: each trains a quick demo and beats the untrained model; the export of
# a trained demo is checked on upstream, the non-slow suite's export tests run here too);
# PYTEST_ARGS passes through.
OTHER_STACK ?= onedl
test-other-stack:
	$(MAKE) --no-print-directory STACK=$(OTHER_STACK) test-this-stack-briefly

test-this-stack-briefly: setup
	$(PY) -m pytest $(XDIST) -m "not slow or other_stack" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) work_dirs .pytest_cache data/demo
