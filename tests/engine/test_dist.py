"""destroy_process_group_after_success: the group a run created ends with the run."""
from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torch.distributed as dist
from mmengine.logging import MMLogger

from convnext_dense.engine.dist import destroy_process_group_after_success


def init_single_process_group(tmp_path) -> None:
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "store"}', rank=0,
                            world_size=1)


def test_a_group_created_in_the_block_is_destroyed_when_it_succeeds(tmp_path, capsys):
    # a logger of this test's own as mmengine's current one: the current instance an earlier
    # test made writes to that test's captured stdout
    MMLogger.get_instance(f'test_dist_{tmp_path.name}', log_level='INFO')
    with destroy_process_group_after_success():
        init_single_process_group(tmp_path)
        out = [None]
        dist.all_gather_object(out, 'x')  # a gloo collective, as the replica check's
    assert not dist.is_initialized()
    assert 'Destroyed the process group (gloo, 1 ranks)' in capsys.readouterr().out


def test_the_block_frees_a_ddp_wrapper_in_a_reference_cycle_before_destroying_its_group(
        tmp_path):
    # as a Runner's: its loops point back at it, so only the cyclic collector frees it (and
    # the DDP wrapper it holds); the automatic collector is off so that it cannot do it first
    gc.disable()
    try:
        with destroy_process_group_after_success():
            init_single_process_group(tmp_path)
            wrapper = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))
            wrapper.cycle = [wrapper]
            group = weakref.ref(wrapper.process_group)
            freed_wrapper = weakref.ref(wrapper)
            del wrapper
            assert freed_wrapper() is not None  # still there, in its cycle
    finally:
        gc.enable()
    assert not dist.is_initialized()
    assert freed_wrapper() is None
    assert group() is None  # nothing holds the group: gloo's threads have ended


def test_a_block_that_raises_leaves_the_group(tmp_path):
    try:
        with pytest.raises(RuntimeError, match='failed'):
            with destroy_process_group_after_success():
                init_single_process_group(tmp_path)
                raise RuntimeError('the run failed')
        assert dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_the_callers_group_is_left_alone(tmp_path):
    init_single_process_group(tmp_path)
    try:
        with destroy_process_group_after_success():
            pass
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()


def test_without_a_group_nothing_happens():
    with destroy_process_group_after_success():
        pass
    assert not dist.is_initialized()
