"""A training hook that checks that data-parallel replicas hold identical weights.

``custom_hooks = [dict(type='ReplicaSyncCheckHook', interval=1)]`` makes every rank
hash each parameter and buffer after a training iteration; the digests are gathered
with ``mmengine.dist`` and compared. A mismatch stops training with an error naming
the tensors and ranks; otherwise rank 0 logs one line.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import torch
from mmengine.dist import all_gather_object, get_rank, get_world_size
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from ..utils import first_n_and_more

#: How many differing tensors a mismatch message names before it summarises.
MAX_NAMED = 10


class ReplicaMismatchError(RuntimeError):
    """The ranks of a data-parallel run hold different weights."""


def tensor_digest(tensor: torch.Tensor) -> str:
    """Hash of a tensor's dtype, shape and exact bytes."""
    data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    digest = hashlib.blake2b(f'{tensor.dtype}{tuple(tensor.shape)}'.encode(), digest_size=16)
    digest.update(data.numpy().data)
    return digest.hexdigest()


def model_digests(model: torch.nn.Module, buffers: bool = True) -> dict[str, str]:
    """``{name: digest}`` for every parameter (and buffer) of ``model``."""
    tensors = dict(model.named_parameters())
    if buffers:
        tensors.update(model.named_buffers())
    return {name: tensor_digest(tensor) for name, tensor in tensors.items()}


def compare_replica_digests(per_rank: Sequence[Mapping[str, str]], where: str = '') -> int:
    """Check that all ranks hold the same tensors; return how many tensors were compared.

    Args:
        per_rank: One ``{name: digest}`` mapping per rank, in rank order.
        where: Context for the error message, e.g. ``'after iter 2'``.

    Raises:
        ReplicaMismatchError: naming each differing tensor and the ranks that differ from
            rank 0 (or lack the tensor).
    """
    if not per_rank:
        raise ValueError('compare_replica_digests needs the digests of at least one rank')
    names = list(per_rank[0]) + sorted(set().union(*per_rank) - set(per_rank[0]))
    problems = []
    for name in names:
        digests = [rank_digests.get(name) for rank_digests in per_rank]
        if all(digest == digests[0] for digest in digests):
            continue
        missing = [rank for rank, digest in enumerate(digests) if digest is None]
        differing = [rank for rank, digest in enumerate(digests)
                     if digest is not None and digest != digests[0]]
        parts = []
        if differing:
            parts.append(f'ranks {differing} differ from rank 0' if digests[0] is not None
                         else f'ranks {differing} hold it')
        if missing:
            parts.append(f'missing on ranks {missing}')
        problems.append(f'{name} ({", ".join(parts)})')
    if problems:
        named = first_n_and_more(problems, MAX_NAMED, sep='\n  ')
        raise ReplicaMismatchError(
            f'replicas out of sync{" " + where if where else ""}: {len(problems)} of '
            f'{len(names)} tensors are not identical on all {len(per_rank)} ranks:\n  '
            f'{named}')
    return len(names)


class ReplicaSyncCheckHook(Hook):
    """Check every ``interval`` training iterations that all ranks hold identical weights.

    Args:
        interval: Check after every ``interval``-th iteration (and after the last one).
        buffers: Compare buffers too. Turn it off for models with BatchNorm layers,
            whose running statistics are per-rank by design.
    """

    priority = 'LOW'

    def __init__(self, interval: int = 1, buffers: bool = True) -> None:
        if not isinstance(interval, int) or interval < 1:
            raise ValueError(f'ReplicaSyncCheckHook: interval must be an int >= 1, '
                             f'got {interval!r}')
        self.interval = interval
        self.buffers = buffers

    def before_train(self, runner) -> None:
        from torch.distributed.fsdp import FullyShardedDataParallel
        if isinstance(runner.model, FullyShardedDataParallel):
            raise ValueError('ReplicaSyncCheckHook compares replicated (DDP) weights; under '
                             'FSDP each rank holds a different shard by design')

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not (self.every_n_train_iters(runner, self.interval)
                or self.is_last_train_iter(runner)):
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        where = f'after iter {runner.iter + 1}'
        count = compare_replica_digests(all_gather_object(model_digests(model, self.buffers)),
                                        where)
        if get_rank() == 0:
            runner.logger.info(f'replicas in sync {where}: {count} tensors identical on all '
                               f'{get_world_size()} ranks')


__all__ = ['ReplicaMismatchError', 'ReplicaSyncCheckHook', 'compare_replica_digests',
           'model_digests', 'tensor_digest']
