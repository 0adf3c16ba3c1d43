"""One trainer for every base method, with or without SuperCM.

Each iteration minimises ``CE(labeled) + Σ_j weight_j(t)·L_j`` (SPEC §4): SuperCM (β), the base
method (δ·w(t)) and the regularisers, each a :class:`~supercm.objective.WeightedTerm` the builder
made from the config; the trainer names none of them. The centroids are updated from the labeled
features of the batch *before* the loss. The reported model is the one with the best validation
accuracy; its test accuracy, and the final model's, are reported (:mod:`supercm.evaluation`).

All randomness comes from seeded generators whose states are checkpointed, so a run killed and
resumed with ``--resume`` ends exactly where an uninterrupted run ends (on the CPU, with the same
thread count). The run directory (:mod:`supercm.rundir`) is never lost or poisoned; the divergence
guard (:mod:`supercm.guard`) stops a run whose loss or state stops being finite, reading the device
on logged, evaluation and checkpoint iterations only; ``train.precision`` (:mod:`supercm.precision`)
runs the step under autocast. Under an initialised ``torch.distributed`` process group (``torchrun
-m supercm train``) each rank trains on its share of the global batch and PyTorch's
``DistributedDataParallel`` averages the gradients; evaluation is sharded over the ranks; only rank 0
writes the run directory. ``train.compile`` makes the step's model call a ``torch.compile``'d one.

Where each concern lives: config → objects in :mod:`supercm.build`, the run directory in
:mod:`supercm.rundir`, precision in :mod:`supercm.precision`, the guard in :mod:`supercm.guard`,
logs and :class:`RunResult` in :mod:`supercm.logs`, evaluation and selection in
:mod:`supercm.evaluation`. The names other code imported from here are re-exported.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import build, distributed, evaluation
from .config import Config, ConfigError, from_dict
from .data import ArrayDataset, DomainPair, SSLSplit
from .data.augment import Augment
from .data.pipeline import rows as pipeline_rows
from .data.pipeline import to_device
from .data.sampler import BatchSampler
from .ema import ema_copy, update_ema
from .fileio import tmp_path as _tmp_path  # noqa: F401  (tests use it)
from .guard import DivergenceGuard
from .logs import RunLogs, RunResult, read_scalars
from .methods import Batch, Term, check_terms
from .objective import WeightedTerm
from .precision import AUTOCAST_DTYPES, MIN_LOSS_SCALE, Precision, check_compile, check_precision, resolve_device
from .rundir import (
    BEST_MODEL,
    CHECKPOINT,
    CLASSES,
    CONFIG,
    EVALS,
    LOCK,
    METRICS,
    RESUMABLE_CHANGES,
    SPLIT,
    SUMMARY,
    RunDir,
    RunDirError,
    read_checkpoint,
    read_run_config,
    usable,
)
from .schedules import lr_factor, rampup

__all__ = [  # re-exported: tests, benchmarks and users import them from here
    "AUTOCAST_DTYPES", "BEST_MODEL", "CHECKPOINT", "CLASSES", "CONFIG", "EVALS", "LOCK", "METRICS", "MIN_LOSS_SCALE",
    "RESUMABLE_CHANGES", "SPLIT", "SUMMARY", "BatchSampler", "RunDirError", "RunResult", "Trainer", "check_compile",
    "check_precision", "evaluate", "lr_factor", "rampup", "read_run_config", "resolve_device", "seed_everything",
]
evaluate = evaluation.evaluate
seed_everything = build.seed_everything


class Trainer:
    """Trains one configuration. ``run_dir=None`` keeps everything in memory (no files).

    Usage::

        result = Trainer(cfg, "runs/exp1").fit()
        result = Trainer.resume("runs/exp1").fit()

    Everything that can be checked is checked before a file is written: the config, the device, the model
    against the data's shape, and every file already in ``run_dir``. A directory that holds a checkpoint is
    only continued by :meth:`resume`; one that holds none (a run that failed before its first) may be reused.
    """

    def __init__(self, cfg: Config, run_dir: str | Path | None = None, *,
                 dataset: ArrayDataset | DomainPair | None = None, _resuming: bool = False):
        from_dict(cfg.to_dict())  # a Config built by hand in Python is checked like a file
        check_terms(cfg)  # the terms' names and options (the config layer sits below the terms' registry)
        self.cfg, tc = cfg, cfg.train
        self.rundir = RunDir(run_dir) if run_dir is not None else None
        build.seed_everything(tc.seed)
        self.device = dev = resolve_device(tc.device)
        self.precision = Precision(tc.precision, dev)
        # Data-parallel: one process per rank of an initialised torch.distributed group (torchrun).
        self.world = distributed.world_size()
        self.rank = torch.distributed.get_rank() if self.world > 1 else 0
        build.check_batch_split(cfg, self.world)

        # Domain adaptation: one training set [source ; target], target labels hidden (never read).
        data = build.load_data(cfg, dataset)
        self.uda, joined = data.uda, data.joined
        self.num_classes = joined.num_classes
        self.classes = list(joined.classes) if joined.classes is not None else None
        self.x_train, self.y_train = joined.train_x.to(dev), joined.train_y.to(dev)
        self.x_test, self.y_test = joined.test_x.to(dev), joined.test_y.to(dev)
        self.rows = pipeline_rows(self.x_train)
        self.augment: Augment = build.build_augment(cfg, joined)

        model = build.build_model(cfg, joined, dev)
        self.terms: list[WeightedTerm] = build.build_terms(cfg)  # after the model: the order of their initialisation
        self._sync_bn = self.world > 1 and tc.sync_batchnorm
        # NHWC layout for image models (faster convolutions on recent GPUs and oneDNN CPUs).
        self._channels_last = tc.channels_last and len(joined.input_shape) == 3
        self.model = build.distribute_model(model, self.terms, dev, world=self.world, sync_batchnorm=self._sync_bn,
                                            channels_last=self._channels_last)
        self.ema_model = ema_copy(self.model) if tc.ema_decay > 0 else None
        build.dry_run(cfg, self.model, self.augment, self.x_train[:2], joined.input_shape)

        self.objective, self._step_call = build.build_objective(self.model, self.terms, cfg, dev, self.world)
        self.optimizer = build.build_optimizer(cfg.optim, build.param_groups(cfg.optim, self.model, self.terms))
        self.scheduler = build.build_schedule(cfg.optim, self.optimizer, tc.iterations)
        self._rank_rng: list | None = None  # data-parallel: every rank's random state at the last checkpoint
        self.split: SSLSplit = build.draw_split(cfg, data)
        self.iteration = 0
        self.elapsed = 0.0
        checkpoint = self._open_run_dir(_resuming)
        rundir = self.rundir  # not self in the closure: a trainer dropped unfinished frees its lock at once
        self.guard = DivergenceGuard(dev, lambda: usable(rundir))
        # Domain adaptation: labeled rows = source training rows, unlabeled rows = target rows (labels hidden).
        self.selection = evaluation.Selection(self.x_train, self.y_train, self.split.validation.to(dev),
                                              self.x_test, self.y_test, uda=self.uda, world=self.world, rank=self.rank,
                                              source_index=self.split.labeled.to(dev),
                                              target_index=self.split.unlabeled.to(dev), seed=tc.seed)
        self.labeled_sampler = BatchSampler(self.split.labeled, tc.batch_labeled, tc.seed * 1000 + 1)
        self.unlabeled_sampler = BatchSampler(self.split.unlabeled, tc.batch_unlabeled, tc.seed * 1000 + 2)
        self.aug_generator = torch.Generator(device=dev).manual_seed(tc.seed * 1000 + 3)
        try:
            if checkpoint is not None:
                self.load_state_dict(checkpoint)
            if self.rundir is not None:
                self.rundir.write_run_files(cfg, self.classes, self.split, self.iteration)
        except BaseException:
            self._release()
            raise
        lo, hi = _start_range(self.iteration, dev) if self.world > 1 else (0, 0)  # every rank starts alike
        if lo != hi:
            self._release()
            raise RunDirError(f"the ranks would start at iterations {lo} and {hi} (rank 0 resumes a checkpoint): resume a "
                              f"data-parallel run with 'torchrun ... -m supercm train --resume RUN_DIR' (every rank reads "
                              f"rank 0's checkpoint)")

    def _open_run_dir(self, resuming: bool) -> dict | None:
        """Lock and check the run directory (everything else is checked by now); the checkpoint to resume."""
        if self.rundir is None:
            return None
        if self.rank != 0:
            # Data-parallel: rank 0 owns the directory; the other ranks only read the split and the
            # checkpoint it resumes from, and write nothing.
            checkpoint = None
            if resuming and (self.rundir / CHECKPOINT).exists():
                self.split = SSLSplit.load(self.rundir / SPLIT)
                checkpoint = read_checkpoint(self.rundir / CHECKPOINT)
            self.rundir = None
            return checkpoint
        self.rundir.lock()
        try:
            checkpoint, split = self.rundir.check(self.cfg, resuming)
        except BaseException:
            self._release()
            raise
        self.split = split if split is not None else self.split
        return checkpoint

    @property
    def run_dir(self) -> Path | None:
        return self.rundir.path if self.rundir is not None else None

    @property
    def scaler(self):
        """fp16's gradient scaler (None in fp32 and bf16)."""
        return self.precision.scaler

    def term(self, key: str) -> Term:
        """The term logged under ``key`` ("cm" for SuperCM, "base" for the base method, a regulariser's name)."""
        return next(t.term for t in self.terms if t.key == key)

    @property
    def method(self) -> Term:
        """The base method's term."""
        return self.term("base")

    # ------------------------------------------------------------------ run directory
    def _release(self) -> None:
        if self.rundir is not None:
            self.rundir.release()

    def close(self) -> None:
        """Let go of what outlives a run: the run directory's lock and, data-parallel, the
        ``DistributedDataParallel`` wrapper, whose reducer holds the process group. Call it on every rank
        before ``destroy_process_group()`` (:func:`supercm.distributed.leave` does, and says why dropping
        the trainer is not enough). A later :meth:`fit` or :meth:`train_step` wraps the objective again."""
        self._release()
        if self.world > 1:
            self._step_call = None

    def __del__(self) -> None:
        try:
            self._release()
        except Exception:
            pass

    # ------------------------------------------------------------------ resume
    @classmethod
    def resume(cls, run_dir: str | Path, *, dataset: ArrayDataset | DomainPair | None = None) -> "Trainer":
        """Continue the run in ``run_dir`` from its last checkpoint (same config, same split).

        Checks that ``config.yaml`` is readable, that the checkpoint was written for that
        config and split and holds finite weights; refuses with a message otherwise.
        """
        return cls(read_run_config(Path(run_dir)), run_dir, dataset=dataset, _resuming=True)

    def state_dict(self) -> dict:
        cfg = self.cfg.to_dict()
        state = {
            "iteration": self.iteration,
            "model": self.model.state_dict(),
            "terms": [t.term.state_dict() for t in self.terms],
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "labeled_sampler": self.labeled_sampler.state_dict(),
            "unlabeled_sampler": self.unlabeled_sampler.state_dict(),
            "aug_generator": self.aug_generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            **self.selection.state_dict(),
            "elapsed": self.elapsed,
            "split_sha256": self.split.checksum(),
            "config": cfg,
            "config_sha256": hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest(),
            **self.precision.state_dict(),
        }
        if self.ema_model is not None:
            state["ema_model"] = self.ema_model.state_dict()
        if self.world > 1:
            state["world_size"] = self.world
            state["rank_rng"] = self._rank_rng  # every rank's, gathered by _fit before the checkpoint
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict) -> None:
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.world:
            how = "plain 'supercm train --resume'" if saved_world == 1 else f"torchrun --nproc_per_node={saved_world}"
            raise RunDirError(
                f"the checkpoint was written by {saved_world} process(es), this run has {self.world}: resume it on "
                f"{saved_world} ({how}); another number of processes would change the batch shards and BatchNorm"
            )
        if state["split_sha256"] != self.split.checksum():
            raise RunDirError(
                "checkpoint was written for another data split than split.json; refusing to resume on a "
                "different split (delete split.json alone: the run's split is redrawn from its seed)"
            )
        try:
            self.iteration = int(state["iteration"])
            self.model.load_state_dict(state["model"])
            for t, ts in zip(self.terms, _term_states(state, self.terms)):
                t.term.load_state_dict(ts)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.labeled_sampler.load_state_dict(state["labeled_sampler"])
            self.unlabeled_sampler.load_state_dict(state["unlabeled_sampler"])
            self.aug_generator.set_state(state["aug_generator"])
            torch.set_rng_state(state["torch_rng"])
            if "cuda_rng" in state and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["cuda_rng"], self.device)
            if self.world > 1 and state.get("rank_rng"):  # this rank's own random state (dropout, VAT's start)
                own = state["rank_rng"][self.rank]
                torch.set_rng_state(own["torch"])
                if "cuda" in own and self.device.type == "cuda":
                    torch.cuda.set_rng_state(own["cuda"], self.device)
            if self.ema_model is not None:
                self.ema_model.load_state_dict(state["ema_model"])
            self.precision.load_state_dict(state)
            self.selection.load_state_dict(state)
            self.elapsed = float(state["elapsed"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
            raise RunDirError(f"the checkpoint does not fit this run's model or config ({first}); it cannot be resumed") from None
        if self.rundir is not None:
            self.rundir.checkpoint_iteration = self.iteration

    def save_checkpoint(self) -> None:
        """Write the checkpoint atomically, only when every weight and buffer is finite."""
        if self.rundir is not None:
            self._check_state_finite()
            self.rundir.save_checkpoint(self.state_dict())

    # ------------------------------------------------------------------ divergence
    def _state(self) -> tuple[dict[str, Tensor], list[Tensor]]:
        """The model's state by name, and the other state the guard watches: the terms' and the EMA model's."""
        others = [v for t in self.terms for v in t.term.state_dict().values()]
        return self.model.state_dict(), others + ([*self.ema_model.state_dict().values()] if self.ema_model else [])

    def _check_state_finite(self) -> None:
        """The guard on the loss history, then on the state (weights, BatchNorm statistics, terms, EMA)."""
        self.guard.check_history(self.iteration, self.precision.collapsed())
        self.guard.check_state(*self._state(), self.iteration)

    def _agree_on_state(self) -> None:
        """At evaluation and checkpoint iterations: stop (every rank) if any rank's loss or state
        diverged; data-parallel without synchronised BatchNorm, give every rank rank 0's BatchNorm
        statistics, so that all ranks evaluate, select and save the same model."""
        if self.world == 1:
            self._check_state_finite()
            return
        model_state, others = self._state()
        self.guard.agree([*model_state.values(), *others], self.iteration, self.precision.collapsed())
        if not self._sync_bn:
            distributed.broadcast_buffers(self.model, self.ema_model)

    # ------------------------------------------------------------------ training
    def _aug(self, x: Tensor, rows: slice | Tensor | None = None, of: int | None = None) -> Tensor:
        """Augment ``x``, the rows ``rows`` of a batch of ``of`` (drawn for all ``of``), or all of one."""
        return self.augment(x, self.aug_generator, rows, of)

    def _shard(self, n: int) -> slice:
        """This rank's rows of a global batch of ``n`` (contiguous, n / world each; all in one process)."""
        share = n // self.world
        return slice(self.rank * share, (self.rank + 1) * share)

    def _my_rows(self, rows: Tensor) -> Tensor:
        """This rank's share of a global batch of dataset rows (what its prefetch decodes)."""
        return rows[self._shard(rows.numel())]

    def _batch(self) -> Batch:
        """The step's batch. Data-parallel: every rank draws the global batch (same samplers, same seed),
        reads only its own contiguous share and augments it with the draws of the global batch: the data
        seen, and every random number, are a one-process run's."""
        lab_rows, unl_rows = self.labeled_sampler.next(), self.unlabeled_sampler.next()
        n_l, n_u = lab_rows.numel(), unl_rows.numel()
        sl, su = self._shard(n_l), self._shard(n_u)
        lab_rows, unl_rows = lab_rows[sl], unl_rows[su]
        lab, unl = to_device(lab_rows, self.device), to_device(unl_rows, self.device)
        x_l_raw, x_u_raw = self.rows.read(lab_rows, lab), self.rows.read(unl_rows, unl)
        y_l = self.y_train[lab]
        x = torch.cat([self._aug(x_l_raw, sl, n_l), self._aug(x_u_raw, su, n_u)])
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        batch = Batch(self.model, x, torch.cat([x_l_raw, x_u_raw]), y_l.numel(), y_l, self._aug, self.iteration,
                      self.cfg.train.iterations, generator=self.aug_generator, domain_adaptation=self.uda)
        if self.world > 1:
            batch.gather = distributed.all_gather  # losses of the whole batch (MCC, BNM) see every rank's rows
            batch.labeled_rows, batch.unlabeled_rows, batch.global_sizes = sl, su, (n_l, n_u)
        return batch

    def train_step(self, log_terms: bool = False, check: bool = True) -> dict[str, Any]:
        """One iteration of ``CE(labeled) + Σ_j weight_j(t)·L_j``; returns the logged scalars
        (as tensors until logged).

        The model is called once, on ``[labeled | source ; unlabeled | target]``; every term
        (SuperCM, the base method, the regularisers) reads what it needs from that one
        :class:`~supercm.methods.Batch`. ``log_terms``: also ask the terms for their extra
        scalars (SuperCM's E1..E4; extra forward-only work, asked on logged iterations only).

        ``check``: stop on a non-finite loss before the update (one host-device sync).
        :meth:`fit` passes False and checks on logged, evaluation and checkpoint iterations
        instead, so the device is never waited for in between. With ``train.precision=fp16`` a
        non-finite loss is no error: the gradient scaler skips the step and lowers its scale.
        """
        self.model.train()
        batch = self._batch()
        weighted = [(t.term, t.weight_at(self.iteration), t.key) for t in self.terms
                    if t.counts(batch.x.shape[0] > batch.num_labeled)]
        if self._step_call is None:  # closed, and training again
            self.objective, self._step_call = build.build_objective(self.model, self.terms, self.cfg, self.device, self.world)
        with self.precision.autocast():
            loss, logs = self._call_objective(batch, weighted, log_terms)
        if check and not self.precision.skips_nonfinite:
            self.guard.check_loss(loss, self.iteration)
        elif not self.precision.skips_nonfinite:
            self.guard.watch(loss, self.iteration)
        self.precision.backward_and_step(loss, self.optimizer, self.scheduler)
        for t in self.terms:
            t.term.after_step(self.model)
        if self.ema_model is not None:
            update_ema(self.ema_model, self.model, self.cfg.train.ema_decay)
        self.iteration += 1
        logs.update(loss=loss.detach(), acc_labeled=(batch.logits_labeled.argmax(1) == batch.y_labeled).float().mean(),
                    w=rampup(self.iteration - 1, self.cfg.method.rampup))
        logs["lr"] = self.optimizer.param_groups[0]["lr"]
        return logs

    def _call_objective(self, batch: Batch, weighted: list, log_terms: bool):
        try:
            return self._step_call(batch, weighted, log_terms)
        except RuntimeError as exc:
            if "finished reduction in the prior iteration" not in str(exc):
                raise
            raise ConfigError(
                "data-parallel: some trainable parameters got no gradient in the previous step (a part of the "
                "model or of a term that does not reach the loss); set train.find_unused_parameters=true "
                "(slower) or freeze them (requires_grad=False)") from None

    def evaluate_now(self, final: bool = False) -> dict[str, float | None]:
        """Validation accuracy; test accuracy only where a selection rule reports it (a new best
        validation accuracy, the final model, every evaluation in domain adaptation for the oracle)."""
        return self.selection(self.iteration, self.model, self.ema_model, final=final, on_best=self._save_best_model)

    def _save_best_model(self, val: float) -> None:
        if self.rundir is not None:
            self._check_state_finite()
            self.rundir.save_best_model(self.iteration, val, self.model.state_dict())

    def fit(self, on_evaluate: Callable[[dict], None] | None = None) -> RunResult:
        """Train to ``train.iterations``; the run directory stays locked until it returns.

        ``on_evaluate(record)`` is called after every evaluation with the record written to
        eval.jsonl (e.g. to report it to a tuner, which may stop the run by raising; the files
        are closed and the last checkpoint stays intact)."""
        if self.rundir is not None and not self.rundir.locked:  # fit() called again: lock the directory again
            self.rundir.lock()
        try:
            return self._fit(on_evaluate)
        finally:
            self._release()

    def _fit(self, on_evaluate: Callable[[dict], None] | None = None) -> RunResult:
        tc = self.cfg.train
        logs = RunLogs(self.run_dir, self.iteration, tc.iterations, tensorboard_on=tc.tensorboard,
                       progress=tc.progress and self.rank == 0)
        # Data-parallel: every rank takes part in reading the logged values.
        sink = logs.wanted or self.world > 1
        rec: dict[str, float] = {}
        # pipeline=stream: worker processes decode the batches of sampler copies (taken now, after any
        # resume) ahead of the steps; every read is checked against the trainer's own indices.
        prefetch = self.rows.prefetch([self.labeled_sampler, self.unlabeled_sampler], self._my_rows)
        try:
            start = time.perf_counter() - self.elapsed
            while self.iteration < tc.iterations:
                it = self.iteration + 1
                logging = sink and (it % tc.log_every == 0 or it == tc.iterations)
                step_logs = self.train_step(log_terms=logging, check=False)
                if logging:
                    if self.world > 1:
                        self._agree_on_state()
                    self.guard.check_history(self.iteration, self.precision.collapsed())  # nothing is logged from a diverged run
                    logs.scalars(it, read_scalars(step_logs, self.world))
                if it % tc.eval_every == 0 or it == tc.iterations:
                    self._agree_on_state()  # a model with NaN statistics scores chance: stop instead
                    rec = self.evaluate_now(final=it == tc.iterations)
                    logs.evaluation(rec, self.selection.best["val"])
                    if on_evaluate is not None:
                        on_evaluate(rec)
                logs.step()
                self.elapsed = time.perf_counter() - start
                if (tc.checkpoint_every and it % tc.checkpoint_every == 0) or it == tc.iterations:
                    logs.flush()
                    if self.world > 1:
                        self._agree_on_state()
                        self._rank_rng = distributed.gather_rng_states(self.device)
                    self.save_checkpoint()
        finally:
            prefetch.__exit__(None, None, None)
            logs.close()
        if not rec:  # resumed a finished run: evaluate the final model again
            rec = self.evaluate_now(final=True)
        result = self.selection.result(rec, ema=self.ema_model is not None, seconds=self.elapsed,
                                       iterations=self.iteration)
        if self.rundir is not None:
            self.rundir.write_summary(result.to_dict())
        return result


def _start_range(iteration: int, device: torch.device) -> tuple[int, int]:
    """Data-parallel (a collective): the lowest and highest iteration any rank starts at."""
    start = torch.tensor([iteration, -iteration], device=device)
    torch.distributed.all_reduce(start, op=torch.distributed.ReduceOp.MAX)
    return -int(start[1]), int(start[0])


def _term_states(state: dict, terms: list[WeightedTerm]) -> list[dict]:
    """The terms' states in summation order; checkpoints written before terms were one list held the
    base method's state and the regularisers' (SuperCM's term holds none: its centroids are the model's)."""
    if "terms" in state:
        return state["terms"]
    legacy = iter(state.get("regularisers", []))
    return [state["method"] if t.key == "base" else ({} if t.key == "cm" else next(legacy)) for t in terms]
