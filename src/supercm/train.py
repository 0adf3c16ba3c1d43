"""One trainer for every base method, with or without SuperCM.

Each iteration minimises ``CE(labeled) + β·L_CM(labeled + unlabeled) + δ·w(t)·L_base(unlabeled)``
(SPEC §4). The centroids are updated from the labeled features of the batch
*before* the loss. The reported model is the one with the best validation
accuracy; its test accuracy, and the final model's, are reported.

All randomness comes from seeded generators whose states are checkpointed, so a
run killed and resumed with ``--resume`` ends exactly where an uninterrupted run
ends (on the CPU, with the same thread count).

A run directory is never lost or poisoned: every file is written atomically (a
per-process temporary name, then ``os.replace``), a process holds a lock on the
directory while it trains in it, every file found there is checked against the
config before anything is written, a checkpoint is only written when every
weight and buffer is finite, and the checkpoint records the config it was
written for.

``train.precision`` runs the step under autocast (bf16, or fp16 with a gradient scaler), and the
steady-state step never waits for the device: the divergence guard and the logs are read on
logged, evaluation and checkpoint iterations only. Under an initialised ``torch.distributed``
process group (``torchrun -m supercm train``) each rank trains on its share of the global batch
and PyTorch's ``DistributedDataParallel`` averages the gradients (bucketed, overlapping the
backward pass); evaluation is sharded over the ranks; only rank 0 writes the run directory.
``train.compile`` makes the step's model call a ``torch.compile``'d one.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor, nn

from . import distributed
from .fileio import atomic_write
from .fileio import tmp_path as _tmp_path  # noqa: F401  (tests use it)
from .cm import ClusteringModule
from .config import Config, ConfigError, OptimConfig, from_dict, read_yaml_file
from .data import ArrayDataset, DomainPair, SSLSplit, joined_training_set, load_dataset, load_uda, stratified_split, uda_split
from .data.augment import Augment
from .data.stream import ImageStore, iter_rows
from .methods import Batch, Term, build_method
from .objective import Objective
from .models import CMClassifier, ImageInput, build_backbone

CHECKPOINT = "checkpoint.pt"
BEST_MODEL = "best_model.pt"  # weights of the best-validation model: what the run reports
SPLIT = "split.json"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
EVALS = "eval.jsonl"
SUMMARY = "summary.json"
CLASSES = "classes.json"  # class names in label order, where the dataset knows them
LOCK = ".lock"

#: Keys a checkpoint's config may differ in from ``config.yaml``: they change neither the
#: trajectory so far nor the data (raising ``train.iterations`` extends a finished run).
RESUMABLE_CHANGES = ("train.iterations", "train.progress", "train.tensorboard", "train.checkpoint_every")


class RunDirError(ValueError):
    """A run directory cannot be used as asked; the message names the file and the fix."""


def rampup(iteration: int, length: int) -> float:
    """w(t) = exp(−5 (1 − min(t/T, 1))²); 1 when T = 0."""
    if length <= 0:
        return 1.0
    t = min(iteration / length, 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def lr_factor(optim: OptimConfig, iteration: int) -> float:
    """The learning-rate multiplier at ``iteration`` (0-based): the annealed schedule of the
    domain-adaptation protocol, (1 + γ·i)^(−p), and/or the step decay of the SSL protocol."""
    factor = (1.0 + optim.anneal_gamma * iteration) ** (-optim.anneal_power) if optim.schedule == "annealed" else 1.0
    if optim.decay_at is not None and iteration >= optim.decay_at:
        factor *= optim.decay_factor
    return factor


def build_optimizer(optim: OptimConfig, groups: list[dict]) -> torch.optim.Optimizer:
    """Adam (the SSL protocol) or SGD with momentum and Nesterov (the domain-adaptation protocol)."""
    # foreach: one kernel per group of tensors instead of one per tensor (CPU default is per tensor).
    if optim.name == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, nesterov=optim.nesterov and optim.momentum > 0,
                               weight_decay=optim.weight_decay, foreach=True)
    return torch.optim.Adam(groups, lr=optim.lr, weight_decay=optim.weight_decay, foreach=True)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"config key 'train.device' must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={name!r} but CUDA is not available here; use train.device=cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"train.device={name!r} but this machine has {torch.cuda.device_count()} CUDA device(s) "
                f"(cuda:0..cuda:{torch.cuda.device_count() - 1}); choose one of them or auto"
            )
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"train.device={name!r} but MPS is not available here; use train.device=cpu or auto")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"config key 'train.device' must be auto, cpu, cuda or cuda:N, got {name!r}")
    return dev


#: ``train.precision`` → the autocast dtype of the step (None: no autocast).
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

#: An fp16 run whose gradient scale fell below this has skipped every step for a long while (from
#: the initial 2¹⁶, 32 skips in a row): it diverged, and is stopped like a run whose loss is NaN.
MIN_LOSS_SCALE = 2.0 ** -16


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse, with the fix, a precision the device cannot run."""
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"train.precision=bf16 but {torch.cuda.get_device_name(device)} has no bfloat16 support; "
            f"use train.precision=fp16 (or fp32)"
        )


def check_compile(device: torch.device) -> None:
    """Refuse, with the fix, ``train.compile=true`` where torch.compile cannot build kernels: on the
    CPU it needs a C++ compiler, on CUDA the Triton package (both come with a usual GPU install)."""
    import importlib.util
    import shutil

    if device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        raise ConfigError("train.compile=true on the CPU needs a C++ compiler (g++ or clang++) on PATH; "
                          "install one (e.g. apt install g++) or set train.compile=false")
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        raise ConfigError("train.compile=true on CUDA needs the triton package; pip install triton, "
                          "or set train.compile=false")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"train.compile=true is supported on cpu and cuda, not {device.type}; set train.compile=false")


