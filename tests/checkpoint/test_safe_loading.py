"""mmengine checkpoints load with weights_only=True; nothing beyond them is allowed."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub

from convnext_dense.checkpoint.safe_loading import (
    allow_mmengine_checkpoints,
    history_buffer_getattr,
)


def test_mmengine_style_checkpoint_loads_with_weights_only(tmp_path):
    allow_mmengine_checkpoints()
    hub = MessageHub('probe-safe-loading')
    hub.update_scalar('train/loss', 0.5)
    hub.update_scalar('train/loss', np.float64(0.25))
    hub.update_info('iter', 7)
    path = tmp_path / 'iter_7.pth'
    torch.save({'state_dict': {'w': torch.ones(2)}, 'message_hub': hub.state_dict(),
                'meta': {'seed': np.int64(3), 'hist': np.arange(3, dtype=np.float32)}}, path)
    loaded = torch.load(path, weights_only=True)
    buffer = loaded['message_hub']['log_scalars']['train/loss']
    assert isinstance(buffer, HistoryBuffer) and buffer.mean() == pytest.approx(0.375)
    assert loaded['meta']['seed'] == 3 and loaded['meta']['hist'].tolist() == [0, 1, 2]


class ReachesGlobals:
    """A pickle that tries getattr(HistoryBuffer.__init__, '__globals__')."""

    def __reduce__(self):
        return (getattr, (HistoryBuffer.__init__, '__globals__'))


def test_getattr_is_limited_to_history_buffer_methods(tmp_path):
    allow_mmengine_checkpoints()
    assert history_buffer_getattr(HistoryBuffer, 'mean') is HistoryBuffer.mean
    for obj, name in [(HistoryBuffer, '__init__'), (HistoryBuffer, '__class__'),
                      (np, 'load'), (HistoryBuffer, 'not_a_method')]:
        with pytest.raises(pickle.UnpicklingError, match='not allowed in a checkpoint'):
            history_buffer_getattr(obj, name)
    path = tmp_path / 'evil.pth'
    torch.save({'x': ReachesGlobals()}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
