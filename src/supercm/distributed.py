"""Pieces of data-parallel training that PyTorch does not provide on the CPU (issue 13 §1).

:class:`SyncBatchNorm` normalises a batch split over the ranks of a ``torch.distributed``
process group with the statistics of the *whole* batch, on any backend: gloo on the CPU
included, where ``torch.nn.SyncBatchNorm`` refuses to run. Its statistics are all-reduced by a differentiable
all-reduce, so the gradient of every
rank's loss reaches every rank's input through the shared mean and variance, exactly as in one
process holding the whole batch. Without an initialised process group (or with one rank) it is
``torch.nn.BatchNorm``.

This is the BatchNorm a 2-process gloo run needs to equal a 1-process run of the same global
batch: the trainer swaps it in for every BatchNorm with ``train.sync_batchnorm=true`` when it runs
under a process group (``torchrun -m supercm train``; see :class:`supercm.train.Trainer`).

Also here: :func:`all_gather`, the rows of every rank with gradient (for losses of the whole
batch), and :func:`leave`, the end of a data-parallel run (the trainers closed, the group destroyed
while the interpreter is alive).
"""

from __future__ import annotations

import gc

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["SyncBatchNorm", "all_gather", "convert_sync_batchnorm", "leave", "world_size"]


def leave(*users, clean: bool = True) -> None:
    """Close ``users`` (trainers: :meth:`supercm.train.Trainer.close` drops the
    ``DistributedDataParallel`` wrapper that holds the process group), then tear the default
    process group down while the interpreter is fully alive: a gloo group destroyed at
    interpreter exit, from the wrapper's destructor, can abort the process (SIGABRT, "terminate
    called without an active exception"). Dropping the trainer is not enough: the first trainer
    built in a process can stay referenced until interpreter exit (a frame of its ``__init__`` is
    held by an exception PyTorch keeps from a lazy import).

    Call it on every rank at the end of a data-parallel run. ``clean``: the ranks got here
    together (the run finished, or stopped on an error every rank raised, as a divergence is):
    a barrier lets each rank's last collective finish before any rank tears the group down. After
    an error that may be this rank's alone (its peers may wait inside a collective) there is no
    barrier, and only a gloo group is destroyed: that is local to the process, whereas destroying
    an NCCL communicator while its peers wait can block this process; it exits instead, and
    torchrun stops the others. ``None`` users are skipped; without an initialised process group
    only the users are closed."""
    for user in users:
        if user is not None:
            user.close()
    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()  # anything in a reference cycle that still holds the group goes first
    if clean:
        dist.barrier()
    elif dist.get_backend() != "gloo":
        return
    dist.destroy_process_group()


def world_size(group=None) -> int:
    """Ranks in ``group`` (the default group), 1 without an initialised process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


class _AllReduceSum(torch.autograd.Function):
    """y = Σ_ranks x, differentiable: every rank's output depends on every rank's input, so the
    gradient of the ranks' summed losses w.r.t. one rank's x is the sum of the ranks' output grads.
    (``torch.distributed.nn.functional.all_reduce`` does the same and is deprecated.)"""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        ctx.group = group
        out = x.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def _all_reduce_sum(t: Tensor, group) -> Tensor:
    return _AllReduceSum.apply(t, group)


class _AllGather(torch.autograd.Function):
    """y = [x_0 ; x_1 ; … ; x_{W−1}] (the ranks' rows in rank order), differentiable. Every rank's
    loss depends on every rank's rows, so the gradient reaching rank r's x is the sum over the ranks
    of their output gradients' r-th block (an all-reduce, then this rank's rows)."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        ctx.group = group
        ctx.rank = dist.get_rank(group)
        ctx.rows = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows], None


def all_gather(x: Tensor, group=None) -> Tensor:
    """The rows of ``x`` from every rank of ``group``, concatenated in rank order, with gradient.

    For a loss computed on the *global* batch from every rank's share (MCC's class confusion, BNM's
    nuclear norm: functions of the whole batch, not means over samples). Each rank then computes
    the same global loss L; the backward sums the ranks' gradients into each rank's own rows, so
    rank r's rows get W·∂L/∂x_r, and DistributedDataParallel's mean over the W ranks gives the
    parameters exactly ∂L/∂θ, the one-process gradient. Every rank's ``x`` must have the same
    shape. Without a process group (or with one rank) it returns ``x``."""
    if world_size(group) == 1:
        return x
    return _AllGather.apply(x, group)


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch of a process group, for inputs (N, C, *) on any device.

    In training mode (or without running statistics) the mean and the biased variance are those
    of the samples of every rank together (two all-reduces: the sums and counts, then the squared
    deviations from the global mean, so the variance is not a difference of large sums); the
    running statistics take the unbiased global variance, as ``nn.BatchNorm`` does in one process.
    In eval mode it uses the running statistics and communicates nothing. Every rank must call it
    the same number of times (it is a collective).

    ``process_group``: the group to synchronise over (default: the whole world).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group=None, device=None, dtype=None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.process_group = process_group

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input (N, C, *), got {x.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        if not batch_stats or world_size(self.process_group) == 1:
            return super().forward(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, c] + [1] * (x.dim() - 2)
        work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        count = work.new_full((1,), x.numel() // c)
        packed = _all_reduce_sum(torch.cat([work.sum(dims), count]), self.process_group)
        n = packed[c]
        mean = packed[:c] / n
        centred = work - mean.view(shape)
        var = _all_reduce_sum((centred * centred).sum(dims), self.process_group) / n
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.training and self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), n.detach())
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, n: Tensor) -> None:
        self.num_batches_tracked.add_(1)
        if self.running_mean is None:
            return
        if self.momentum is None:  # cumulative moving average, as nn.BatchNorm
            factor = 1.0 / float(self.num_batches_tracked)
        else:
            factor = self.momentum
        unbiased = var * n / (n - 1).clamp_min(1)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """``module`` with every BatchNorm replaced by a :class:`SyncBatchNorm` holding the same
    parameters and statistics (like ``nn.SyncBatchNorm.convert_sync_batchnorm``, for any device)."""
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        out = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats, process_group)
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
        if module.weight is not None:
            out.to(module.weight.device)
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, process_group))
    return out


def broadcast_buffers(*modules: nn.Module | None) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics) of each module (a collective)."""
    for module in modules:
        if module is not None:
            for b in module.buffers():
                dist.broadcast(b, 0)


def gather_rng_states(device: torch.device) -> list:
    """Every rank's random state (torch's, and CUDA's on a CUDA device), in rank order (a collective)."""
    own = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        own["cuda"] = torch.cuda.get_rng_state(device)
    states: list = [None] * dist.get_world_size()
    dist.all_gather_object(states, own)
    return states