def _grad_scaler(device: torch.device):
    """A gradient scaler for fp16 on ``device`` (torch.amp.GradScaler; per-device classes before 2.3)."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device.type)
    return torch.cuda.amp.GradScaler() if device.type == "cuda" else torch.cpu.amp.GradScaler()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class BatchSampler:
    """Endless batches of indices: a fresh permutation per pass, drawn from its own generator."""

    def __init__(self, indices: Tensor, batch_size: int, seed: int):
        if indices.numel() == 0 and batch_size > 0:
            raise ValueError("cannot draw batches from an empty index set")
        self.indices = indices
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.long)
        self.pos = 0

    def next(self) -> Tensor:
        out = []
        need = self.batch_size
        while need > 0:
            if self.pos >= self.order.numel():
                self.order = self.indices[torch.randperm(self.indices.numel(), generator=self.generator)]
                self.pos = 0
            take = self.order[self.pos : self.pos + need]
            self.pos += take.numel()
            need -= take.numel()
            out.append(take)
        return torch.cat(out) if out else self.indices[:0]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self.order, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order = state["order"]
        self.pos = int(state["pos"])


@dataclass
class RunResult:
    """What a finished run reports (accuracies in [0, 1])."""

    best_iteration: int
    best_val_accuracy: float
    test_accuracy_at_best_val: float
    final_val_accuracy: float
    final_test_accuracy: float
    ema_best_val_accuracy: float | None
    ema_test_accuracy_at_best_val: float | None
    seconds: float
    iterations: int
    # Domain adaptation only: target test accuracy at the evaluation where it was highest. It
    # selects on the test set (a leak; what the field's common code reports): never the headline.
    oracle_test_accuracy: float | None = None
    oracle_iteration: int | None = None

    def to_dict(self) -> dict:
        """As plain JSON values: an accuracy that does not exist (no validation split) is None, not NaN."""
        return _jsonable(dict(self.__dict__))

    def selection_rules(self) -> dict[str, float | None]:
        """Test accuracy under each named model-selection rule. In domain adaptation "validation"
        is held-out *source* data and "test" the target test set."""
        rules = {"last": self.final_test_accuracy, "best_validation": self.test_accuracy_at_best_val}
        if self.oracle_test_accuracy is not None:
            rules["oracle_test_selected"] = self.oracle_test_accuracy
        return rules


def _jsonable(record: dict) -> dict:
    """NaN/inf floats → None, so the JSON files stay valid JSON (``json`` would write bare ``NaN``)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000, index: Tensor | None = None,
             world: int = 1, rank: int = 0) -> float:
    """Top-1 accuracy of ``argmax logits`` in eval mode (restores the previous mode) over the rows
    ``index`` of ``x``/``y`` (all rows without it), read ``batch_size`` rows at a time as ``x[chunk]``
    (an :class:`~supercm.data.stream.ImageStore` decodes the chunks ahead in its worker processes).

    Data-parallel (``world`` > 1, inside an initialised process group): each rank scores its own
    contiguous share of the rows and one all-reduce adds the counts, so every rank returns the
    accuracy of the whole set after 1/world of the work (the count is exact: no padding, no
    sample seen twice)."""
    n = int(y.numel()) if index is None else int(index.numel())
    if n == 0:
        return float("nan")
    if index is None:
        index = torch.arange(n, device=y.device)
    lo, hi = rank * n // world, (rank + 1) * n // world
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=y.device)
    chunks = [index[i : min(i + batch_size, hi)] for i in range(lo, hi, batch_size)]
    for chunk, x_chunk in zip(chunks, iter_rows(x, chunks)):
        logits = model(x_chunk).logits
        correct += (logits.argmax(dim=1) == y[chunk]).sum()
    model.train(was_training)
    if world > 1:
        torch.distributed.all_reduce(correct)
    return int(correct) / n


def _read_scalars(logs: dict[str, Any], world: int = 1) -> dict[str, float]:
    """The logged values as Python floats, with one device read for all the tensors among them
    (``float(t)`` per value would wait for the device once per value). Data-parallel (``world`` > 1):
    the tensors are averaged over the ranks (each is a mean over the rank's equal share of the batch)."""
    tensors = {k: v.detach().reshape(()) for k, v in logs.items() if isinstance(v, Tensor)}
    out = {k: float(v) for k, v in logs.items() if not isinstance(v, Tensor)}
    if tensors:
        dtype = torch.float32
        for v in tensors.values():
            dtype = torch.promote_types(dtype, v.dtype)
        if any(v.device.type == "mps" for v in tensors.values()):
            dtype = torch.float32  # no float64 there
        stacked = torch.stack([v.to(dtype) for v in tensors.values()])
        if world > 1:
            torch.distributed.all_reduce(stacked)
            stacked /= world
        values = stacked.tolist()
        out.update(zip(tensors, values))
    return {k: out[k] for k in logs}


def _all_finite(tensors) -> bool:
    """Whether every floating-point tensor is free of NaN and inf (one host sync)."""
    flags = [torch.isfinite(t).all() for t in tensors if isinstance(t, Tensor) and t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def _atomic_save(obj: Any, path: Path) -> None:
    # Serialised in memory first: torch.save straight to a full disk fails with a zip-writer
    # message ("unexpected pos"); a plain write fails with ENOSPC, which names the problem.
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue())


def _truncate_jsonl(path: Path, last_iteration: int) -> None:
    """Drop lines written after the checkpoint we resume from (they will be written again).

    The kept prefix is written to a temporary file that replaces the log atomically: a kill
    at any moment leaves either the whole old log or the truncated one.
    """
    if not path.exists():
        return
    data = path.read_bytes()
    keep = 0
    for line in data.splitlines(keepends=True):
        try:
            if not line.endswith(b"\n") or json.loads(line)["iteration"] > last_iteration:
                break
        except (ValueError, KeyError, TypeError):
            break  # a line cut by the kill: drop it and everything after
        keep += len(line)
    if keep < len(data):
        atomic_write(path, data[:keep])


def _log_iterations(path: Path) -> int:
    """The number of complete records in a jsonl log (0 when absent)."""
    if not path.exists():
        return 0
    return sum(1 for line in path.read_bytes().splitlines() if line.strip())


