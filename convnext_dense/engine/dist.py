"""Ending a distributed run: destroy the process group before the interpreter exits.

mmengine's Runner initialises ``torch.distributed`` (or the project's ``build_runner``
does, for gloo on the CPU) and never destroys it. A process that then simply exits can
abort after a successful run, with ``terminate called without an active exception``
(SIGABRT): gloo's worker thread (``pt_gloo_runloop``) may still be dropping the last
collective's work object (e.g. ``all_gather_object``'s) when Python finalises; freeing
its tensors takes the GIL, a thread that asks for the GIL during finalisation is ended
with ``pthread_exit``, and that forced unwind through a ``noexcept`` destructor calls
``std::terminate``. Destroying the group while Python is alive joins those threads first.

Destroying it only unregisters it, though: gloo's threads end when the last reference to
the group goes. The DDP (or FSDP) wrapper holds one, and the wrapper lives as long as the
Runner, which sits in reference cycles (each mmengine loop keeps ``self._runner``): only the
cyclic garbage collector frees it, and without a collection that can be at interpreter exit,
which is the abort again. So the block's end collects garbage before it destroys the group;
a caller must not keep its own reference to the Runner past the block.

Only after the run succeeded: a rank that fails may leave a collective unfinished on the
others, and destroying the group then can block; the launcher stops the job instead.
"""
from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

import torch.distributed as dist
from mmengine.logging import print_log


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


@contextmanager
def destroy_process_group_after_success() -> Iterator[None]:
    """Destroy the default process group created inside the block when the block ends
    without an exception (a ``return`` included), after freeing unreachable objects that
    still hold it (a Runner's DDP wrapper).

    A group that existed before the block (the caller's) is left alone, and so is any
    group when the block raises (see the module docstring). Logs one line when it
    destroys a group.
    """
    existed = _initialized()
    yield
    if not existed and _initialized():
        backend, world_size = dist.get_backend(), dist.get_world_size()
        gc.collect()  # the Runner's cycles, with the DDP wrapper and its hold on the group
        dist.destroy_process_group()
        print_log(f'Destroyed the process group ({backend}, {world_size} ranks)',
                  logger='current')


__all__ = ['destroy_process_group_after_success']
