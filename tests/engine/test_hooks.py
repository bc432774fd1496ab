"""ReplicaSyncCheckHook: digest comparison, registration, and a real (single-process) run."""
from __future__ import annotations

import pytest
import torch
from mmengine.model import BaseModel
from mmengine.runner import Runner

import convnext_dense  # noqa: F401  (registers the hook)
from convnext_dense import ConvNeXt
from convnext_dense.engine.hooks import (
    ReplicaMismatchError,
    ReplicaSyncCheckHook,
    compare_replica_digests,
    model_digests,
    tensor_digest,
)


def test_identical_ranks_pass():
    rank = {'backbone.a': '01', 'backbone.b': '02', 'head.c': '03'}
    assert compare_replica_digests([rank, dict(rank), dict(rank)]) == 3


def test_a_differing_tensor_names_it_and_the_rank():
    ranks = [{'a': '1', 'b': '2', 'c': '3'}, {'a': '1', 'b': '2', 'c': '3'},
             {'a': '1', 'b': 'X', 'c': '3'}]
    with pytest.raises(ReplicaMismatchError,
                       match=r'after iter 4: 1 of 3 tensors are not identical on all 3 ranks'
                             r':\n  b \(ranks \[2\] differ from rank 0\)'):
        compare_replica_digests(ranks, 'after iter 4')


def test_a_tensor_missing_on_a_rank_is_a_mismatch():
    with pytest.raises(ReplicaMismatchError) as info:
        compare_replica_digests([{'a': '1'}, {'a': '1', 'extra': '2'}])
    assert 'extra (ranks [1] hold it, missing on ranks [0])' in str(info.value)
    with pytest.raises(ReplicaMismatchError, match=r'a \(missing on ranks \[1\]\)'):
        compare_replica_digests([{'a': '1'}, {}])


def test_many_mismatches_are_summarised():
    ranks = [{str(i): '0' for i in range(25)}, {str(i): '1' for i in range(25)}]
    with pytest.raises(ReplicaMismatchError, match=r'25 of 25 tensors[\s\S]*and 15 more'):
        compare_replica_digests(ranks)
    with pytest.raises(ValueError, match='at least one rank'):
        compare_replica_digests([])


def test_digests_see_every_bit_dtype_and_shape():
    x = torch.arange(6, dtype=torch.float32)
    assert tensor_digest(x) == tensor_digest(x.clone())
    y = x.clone()
    y[3] = torch.nextafter(y[3], torch.tensor(100.0))  # one ulp
    assert tensor_digest(y) != tensor_digest(x)
    assert tensor_digest(x.reshape(2, 3)) != tensor_digest(x)
    assert tensor_digest(x.double()) != tensor_digest(x)
    assert tensor_digest(torch.tensor(1.0, dtype=torch.bfloat16))  # 0-d, no numpy dtype
    assert tensor_digest(x.reshape(2, 3).t()) == tensor_digest(x.reshape(2, 3).t().contiguous())
    model = torch.nn.BatchNorm2d(2)
    assert set(model_digests(model)) == {'weight', 'bias', 'running_mean', 'running_var',
                                         'num_batches_tracked'}
    assert set(model_digests(model, buffers=False)) == {'weight', 'bias'}


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg', 'mmengine'])
def test_hook_is_found_from_every_scope(scope):
    from mmengine.registry import HOOKS
    registry = {'mmdet': 'mmdet.registry', 'mmseg': 'mmseg.registry'}.get(scope)
    if registry:
        HOOKS = __import__(registry, fromlist=['HOOKS']).HOOKS  # noqa: N806
    with HOOKS.switch_scope_and_registry(scope) as hooks:
        hook = hooks.build(dict(type='ReplicaSyncCheckHook', interval=3, buffers=False))
    assert isinstance(hook, ReplicaSyncCheckHook) and (hook.interval, hook.buffers) == (3, False)
    with pytest.raises(ValueError, match='interval must be an int >= 1, got 0'):
        ReplicaSyncCheckHook(interval=0)


class TinyClassifier(BaseModel):
    """The ConvNeXt backbone with a linear head, enough for a Runner to train."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = ConvNeXt(arch='atto', out_indices=(3,))
        self.head = torch.nn.Linear(320, 2)

    def forward(self, inputs, labels=None, mode='loss'):
        logits = self.head(self.backbone(torch.stack(inputs))[0].mean((2, 3)))
        if mode == 'loss':
            return dict(loss=torch.nn.functional.cross_entropy(logits, torch.stack(labels)))
        return logits


def test_hook_logs_after_its_interval_in_a_real_runner(tmp_path, capsys):
    data = [dict(inputs=torch.randn(3, 32, 32), labels=torch.tensor(i % 2)) for i in range(6)]
    runner = Runner(
        model=TinyClassifier(), work_dir=str(tmp_path),
        train_dataloader=dict(dataset=data, sampler=dict(type='DefaultSampler', shuffle=False),
                              batch_size=2, collate_fn=dict(type='pseudo_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        train_cfg=dict(by_epoch=False, max_iters=3),
        custom_hooks=[dict(type='ReplicaSyncCheckHook', interval=2)],
        default_hooks=dict(checkpoint=None), default_scope='mmdet')
    runner.train()
    captured = capsys.readouterr()
    lines = [line.split(' - INFO - ')[-1] for line in (captured.out + captured.err).splitlines()
             if 'replicas in sync' in line]
    tensors = len(list(runner.model.parameters())) + len(list(runner.model.buffers()))
    assert lines == [f'replicas in sync after iter {i}: {tensors} tensors identical on all 1 '
                     'ranks' for i in (2, 3)]  # every 2nd iteration and the last one