def _config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dictionaries."""
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict) and k != "options" and k != "augmentation":
            keys += _config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(prefix + k)
    return keys


def read_run_config(run_dir: Path) -> Config:
    """The config saved in ``run_dir/config.yaml``, or a :class:`RunDirError`/:class:`ConfigError` saying why not."""
    path = run_dir / CONFIG
    if not path.is_file():
        raise RunDirError(f"{run_dir} is not a run directory (no {CONFIG}); start a run with 'supercm train CONFIG'")
    data = read_yaml_file(path)
    if not data:
        raise RunDirError(
            f"{path} is empty or truncated, so the run's config is unknown; restore it "
            f"(the checkpoint records the config it was written for) or start a new run directory"
        )
    try:
        return from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


#: Descriptors of the run-directory locks this process holds.
_HELD_LOCKS: set[int] = set()


def _close_inherited_locks() -> None:
    """In a forked child (a DataLoader worker of the stream pipeline): close the parent's lock
    descriptors. A ``flock`` belongs to the open file, which a fork shares: without this, the workers of
    a killed trainer would keep its run directory locked until they notice their parent is gone."""
    for fd in _HELD_LOCKS:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


class _DirLock:
    """An exclusive ``flock`` on ``run_dir/.lock``: one process trains in a directory at a time."""

    def __init__(self, run_dir: Path):
        import fcntl

        self._fcntl = fcntl
        path = run_dir / LOCK
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RunDirError(f"cannot write in the run directory {run_dir}: {exc.strerror}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            raise RunDirError(
                f"{run_dir} is in use: a run is training in it (process {holder}); wait for it to end "
                f"or choose another run directory (nothing was written)"
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        _HELD_LOCKS.add(self.fd)

    def release(self) -> None:
        if self.fd is not None:
            _HELD_LOCKS.discard(self.fd)
            self._fcntl.flock(self.fd, self._fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class Trainer:
    """Trains one configuration. ``run_dir=None`` keeps everything in memory (no files).

    Usage::

        result = Trainer(cfg, "runs/exp1").fit()
        result = Trainer.resume("runs/exp1").fit()

    Everything that can be checked is checked before a file is written: the config, the
    device, the model against the data's shape, and every file already in ``run_dir``.
    A directory that holds a checkpoint is only continued by :meth:`resume`; one that
    holds no checkpoint (a run that failed before its first one) may be reused.
    """

    def __init__(
        self, cfg: Config, run_dir: str | Path | None = None, *, dataset: ArrayDataset | None = None,
        _resuming: bool = False,
    ):
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._lock: _DirLock | None = None
        self._checkpoint_iteration: int | None = None
        from_dict(cfg.to_dict())  # a Config built by hand in Python is checked like a file
        tc = cfg.train
        seed_everything(tc.seed)
        self.device = resolve_device(tc.device)
        check_precision(tc.precision, self.device)
        # Data-parallel: one process per rank of an initialised torch.distributed group (torchrun).
        self.world = distributed.world_size()
        self.rank = torch.distributed.get_rank() if self.world > 1 else 0
        for key in ("batch_labeled", "batch_unlabeled"):
            if getattr(tc, key) % self.world:
                raise ConfigError(f"train.{key}={getattr(tc, key)} must be divisible by the number of processes "
                                  f"({self.world}): it is the global batch, split evenly over the ranks")

        # Domain adaptation: one training set [source ; target], target labels hidden (never read).
        self.uda = cfg.data.target is not None
        if dataset is None:
            if self.uda:
                dataset = load_uda(cfg.data.name, cfg.data.target, cfg.data.root, **self._loader_kwargs())
            else:
                dataset = load_dataset(cfg.data.name, cfg.data.root, **self._loader_kwargs())
        if self.uda != isinstance(dataset, DomainPair):
            raise ValueError("a domain pair (supercm.data.DomainPair) goes with data.target set, an ArrayDataset without it")
        data = joined_training_set(dataset) if self.uda else dataset
        self.num_classes = data.num_classes
        self.classes = list(data.classes) if data.classes is not None else None
        dev = self.device
        self.x_train = data.train_x.to(dev)
        self.y_train = data.train_y.to(dev)
        self.x_test, self.y_test = data.test_x.to(dev), data.test_y.to(dev)
        aug = data.augment if cfg.data.augmentation is None else cfg.data.augmentation
        self.augment = Augment.from_dict({**(aug or {}), "draw": cfg.data.augment_draw}) if cfg.data.augment else Augment()

        try:
            backbone = build_backbone(cfg.model.backbone, data.input_shape, **cfg.model.options)
        except ValueError as exc:
            raise ConfigError(f"model.backbone={cfg.model.backbone!r} with model.options={cfg.model.options}: {exc}") from None
        head = ClusteringModule(
            backbone.out_features,
            data.num_classes,
            centroids=cfg.cm.centroids,
            temperature=cfg.cm.temperature,
            momentum=cfg.cm.momentum,
            alpha=cfg.cm.alpha,
            # Inputs come from our own model; skip the per-step checks (and their CUDA syncs).
            check_inputs=False,
        )
        # Images kept as uint8 (supercm.data.images) get the model's input stage: scale, centre crop, normalise.
        preprocess = ImageInput(**data.input_transform) if data.input_transform else None
        self.model = CMClassifier(backbone, head, preprocess).to(dev)
        self._sync_bn = self.world > 1 and tc.sync_batchnorm
        # NHWC layout for image models (faster convolutions on recent GPUs and oneDNN CPUs).
        self._channels_last = tc.channels_last and len(data.input_shape) == 3
        if self._channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self._sync_bn:
            self.model = distributed.convert_sync_batchnorm(self.model)
        # The objective's terms, in the order they are summed: SuperCM (when β > 0), the base
        # method, the listed regularisers. (SuperCM first keeps the floating-point sum, and so
        # every run, identical to the trainer's earlier form CE + β·L_CM + δ·w·L_base.)
        self.method = build_method(cfg.method.name, cfg.method.options)
        self.supercm = build_method("supercm", {"features": cfg.cm.features, "centroid_source": cfg.cm.centroid_source}) \
            if cfg.cm.beta > 0 else None
        self.regularisers = [build_method(r.name, r.options) for r in cfg.regularisers]
        for term in self.terms:
            term.setup(self.model)
            if self._sync_bn:
                distributed.convert_sync_batchnorm(term)
            term.to(dev)
        if self.world > 1:  # every rank starts from rank 0's weights (the seeds agree; this makes sure)
            for t in [*self.model.state_dict().values(), *(v for term in self.terms for v in term.state_dict().values())]:
                torch.distributed.broadcast(t, 0)
        self.ema_model = copy.deepcopy(self.model).requires_grad_(False) if tc.ema_decay > 0 else None
        self._dry_run(data.input_shape)

        self.objective, self._step_call = self._build_objective()
        self.optimizer = build_optimizer(cfg.optim, self._param_groups())
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, partial(lr_factor, cfg.optim))
        # Mixed precision: autocast around the model's and the terms' forward work; fp16 also scales
        # the loss (and skips a step whose gradients overflow), bf16 has float32's range and does not.
        self.autocast_dtype = AUTOCAST_DTYPES[tc.precision]
        self.scaler = _grad_scaler(self.device) if tc.precision == "fp16" else None
        # The divergence guard of fit(): the first iteration whose loss was not finite (0: none) and
        # that loss, kept on the device and read only on logged, evaluation and checkpoint steps.
        self._first_nonfinite = torch.zeros((), dtype=torch.long, device=self.device)
        self._nonfinite_loss = torch.zeros((), device=self.device)
        self._rank_rng: list | None = None  # data-parallel: every rank's random state at the last checkpoint
        try:
            if self.uda:
                self.split = uda_split(dataset.source.train_y, dataset.target.train_y.numel(),
                                       cfg.data.num_validation, data.num_classes, tc.seed)
            else:
                self.split = stratified_split(
                    data.train_y, cfg.data.num_labeled, cfg.data.num_validation, data.num_classes, tc.seed
                )
        except ValueError as exc:
            raise ConfigError(f"data.num_labeled / data.num_validation: {exc}") from None

        self.iteration = 0
        self.best = {"iteration": 0, "val": -1.0, "test": float("nan")}
        self.ema_best = {"iteration": 0, "val": -1.0, "test": float("nan")}
        self.oracle = {"iteration": 0, "test": -1.0}
        self.elapsed = 0.0
        self._tb = None
        checkpoint = None
        if self.run_dir is not None and self.rank != 0:
            # Data-parallel: rank 0 owns the directory; the other ranks only read the split and the
            # checkpoint it resumes from, and write nothing.
            if _resuming and (self.run_dir / CHECKPOINT).exists():
                self.split = SSLSplit.load(self.run_dir / SPLIT)
                checkpoint = self._read_checkpoint(self.run_dir / CHECKPOINT)
            self.run_dir = None
        if self.run_dir is not None:
            # Everything above is checked; only now is the directory touched.
            self._lock = self._take_run_dir()
            try:
                checkpoint = self._check_run_dir(_resuming)
            except BaseException:
                self._release()
                raise
        self.val_idx = self.split.validation.to(dev)
        self.labeled_sampler = BatchSampler(self.split.labeled, tc.batch_labeled, tc.seed * 1000 + 1)
        self.unlabeled_sampler = BatchSampler(self.split.unlabeled, tc.batch_unlabeled, tc.seed * 1000 + 2)
        self.aug_generator = torch.Generator(device=dev).manual_seed(tc.seed * 1000 + 3)
        if self.run_dir is not None:
            try:
                if checkpoint is not None:
                    self.load_state_dict(checkpoint)
                self._write_run_files()
            except BaseException:
                self._release()
                raise
        elif checkpoint is not None:
            self.load_state_dict(checkpoint)
        if self.world > 1:  # every rank must start where the others do; all of them stop if not
            start = torch.tensor([self.iteration, -self.iteration], device=dev)
            torch.distributed.all_reduce(start, op=torch.distributed.ReduceOp.MAX)
            if int(start[0]) != -int(start[1]):
                self._release()
                raise RunDirError(f"the ranks would start at iterations {-int(start[1])} and {int(start[0])} (rank 0 "
                                  f"resumes a checkpoint): resume a data-parallel run with 'torchrun ... -m supercm train --resume RUN_DIR' "
                                  f"(every rank reads rank 0's checkpoint)")

    def _build_objective(self) -> tuple[Objective, Callable]:
        """The step's objective over the terms that count in this run (configured weight > 0, and an
        unlabeled batch for those that need one: the same set at every step), and the callable the
        step calls: the objective itself, or the objective under ``DistributedDataParallel`` in a
        data-parallel run. With ``train.compile`` the one model call's input stage and backbone go
        through ``torch.compile`` (:meth:`CMClassifier.compiled`)."""
        tc = self.cfg.train
        active = [t for t, w, _ in self._weighted_terms(0)
                  if w > 0 and (tc.batch_unlabeled > 0 or not t.needs_unlabeled)]
        model_call = None
        if tc.compile:
            check_compile(self.device)
            model_call = self.model.compiled()
        objective = Objective(self.model, active, model_call)
        if self.world == 1:
            return objective, objective
        from torch.nn.parallel import DistributedDataParallel

        # Buffers: BatchNorm statistics are the global batch's with train.sync_batchnorm, else each
        # rank's own until _agree_on_state gives every rank rank 0's (no broadcast every step).
        # gradient_as_bucket_view: the gradients are views into DDP's communication buckets (no copy
        # in or out of them, one gradient's memory less).
        # PyTorch ≥ 2.14 names "no buffer broadcast before each forward" forward_sync_buffers (and
        # deprecates broadcast_buffers); both still sync the buffers once at construction, where
        # every rank's are rank 0's already.
        import inspect

        new_name = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        no_sync = {"forward_sync_buffers": False} if new_name else {"broadcast_buffers": False}
        ddp = DistributedDataParallel(objective, device_ids=None, **no_sync,
                                      find_unused_parameters=tc.find_unused_parameters, gradient_as_bucket_view=True)
        return objective, ddp

    @property
    def terms(self) -> list[Term]:
        """Every loss term of the objective besides CE, in the order they are summed."""
        return [t for t in (self.supercm, self.method, *self.regularisers) if t is not None]

    def _weighted_terms(self, iteration: int | None = None) -> list[tuple[Term, float, str]]:
        """(term, weight at ``iteration`` (default: this one), log key) for every term, in the order
        they are summed. A weight is 0 at every iteration or at none (the ramp-up is positive)."""
        cfg, it = self.cfg, self.iteration if iteration is None else iteration
        out = []
        if self.supercm is not None:
            out.append((self.supercm, cfg.cm.beta, "cm"))
        out.append((self.method, cfg.method.delta * rampup(it, cfg.method.rampup), "base"))
        for term, rc in zip(self.regularisers, cfg.regularisers):
            out.append((term, rc.weight * rampup(it, rc.rampup), rc.name))
        return out

    def _param_groups(self) -> list[dict]:
        """The model's parameters (the backbone's at ``optim.backbone_lr_mult`` × lr when that is
        not 1), then the trainable parameters the terms own (DANN's discriminator). A backbone with a
        ``pretrained`` part (the ResNets) gets the multiplier on that part only: its bottleneck
        trains at lr × 1 with the head, as in the field's code."""
        mult = self.cfg.optim.backbone_lr_mult
        if mult == 1.0:
            groups = [{"params": list(self.model.parameters())}]
        else:
            backbone = self.model.backbone
            slow = list(getattr(backbone, "pretrained", backbone).parameters())
            ids = {id(p) for p in slow}
            groups = [{"params": slow, "lr": self.cfg.optim.lr * mult},
                      {"params": [p for p in self.model.parameters() if id(p) not in ids]}]
        own = [p for t in self.terms for p in t.parameters() if p.requires_grad]
        if own:
            groups.append({"params": own})
        return groups

    def _loader_kwargs(self) -> dict:
        kw = dict(self.cfg.data.options)
        if self.cfg.data.download:
            kw["download"] = True
        return kw

    @torch.no_grad()
    def _dry_run(self, input_shape: tuple[int, ...]) -> None:
        """Two samples through the augmentation and the model (eval mode: no statistics move, no
        random numbers drawn), so a backbone or augmentation that does not fit the data fails
        here, with a message, instead of at the first step after files were written."""
        x = self.x_train[:2]
        asked = self.cfg.data.augmentation or {}
        if self.cfg.data.augment and len(input_shape) != 3 and (asked.get("flip") or asked.get("crop_pad")):
            raise ConfigError(
                f"data.augmentation asks for flip/crop_pad, which need images, but {self.cfg.data.name!r} gives "
                f"vectors of shape {input_shape}; remove them (noise_std works on vectors) or load images"
            )
        try:
            self.augment(x, torch.Generator(device=self.device).manual_seed(0))
        except (RuntimeError, ValueError, IndexError) as exc:
            raise ConfigError(f"data.augmentation does not fit inputs of shape {input_shape}: {exc}") from None
        was_training = self.model.training
        self.model.eval()
        try:
            self.model(x)
        except (RuntimeError, ValueError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(
                f"model.backbone={self.cfg.model.backbone!r} does not fit the inputs of {self.cfg.data.name!r} "
                f"(shape {input_shape}): {first}"
            ) from None
        finally:
            self.model.train(was_training)

    # ------------------------------------------------------------------ run directory
    def _take_run_dir(self) -> _DirLock:
        d = self.run_dir
        if d.exists() and not d.is_dir():
            raise RunDirError(f"run directory {d} exists and is not a directory; choose another --run-dir")
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"cannot create the run directory {d}: {exc.strerror or exc}") from None
        return _DirLock(d)

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def close(self) -> None:
        """Let go of what outlives a run: the run directory's lock and, data-parallel, the
        ``DistributedDataParallel`` wrapper, whose reducer holds the process group.

        Call it on every rank before ``torch.distributed.destroy_process_group()`` (the command
        line does, on success and on error). Dropping the trainer is not enough: the first
        trainer built in a process can stay referenced until interpreter exit (a frame of its
        ``__init__`` is held by an exception PyTorch keeps from a lazy import), and a gloo group
        torn down then, from the wrapper's destructor, can abort the process (SIGABRT, "terminate
        called without an active exception"). A later :meth:`fit` or :meth:`train_step` builds
        the wrapper again (a collective: every rank calls it)."""
        self._release()
        if self.world > 1:
            self._step_call = None

    def __del__(self) -> None:
        try:
            self._release()
        except Exception:
            pass

    def _check_run_dir(self, resuming: bool) -> dict | None:
        """Check every file in the run directory against the config before anything is written.

        Sets ``self.split`` (the saved one where it belongs to this run) and returns the
        checkpoint to load (None when there is none).
        """
        d = self.run_dir
        ckpt_path, cfg_path, split_path = d / CHECKPOINT, d / CONFIG, d / SPLIT
        has_ckpt = ckpt_path.exists()
        if has_ckpt and not resuming:
            raise RunDirError(
                f"{d} already holds a run ({CHECKPOINT}); continue it with 'supercm train --resume {d}' "
                f"(Trainer.resume in Python) or choose another run directory (nothing was overwritten)"
            )
        same_config = False
        if cfg_path.exists():
            try:
                saved = read_run_config(d)
            except (ConfigError, RunDirError):
                if resuming or has_ckpt:
                    raise
                saved = None  # no checkpoint depends on it: the directory is reused
            # Compared after filling defaults, so a run saved before a new config key existed
            # (with that key's default behaviour) still resumes.
            same_config = saved is not None and saved.to_dict() == self.cfg.to_dict()
            if resuming and not same_config:
                raise RunDirError(f"{d} holds a run with another config; resume it with its own config ({CONFIG})")
        if not has_ckpt:
            if (d / SUMMARY).exists():
                raise RunDirError(
                    f"{d} holds {SUMMARY} but no {CHECKPOINT} (a finished run whose checkpoint was removed); "
                    f"choose another run directory (nothing was overwritten)"
                )
            if not same_config:
                results = [n for n in (METRICS, EVALS) if _log_iterations(d / n) > 0]
                results += [BEST_MODEL] if (d / BEST_MODEL).exists() else []
                if results:
                    raise RunDirError(
                        f"{d} holds results of a run with another config ({', '.join(results)}) and no checkpoint; "
                        f"choose another run directory, or delete those files to reuse it (nothing was overwritten)"
                    )
        if split_path.exists() and (has_ckpt or same_config):
            try:
                self.split = SSLSplit.load(split_path)  # never redrawn on resume
            except (ValueError, KeyError, TypeError) as exc:
                raise RunDirError(str(exc)) from None
        checkpoint = self._read_checkpoint(ckpt_path) if has_ckpt else None
        if checkpoint is not None:
            self._check_checkpoint_config(checkpoint)
        return checkpoint

    def _read_checkpoint(self, path: Path) -> dict:
        """The checkpoint's state, or a :class:`RunDirError` when it is corrupt or not ours."""
        try:
            # On the CPU: RNG states must stay CPU byte tensors; load_state_dict moves weights and
            # optimizer state to their own devices. weights_only: a crafted file runs no code.
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            reason = " ".join(str(exc).split())[:120] or type(exc).__name__
            raise RunDirError(
                f"{path} is corrupt or not a SuperCM checkpoint ({reason}); it cannot be resumed: "
                f"start the run again in a new run directory"
            ) from None
        needed = ("iteration", "model", "method", "optimizer", "scheduler", "labeled_sampler", "split_sha256")
        missing = [k for k in needed if not isinstance(state, dict) or k not in state]
        if missing:
            raise RunDirError(
                f"{path} is not a SuperCM checkpoint (no {missing[0]!r}); it cannot be resumed: "
                f"start the run again in a new run directory"
            )
        if not _all_finite(state["model"].values()):
            raise RunDirError(
                f"{path} holds non-finite weights (NaN or inf: the run diverged); it cannot be resumed: "
                f"start again with a lower optim.lr or cm.beta in a new run directory"
            )
        return state

    def _check_checkpoint_config(self, state: dict) -> None:
        if "config" not in state:  # written before checkpoints recorded their config
            return
        try:
            saved = from_dict(state["config"]).to_dict()
        except ConfigError:
            saved = state["config"]
        diff = [k for k in _config_diff(saved, self.cfg.to_dict()) if k not in RESUMABLE_CHANGES]
        if diff:
            raise RunDirError(
                f"{self.run_dir / CHECKPOINT} was written for another config than {self.run_dir / CONFIG} "
                f"(they differ in {', '.join(diff[:5])}); restore the config.yaml this run was started with"
            )

    def _write_run_files(self) -> None:
        """config.yaml and split.json (atomically), and logs cut back to the checkpoint's iteration."""
        d = self.run_dir
        text = yaml.safe_dump(self.cfg.to_dict(), sort_keys=False)
        if not (d / CONFIG).exists() or (d / CONFIG).read_text() != text:
            if not (d / CHECKPOINT).exists():
                atomic_write(d / CONFIG, text)
        if self.classes is not None:  # the label order of the data (e.g. Office-Home's official list order)
            text = json.dumps(self.classes, indent=1)
            if not (d / CLASSES).exists() or (d / CLASSES).read_text() != text:
                atomic_write(d / CLASSES, text)
        split_path = d / SPLIT
        if not split_path.exists() or self._saved_split_differs(split_path):
            self.split.save(split_path)
        # Lines logged after the checkpoint belong to the lost part of the run.
        _truncate_jsonl(d / METRICS, self.iteration)
        _truncate_jsonl(d / EVALS, self.iteration)

    def _saved_split_differs(self, path: Path) -> bool:
        try:
            return json.loads(path.read_text()).get("sha256") != self.split.checksum()
        except (ValueError, OSError, AttributeError):
            return True

    # ------------------------------------------------------------------ resume
    @classmethod
    def resume(cls, run_dir: str | Path, *, dataset: ArrayDataset | None = None) -> "Trainer":
        """Continue the run in ``run_dir`` from its last checkpoint (same config, same split).

        Checks that ``config.yaml`` is readable, that the checkpoint was written for that
        config and split and holds finite weights; refuses with a message otherwise.
        """
        run_dir = Path(run_dir)
        cfg = read_run_config(run_dir)
        return cls(cfg, run_dir, dataset=dataset, _resuming=True)

    def state_dict(self) -> dict:
        cfg = self.cfg.to_dict()
        state = {
            "iteration": self.iteration,
            "model": self.model.state_dict(),
            "method": self.method.state_dict(),
            "regularisers": [r.state_dict() for r in self.regularisers],
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "labeled_sampler": self.labeled_sampler.state_dict(),
            "unlabeled_sampler": self.unlabeled_sampler.state_dict(),
            "aug_generator": self.aug_generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "best": dict(self.best),
            "ema_best": dict(self.ema_best),
            "oracle": dict(self.oracle),
            "elapsed": self.elapsed,
            "split_sha256": self.split.checksum(),
            "config": cfg,
            "config_sha256": hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest(),
        }
        if self.ema_model is not None:
            state["ema_model"] = self.ema_model.state_dict()
        if self.scaler is not None:
            state["grad_scaler"] = self.scaler.state_dict()
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
            self.method.load_state_dict(state["method"])
            for r, rs in zip(self.regularisers, state.get("regularisers", [])):
                r.load_state_dict(rs)
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
            if self.scaler is not None:
                self.scaler.load_state_dict(state["grad_scaler"])
            self.best, self.ema_best = dict(state["best"]), dict(state["ema_best"])
            self.oracle = dict(state.get("oracle", self.oracle))
            self.elapsed = float(state["elapsed"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
            raise RunDirError(f"the checkpoint does not fit this run's model or config ({first}); it cannot be resumed") from None
        self._checkpoint_iteration = self.iteration

    def save_checkpoint(self) -> None:
        """Write the checkpoint atomically, only when every weight and buffer is finite."""
        if self.run_dir is not None:
            self._check_state_finite()
            _atomic_save(self.state_dict(), self.run_dir / CHECKPOINT)
            self._checkpoint_iteration = self.iteration

    # ------------------------------------------------------------------ divergence
    def _usable_checkpoint(self) -> str:
        """What is left to use after a divergence, truthfully."""
        if self.run_dir is None:
            return "nothing was saved (no run directory)"
        if self._checkpoint_iteration is None:
            return f"no checkpoint was written before it (nothing in {self.run_dir} holds trained weights)"
        return (f"{self.run_dir / CHECKPOINT} from iteration {self._checkpoint_iteration} is intact and holds "
                f"finite weights (it was not overwritten)")

    def _check_finite(self, loss: Tensor) -> None:
        """The divergence guard on the loss, called by :meth:`train_step` (``check=True``) before the
        update: one host-device sync per step."""
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(
                f"loss became {loss.item()} at iteration {self.iteration}; lower optim.lr or cm.beta; "
                f"{self._usable_checkpoint()}"
            )

    def _watch_loss(self, loss: Tensor) -> None:
        """The divergence guard without a sync: remember, on the device, the first iteration whose
        loss was not finite; :meth:`_check_loss_history` reads it before anything is logged or written."""
        loss = loss.detach()
        new = ~torch.isfinite(loss) & (self._first_nonfinite == 0)
        self._first_nonfinite = torch.where(new, self.iteration + 1, self._first_nonfinite)
        self._nonfinite_loss = torch.where(new, loss.to(self._nonfinite_loss.dtype), self._nonfinite_loss)

    def _check_loss_history(self) -> None:
        """Stop if a loss since the start was not finite (bf16/fp32), or if fp16's gradient scale
        collapsed (every step overflowing and skipped). One host-device sync."""
        first = int(self._first_nonfinite)
        if first:
            value = float(self._nonfinite_loss)  # finite (0) on a data-parallel rank whose own loss stayed finite
            raise FloatingPointError(
                f"loss became {value if not math.isfinite(value) else 'NaN or inf'} at iteration {first} (found at iteration "
                f"{self.iteration}: fit() reads the loss on logged, evaluation and checkpoint iterations, so "
                f"iterations {first}..{self.iteration} were not kept); lower optim.lr or cm.beta; "
                f"{self._usable_checkpoint()}"
            )
        if self.scaler is not None and self.scaler.is_enabled() and self.scaler.get_scale() < MIN_LOSS_SCALE:
            raise FloatingPointError(
                f"the fp16 gradient scale fell to {self.scaler.get_scale():.3g} by iteration {self.iteration}: "
                f"every recent step overflowed (NaN or inf gradients) and was skipped, so the run diverged; "
                f"lower optim.lr or cm.beta, or use train.precision=bf16; {self._usable_checkpoint()}"
            )

    def _check_state_finite(self) -> None:
        """The divergence guard on the state: weights, BatchNorm statistics, the method's and EMA models'.

        The loss can stay finite while BatchNorm running statistics overflow (they are only
        used in eval mode), so the state itself is checked before every evaluation and checkpoint.
        """
        self._check_loss_history()  # the loss's own verdict first: it names the iteration
        tensors = list(self.model.state_dict().values()) + [v for t in self.terms for v in t.state_dict().values()]
        if self.ema_model is not None:
            tensors += list(self.ema_model.state_dict().values())
        if not _all_finite(tensors):
            bad = next(n for n, t in self.model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()) \
                if not _all_finite(self.model.state_dict().values()) else "the method's or EMA model's state"
            raise FloatingPointError(
                f"the model diverged by iteration {self.iteration}: {bad} holds NaN or inf (the loss can stay finite "
                f"while BatchNorm statistics overflow); lower optim.lr or cm.beta; {self._usable_checkpoint()}"
            )

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

    def _agree_on_state(self) -> None:
        """Data-parallel, at evaluation and checkpoint iterations: stop every rank if any rank's loss
        or state diverged, and (without synchronised BatchNorm) give every rank rank 0's BatchNorm
        statistics, so that all ranks evaluate, select and save the same model."""
        if self.world == 1:
            self._check_state_finite()
            return
        first = torch.where(self._first_nonfinite > 0, self._first_nonfinite, torch.iinfo(torch.long).max)
        finite = torch.tensor([1.0 if _all_finite(self._state_tensors()) else 0.0], device=self.device)
        flags = torch.stack([first.double(), -finite[0].double()])
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MIN)
        if flags[0] < torch.iinfo(torch.long).max:
            self._first_nonfinite = flags[0].long()
        if flags[1] > -1:  # some rank holds NaN/inf: every rank raises, the checkpoint stays
            self._check_loss_history()
            raise FloatingPointError(
                f"the model diverged by iteration {self.iteration} on at least one rank (NaN or inf in its "
                f"weights or BatchNorm statistics); lower optim.lr or cm.beta; {self._usable_checkpoint()}"
            )
        self._check_loss_history()
        if not self._sync_bn:
            for model in (self.model, self.ema_model):
                if model is not None:
                    for b in model.buffers():
                        torch.distributed.broadcast(b, 0)

    def _gather_rng_states(self) -> None:
        """Every rank's random state, for rank 0's checkpoint (a collective)."""
        own = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            own["cuda"] = torch.cuda.get_rng_state(self.device)
        states: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(states, own)
        self._rank_rng = states

    def _state_tensors(self) -> list[Tensor]:
        tensors = list(self.model.state_dict().values()) + [v for t in self.terms for v in t.state_dict().values()]
        if self.ema_model is not None:
            tensors += list(self.ema_model.state_dict().values())
        return tensors

    def _autocast(self):
        """Autocast to ``train.precision``'s dtype (a no-op context for fp32)."""
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _indices_to_device(self, idx: Tensor) -> Tensor:
        """Batch indices (drawn on the CPU) to the device without waiting for it: a plain ``.to(cuda)``
        from pageable memory synchronises the stream; from pinned memory it is asynchronous."""
        if self.device.type == "cuda":
            return idx.pin_memory().to(self.device, non_blocking=True)
        return idx.to(self.device)

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
        model = self.model
        model.train()
        lab_rows, unl_rows = self.labeled_sampler.next(), self.unlabeled_sampler.next()
        n_l, n_u = lab_rows.numel(), unl_rows.numel()
        # Data-parallel: every rank draws the global batch (same samplers, same seed), reads only its
        # own contiguous share and augments it with the draws of the global batch: the data seen, and
        # every random number, are a one-process run's.
        sl, su = self._shard(n_l), self._shard(n_u)
        lab_rows, unl_rows = lab_rows[sl], unl_rows[su]
        lab, unl = self._indices_to_device(lab_rows), self._indices_to_device(unl_rows)
        if isinstance(self.x_train, ImageStore):  # pipeline=stream: read by the CPU indices, checked against its prefetch
            x_l_raw, x_u_raw = self.x_train[lab_rows], self.x_train[unl_rows]
        else:
            x_l_raw, x_u_raw = self.x_train[lab], self.x_train[unl]
        y_l = self.y_train[lab]
        x_l, x_u = self._aug(x_l_raw, sl, n_l), self._aug(x_u_raw, su, n_u)
        x = torch.cat([x_l, x_u])
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        batch = Batch(model, x, torch.cat([x_l_raw, x_u_raw]), y_l.numel(), y_l, self._aug,
                      self.iteration, self.cfg.train.iterations, generator=self.aug_generator)
        if self.world > 1:
            batch.gather = distributed.all_gather  # losses of the whole batch (MCC, BNM) see every rank's rows
            batch.labeled_rows, batch.unlabeled_rows, batch.global_sizes = sl, su, (n_l, n_u)
        terms = [(t, w, key) for t, w, key in self._weighted_terms()
                 if w > 0 and (unl.numel() > 0 or not t.needs_unlabeled)]
        if self._step_call is None:  # closed, and training again
            self.objective, self._step_call = self._build_objective()
        with self._autocast():
            try:
                loss, logs = self._step_call(batch, terms, log_terms)
            except RuntimeError as exc:
                if "finished reduction in the prior iteration" not in str(exc):
                    raise
                raise ConfigError(
                    "data-parallel: some trainable parameters got no gradient in the previous step (a part of the "
                    "model or of a term that does not reach the loss); set train.find_unused_parameters=true "
                    "(slower) or freeze them (requires_grad=False)") from None
        if self.scaler is None:
            if check:
                self._check_finite(loss)
            else:
                self._watch_loss(loss)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()  # data-parallel: DistributedDataParallel averages the gradients meanwhile
            self.optimizer.step()
            self.scheduler.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)  # skipped when the gradients hold NaN or inf
            self.scaler.update()
            with warnings.catch_warnings():
                # The schedule follows the iteration, skipped or not; a skipped first step makes
                # LambdaLR warn that optimizer.step() was not called.
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)`")
                self.scheduler.step()
        for term in self.terms:
            term.after_step(model)
        if self.ema_model is not None:
            self._update_ema()
        self.iteration += 1
        logs.update(loss=loss.detach(), acc_labeled=(batch.logits_labeled.argmax(1) == y_l).float().mean(),
                    w=rampup(self.iteration - 1, self.cfg.method.rampup))
        logs["lr"] = self.optimizer.param_groups[0]["lr"]
        return logs

    @torch.no_grad()
    def _update_ema(self) -> None:
        d = self.cfg.train.ema_decay
        # One fused kernel per group of tensors instead of one per parameter (same numbers).
        torch._foreach_lerp_(list(self.ema_model.parameters()), [p.detach() for p in self.model.parameters()], 1.0 - d)
        for e, b in zip(self.ema_model.buffers(), self.model.buffers()):
            e.copy_(b)

    def evaluate_now(self, final: bool = False) -> dict[str, float | None]:
        """Validation accuracy; test accuracy only where it is reported (a new best validation
        accuracy, or the final model), so the test set is never scanned for nothing."""
        rec: dict[str, float | None] = {"iteration": self.iteration}
        models = [("", self.model, self.best)]
        if self.ema_model is not None:
            models.append(("ema_", self.ema_model, self.ema_best))
        for prefix, model, best in models:
            val = evaluate(model, self.x_train, self.y_train, index=self.val_idx, world=self.world, rank=self.rank)
            improved = val > best["val"]
            # Domain adaptation scans the target test set at every evaluation, for the (labelled)
            # oracle rule; the other rules never look at it to choose.
            test = (evaluate(model, self.x_test, self.y_test, world=self.world, rank=self.rank)
                    if improved or final or self.uda else None)
            rec[prefix + "val"], rec[prefix + "test"] = val, test
            if improved:
                best.update(iteration=self.iteration, val=val, test=test)
                if not prefix:
                    self._save_best_model(val)
        if self.uda and rec["test"] > self.oracle["test"]:
            self.oracle.update(iteration=self.iteration, test=rec["test"])
        return rec

    def _save_best_model(self, val: float) -> None:
        """Keep the selected (best-validation) model's weights beside the last checkpoint, so
        analyses (``supercm pad``, ``supercm plot``) look at the model whose accuracy is reported.
        Read it with ``torch.load(path, weights_only=True)``; written atomically, only when finite."""
        if self.run_dir is not None:
            self._check_state_finite()
            state = {"iteration": self.iteration, "val": val, "model": self.model.state_dict()}
            _atomic_save(state, self.run_dir / BEST_MODEL)

    def fit(self, on_evaluate: Callable[[dict], None] | None = None) -> RunResult:
        """Train to ``train.iterations``; the run directory stays locked until it returns.

        ``on_evaluate(record)`` is called after every evaluation with the record written to
        eval.jsonl (e.g. to report it to a tuner, which may stop the run by raising; the files
        are closed and the last checkpoint stays intact)."""
        if self.run_dir is not None and self._lock is None:  # fit() called again: lock the directory again
            self._lock = self._take_run_dir()
        try:
            return self._fit(on_evaluate)
        finally:
            self._release()

    def _fit(self, on_evaluate: Callable[[dict], None] | None = None) -> RunResult:
        tc = self.cfg.train
        metrics_f = evals_f = None
        if self.run_dir is not None:
            metrics_f = open(self.run_dir / METRICS, "a")
            evals_f = open(self.run_dir / EVALS, "a")
            self._tb = _tensorboard(self.run_dir, self.iteration) if tc.tensorboard else None
        bar = None
        if tc.progress and self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=tc.iterations, initial=self.iteration, dynamic_ncols=True, leave=False)
        rec: dict[str, float] = {}
        sink = metrics_f is not None or self._tb is not None or bar is not None  # anyone reading the logs?
        sink = sink or self.world > 1  # data-parallel: every rank takes part in reading the logged values
        # pipeline=stream: worker processes decode the batches of sampler copies (taken now, after any
        # resume) ahead of the steps; every read is checked against the trainer's own indices.
        prefetch = self.x_train.prefetch([self.labeled_sampler, self.unlabeled_sampler], self._my_rows) \
            if isinstance(self.x_train, ImageStore) else nullcontext()
        try:
            start = time.perf_counter() - self.elapsed
            while self.iteration < tc.iterations:
                it = self.iteration + 1
                logging = sink and (it % tc.log_every == 0 or it == tc.iterations)
                logs = self.train_step(log_terms=logging, check=False)
                if logging:
                    if self.world > 1:
                        self._agree_on_state()
                    self._check_loss_history()  # nothing is logged from a diverged run
                    scalars = _read_scalars(logs, self.world)
                    if metrics_f is not None:
                        metrics_f.write(json.dumps(_jsonable({"iteration": it, **scalars})) + "\n")
                    if self._tb is not None:
                        for k, v in scalars.items():
                            self._tb.add_scalar(f"train/{k}", v, it)
                    if bar is not None:
                        bar.set_postfix(loss=f"{scalars['loss']:.3f}", ce=f"{scalars['ce']:.3f}", refresh=False)
                if it % tc.eval_every == 0 or it == tc.iterations:
                    self._agree_on_state()  # a model with NaN statistics scores chance: stop instead
                    rec = self.evaluate_now(final=it == tc.iterations)
                    if evals_f is not None:
                        evals_f.write(json.dumps(_jsonable(rec)) + "\n")
                        evals_f.flush()
                        metrics_f.flush()
                    if self._tb is not None:
                        for k, v in rec.items():
                            if k != "iteration" and v is not None:
                                self._tb.add_scalar(f"eval/{k}", v, it)
                    if bar is not None:
                        bar.set_postfix(val=f"{rec['val']:.3f}", best=f"{self.best['val']:.3f}", refresh=False)
                    if on_evaluate is not None:
                        on_evaluate(rec)
                if bar is not None:
                    bar.update(1)
                self.elapsed = time.perf_counter() - start
                if (tc.checkpoint_every and it % tc.checkpoint_every == 0) or it == tc.iterations:
                    if metrics_f is not None:
                        metrics_f.flush()
                    if self.world > 1:
                        self._agree_on_state()
                        self._gather_rng_states()
                    self.save_checkpoint()
        finally:
            prefetch.__exit__(None, None, None)
            if bar is not None:
                bar.close()
            for f in (metrics_f, evals_f):
                if f is not None:
                    f.close()
            if self._tb is not None:
                self._tb.close()
        if not rec:  # resumed a finished run: evaluate the final model again
            rec = self.evaluate_now(final=True)
        result = RunResult(
            best_iteration=self.best["iteration"],
            # -1 is "never improved": no validation split (num_validation=0); reported as null.
            best_val_accuracy=self.best["val"] if self.best["val"] >= 0 else float("nan"),
            test_accuracy_at_best_val=self.best["test"],
            final_val_accuracy=rec["val"],
            final_test_accuracy=rec["test"],
            ema_best_val_accuracy=(self.ema_best["val"] if self.ema_best["val"] >= 0 else float("nan"))
            if self.ema_model is not None else None,
            ema_test_accuracy_at_best_val=self.ema_best["test"] if self.ema_model is not None else None,
            seconds=self.elapsed,
            iterations=self.iteration,
            oracle_test_accuracy=self.oracle["test"] if self.uda else None,
            oracle_iteration=self.oracle["iteration"] if self.uda else None,
        )
        if self.run_dir is not None:
            atomic_write(self.run_dir / SUMMARY, json.dumps(result.to_dict(), indent=2, allow_nan=False))
        return result


def _tensorboard(run_dir: Path, iteration: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional extra
        return None
    # purge_step drops events a killed run wrote after its last checkpoint.
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=iteration or None)
