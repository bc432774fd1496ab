"""Speed and memory benchmark of the backbone against timm, mmpretrain and the official design,
and of whole Mask R-CNN / UperNet training steps with it and with mmpretrain's.

Modules, each importing only those before it: :mod:`.mmpretrain_env` (mmpretrain as
installed or from this project's overlay), :mod:`.baselines` (what is measured: the
implementations, the official design among them), :mod:`.measure` (how: timing, FLOPs, the
matmul ceiling, profiles, peak memory in a fresh process), :mod:`.whole_models` (the two
whole models with either backbone, their data and training step), :mod:`.suite` (a run:
settings, results, orchestration) and :mod:`.report` (targets and markdown).
``tools/benchmark.py`` is the command line. Imported where used; ``import convnext_dense``
does not load it.
"""
