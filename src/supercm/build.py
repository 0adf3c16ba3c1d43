"""Config → objects: the data, the model, the weighted terms, the objective, the optimiser and its schedule.

The trainer asks these builders in a fixed order (the order fixes every random number a run draws
at construction, so runs stay bit-identical), and so does :mod:`supercm.analysis.runs`, which
rebuilds a finished run's model and data to read its features. Everything a config can get wrong is
refused here, with the key and the fix, before a file is written: the terms' names and options,
the backbone against the data's shape, the augmentation against the inputs (:func:`dry_run`).
"""

from __future__ import annotations

import inspect
import random
from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np
import torch
from torch import nn

from . import distributed
from .cm import ClusteringModule
from .config import Config, ConfigError, OptimConfig
from .data import (
    ArrayDataset,
    DomainPair,
    SSLSplit,
    joined_training_set,
    load_dataset,
    load_uda,
    stratified_split,
    uda_split,
)
from .data.augment import Augment
from .methods import build_method
from .models import CMClassifier, ImageInput, build_backbone
from .objective import Objective, WeightedTerm
from .precision import check_compile
from .schedules import lr_factor


def check_batch_split(cfg: Config, world: int) -> None:
    """Data-parallel: the global batches split evenly over the ``world`` processes."""
    for key in ("batch_labeled", "batch_unlabeled"):
        if getattr(cfg.train, key) % world:
            raise ConfigError(f"train.{key}={getattr(cfg.train, key)} must be divisible by the number of processes "
                              f"({world}): it is the global batch, split evenly over the ranks")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Data:
    """A run's data: ``dataset`` as loaded (a :class:`DomainPair` in domain adaptation) and ``joined``,
    the training set the trainer samples from ([source ; target] in domain adaptation)."""

    dataset: ArrayDataset | DomainPair
    joined: ArrayDataset
    uda: bool


def load_data(cfg: Config, dataset: ArrayDataset | DomainPair | None = None) -> Data:
    """The run's dataset (``dataset`` when given: benchmarks hand one in), as the trainer samples it."""
    uda = cfg.data.target is not None
    if dataset is None:
        kw = dict(cfg.data.options)
        if cfg.data.download:
            kw["download"] = True
        dataset = load_uda(cfg.data.name, cfg.data.target, cfg.data.root, **kw) if uda else \
            load_dataset(cfg.data.name, cfg.data.root, **kw)
    if uda != isinstance(dataset, DomainPair):
        raise ValueError("a domain pair (supercm.data.DomainPair) goes with data.target set, an ArrayDataset without it")
    return Data(dataset, joined_training_set(dataset) if uda else dataset, uda)


def build_augment(cfg: Config, data: ArrayDataset) -> Augment:
    """The training augmentation: the config's, or the dataset's paper default; none with ``data.augment=false``."""
    if not cfg.data.augment:
        return Augment()
    aug = data.augment if cfg.data.augmentation is None else cfg.data.augmentation
    return Augment.from_dict({**(aug or {}), "draw": cfg.data.augment_draw})


def build_model(cfg: Config, data: ArrayDataset, device: torch.device) -> CMClassifier:
    """The backbone, the CM head (the classifier), and the input stage of images kept as uint8."""
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
    return CMClassifier(backbone, head, preprocess).to(device)


def build_terms(cfg: Config) -> list[WeightedTerm]:
    """The objective's terms besides CE, in the order they are summed: SuperCM (weight ``cm.beta``,
    when > 0), the base method (``method.delta`` · w(t)), the regularisers (their weights · w(t)).
    SuperCM first keeps the floating-point sum, and so every run, identical to the trainer's earlier
    form CE + β·L_CM + δ·w·L_base. (Built method first: the order of their random initialisation.)"""
    method = WeightedTerm(build_method(cfg.method.name, cfg.method.options), cfg.method.delta, cfg.method.rampup, "base")
    supercm = {"features": cfg.cm.features, "centroid_source": cfg.cm.centroid_source, "rows": cfg.cm.rows}
    cm = [WeightedTerm(build_method("supercm", supercm), cfg.cm.beta, 0, "cm")] if cfg.cm.beta > 0 else []
    regularisers = [WeightedTerm(build_method(r.name, r.options), r.weight, r.rampup, r.name) for r in cfg.regularisers]
    return [*cm, method, *regularisers]


def build_objective(model: nn.Module, terms: list[WeightedTerm], cfg: Config, device: torch.device,
                    world: int) -> tuple[Objective, Callable]:
    """The step's objective over the terms that count in this run (configured weight > 0, and an
    unlabeled batch for those that need one: the same set at every step), and the callable the
    step calls: the objective itself, or the objective under ``DistributedDataParallel`` in a
    data-parallel run. With ``train.compile`` the one model call's input stage and backbone go
    through ``torch.compile`` (:meth:`CMClassifier.compiled`)."""
    tc = cfg.train
    active = [t.term for t in terms if t.counts(tc.batch_unlabeled > 0)]
    model_call = None
    if tc.compile:
        check_compile(device)
        model_call = model.compiled()
    objective = Objective(model, active, model_call)
    if world == 1:
        return objective, objective
    from torch.nn.parallel import DistributedDataParallel

    # Buffers: BatchNorm statistics are the global batch's with train.sync_batchnorm, else each
    # rank's own until the trainer gives every rank rank 0's at evaluations (no broadcast every step).
    # gradient_as_bucket_view: the gradients are views into DDP's communication buckets (no copy
    # in or out of them, one gradient's memory less).
    # PyTorch ≥ 2.14 names "no buffer broadcast before each forward" forward_sync_buffers (and
    # deprecates broadcast_buffers); both still sync the buffers once at construction, where
    # every rank's are rank 0's already.
    new_name = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    no_sync = {"forward_sync_buffers": False} if new_name else {"broadcast_buffers": False}
    ddp = DistributedDataParallel(objective, device_ids=None, **no_sync,
                                  find_unused_parameters=tc.find_unused_parameters, gradient_as_bucket_view=True)
    return objective, ddp


