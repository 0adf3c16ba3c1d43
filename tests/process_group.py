"""A gloo process group for the test workers that ``torch.multiprocessing`` spawns, left the way
``supercm train`` leaves it under torchrun (:func:`supercm.distributed.leave`)."""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


@contextmanager
def gloo_group(rank: int, world: int, init_file: str):
    """Join a gloo group of ``world`` processes through ``init_file``; yields ``hold``: a worker
    passes it each trainer it builds (``t = hold(Trainer(...))``), and on the way out the trainers
    are closed and the group destroyed while the interpreter is alive, after a barrier when the
    worker finished, at once when it raised (its peers may be inside a collective)."""
    from supercm.distributed import leave

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    held: list = []

    def hold(trainer):
        held.append(trainer)
        return trainer

    try:
        yield hold
    except BaseException:
        leave(*held, clean=False)
        raise
    leave(*held)


def spawn(target, world: int, init_file: str, *args, timeout: float = 300) -> None:
    """``target(rank, world, init_file, *args)`` on ``world`` spawned processes; each must exit 0.
    A file store is not reused: give each process group started in one test its own ``init_file``."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=target, args=(r, world, init_file, *args)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=timeout)
    assert [p.exitcode for p in procs] == [0] * world
