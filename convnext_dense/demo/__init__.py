"""The built-in demo: generated shapes data (:mod:`.data`) and the train/evaluate/draw job
(:mod:`.run`). Imported where used; ``import convnext_dense`` does not load it."""