def param_groups(optim: OptimConfig, model: CMClassifier, terms: list[WeightedTerm]) -> list[dict]:
    """The model's parameters (the backbone's at ``optim.backbone_lr_mult`` × lr when that is
    not 1), then the trainable parameters the terms own (DANN's discriminator). A backbone with a
    ``pretrained`` part (the ResNets) gets the multiplier on that part only: its bottleneck
    trains at lr × 1 with the head, as in the field's code."""
    mult = optim.backbone_lr_mult
    if mult == 1.0:
        groups = [{"params": list(model.parameters())}]
    else:
        backbone = model.backbone
        slow = list(getattr(backbone, "pretrained", backbone).parameters())
        ids = {id(p) for p in slow}
        groups = [{"params": slow, "lr": optim.lr * mult},
                  {"params": [p for p in model.parameters() if id(p) not in ids]}]
    own = [p for t in terms for p in t.term.parameters() if p.requires_grad]
    if own:
        groups.append({"params": own})
    return groups


def build_optimizer(optim: OptimConfig, groups: list[dict]) -> torch.optim.Optimizer:
    """Adam (the SSL protocol) or SGD with momentum and Nesterov (the domain-adaptation protocol)."""
    # foreach: one kernel per group of tensors instead of one per tensor (CPU default is per tensor).
    if optim.name == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, nesterov=optim.nesterov and optim.momentum > 0,
                               weight_decay=optim.weight_decay, foreach=True)
    return torch.optim.Adam(groups, lr=optim.lr, weight_decay=optim.weight_decay, foreach=True)


def build_schedule(optim: OptimConfig, optimizer: torch.optim.Optimizer,
                   total_iterations: int | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning-rate schedule of ``optim`` (:func:`~supercm.schedules.lr_factor`), stepped every
    iteration; ``total_iterations`` (``train.iterations``) is the T of ``schedule='progress'``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, optim, total_iterations=total_iterations))


def draw_split(cfg: Config, data: Data) -> SSLSplit:
    """The run's labeled / unlabeled / validation rows, drawn from its seed (class-balanced)."""
    try:
        if data.uda:
            return uda_split(data.dataset.source.train_y, data.dataset.target.train_y.numel(),
                             cfg.data.num_validation, data.joined.num_classes, cfg.train.seed)
        return stratified_split(data.joined.train_y, cfg.data.num_labeled, cfg.data.num_validation,
                                data.joined.num_classes, cfg.train.seed)
    except ValueError as exc:
        raise ConfigError(f"data.num_labeled / data.num_validation: {exc}") from None


@torch.no_grad()
def dry_run(cfg: Config, model: nn.Module, augment: Augment, x: torch.Tensor, input_shape: tuple[int, ...]) -> None:
    """Two samples ``x`` through the augmentation and the model (eval mode: no statistics move, no
    random numbers drawn), so a backbone or augmentation that does not fit the data fails here,
    with a message, instead of at the first step after files were written."""
    asked = cfg.data.augmentation or {}
    if cfg.data.augment and len(input_shape) != 3 and (asked.get("flip") or asked.get("crop_pad")):
        raise ConfigError(
            f"data.augmentation asks for flip/crop_pad, which need images, but {cfg.data.name!r} gives "
            f"vectors of shape {input_shape}; remove them (noise_std works on vectors) or load images"
        )
    try:
        augment(x, torch.Generator(device=x.device).manual_seed(0))
    except (RuntimeError, ValueError, IndexError) as exc:
        raise ConfigError(f"data.augmentation does not fit inputs of shape {input_shape}: {exc}") from None
    was_training = model.training
    model.eval()
    try:
        model(x)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"model.backbone={cfg.model.backbone!r} does not fit the inputs of {cfg.data.name!r} "
            f"(shape {input_shape}): {first}"
        ) from None
    finally:
        model.train(was_training)


def distribute_model(model: nn.Module, terms: list[WeightedTerm], device: torch.device, *, world: int,
                     sync_batchnorm: bool, channels_last: bool) -> nn.Module:
    """The model in NHWC layout (``channels_last``, images only), its BatchNorm synchronised over the
    ranks (``sync_batchnorm``), each term set up on it and moved to ``device``; in a data-parallel run
    every rank then starts from rank 0's weights (the seeds agree; this makes sure)."""
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if sync_batchnorm:
        model = distributed.convert_sync_batchnorm(model)
    for t in terms:
        t.term.setup(model)
        if sync_batchnorm:
            distributed.convert_sync_batchnorm(t.term)
        t.term.to(device)
    if world > 1:
        for v in [*model.state_dict().values(), *(v for t in terms for v in t.term.state_dict().values())]:
            torch.distributed.broadcast(v, 0)
    return model
