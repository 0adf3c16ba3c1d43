"""Run configuration: nested dataclasses, YAML files and dotted ``key=value`` overrides.

Every key is validated: an unknown key or a value of the wrong type is an error
that names the key. YAML is read with ``yaml.safe_load`` only.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names the key."""


@dataclass
class DataConfig:
    name: str = "digits"  # a key of supercm.data.DATASETS (the source domain when target is set)
    target: str | None = None  # domain adaptation: the target dataset, whose labels are never read
    root: str | None = None  # None: $SUPERCM_DATA or ~/.cache/supercm/data
    num_labeled: int = 100  # total, class-balanced (domain adaptation: every source sample outside validation)
    num_validation: int = 200  # total, class-balanced, held out of train (domain adaptation: of the source)
    download: bool = False  # let torchvision download (needs the internet)
    augment: bool = True  # augment training batches (false: never)
    augmentation: dict | None = None  # {flip, crop_pad, noise_std}; None: the dataset's paper default
    augment_draw: str = "sample"  # sample: flip/crop drawn per image; batch: one draw per batch (SPEC §5)
    options: dict = field(default_factory=dict)  # extra loader keyword arguments


@dataclass
class ModelConfig:
    backbone: str = "mlp"  # a key of supercm.models.BACKBONES
    options: dict = field(default_factory=dict)  # backbone keyword arguments (width, depth, ...)


@dataclass
class CMConfig:
    beta: float = 0.0  # weight of L_CM; 0 turns SuperCM off (the baseline)
    centroids: str = "paper"  # paper | mean | ema | learned
    momentum: float = 0.99  # for centroids=ema
    temperature: float = 1.0
    alpha: float = 1.0  # Dirichlet prior; 1 (SuperCM) makes E4 vanish
    features: str = "reuse"  # reuse: detached training features; eval_pass: extra eval-mode pass (authors' code)


@dataclass
class MethodConfig:
    name: str = "supervised"  # a key of supercm.methods.METHODS
    delta: float = 1.0  # weight of the base method's unlabeled loss; 0 turns it off
    rampup: int = 0  # iterations of the ramp-up w(t) = exp(−5(1 − t/T)²); 0: w = 1
    options: dict = field(default_factory=dict)  # method hyperparameters, validated by the method


@dataclass
class RegulariserConfig:
    """A term stacked on the base method (e.g. MCC or BNM on DANN); SuperCM's weight is cm.beta."""

    name: str = ""  # a key of supercm.methods.METHODS
    weight: float = 1.0
    rampup: int = 0  # iterations of the ramp-up w(t); 0: constant weight
    options: dict = field(default_factory=dict)


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | sgd (momentum, Nesterov: the domain-adaptation protocol)
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd
    nesterov: bool = True  # sgd
    schedule: str = "step"  # step: × decay_factor at decay_at; annealed: × (1 + anneal_gamma·i)^(−anneal_power) every step
    decay_at: int | None = None  # iteration at which lr is multiplied by decay_factor
    decay_factor: float = 0.2
    anneal_gamma: float = 0.001
    anneal_power: float = 0.75
    backbone_lr_mult: float = 1.0  # the backbone's lr relative to the head and the terms' modules (0.1 for a pretrained one)


@dataclass
class TrainConfig:
    iterations: int = 1000
    batch_labeled: int = 50
    batch_unlabeled: int = 50
    eval_every: int = 100
    checkpoint_every: int = 0  # 0: only at the end
    log_every: int = 1  # write training metrics every N iterations
    ema_decay: float = 0.99  # weight-EMA copy evaluated beside the model; 0 disables
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    progress: bool = True
    tensorboard: bool = True  # write TensorBoard events when tensorboard is installed


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    cm: CMConfig = field(default_factory=CMConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    regularisers: list[RegulariserConfig] = field(default_factory=list)  # stacked on the method, after SuperCM
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **dotted: Any) -> "Config":
        """A copy with dotted keys replaced, e.g. ``cfg.replace(**{"cm.beta": 0.5})``."""
        d = self.to_dict()
        for key, value in dotted.items():
            _set_dotted(d, key, value)
        return from_dict(d)


def _type_ok(value: Any, hint: Any) -> tuple[bool, Any]:
    """Whether ``value`` fits the annotation ``hint``; ints are accepted (and converted) for floats."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(hint):
            ok, v = _type_ok(value, arm)
            if ok:
                return True, v
        return False, value
    if hint is type(None):
        return value is None, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if hint is str:
        return isinstance(value, str), value
    if hint is dict or origin is dict:
        return isinstance(value, dict), value
    return True, value


def _build(cls: type, data: dict, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config section {prefix.rstrip('.') or '<root>'!r} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix + unknown[0]!r}; known keys here: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{prefix}{name}.")
            continue
        args = typing.get_args(hint)
        if typing.get_origin(hint) is list and args and dataclasses.is_dataclass(args[0]):
            if not isinstance(value, list):
                raise ConfigError(f"config key {prefix + name!r} must be a list of mappings, got {value!r}")
            kwargs[name] = [_build(args[0], v, f"{prefix}{name}[{i}].") for i, v in enumerate(value)]
            continue
        ok, converted = _type_ok(value, hint)
        if not ok:
            raise ConfigError(
                f"config key {prefix + name!r} must be of type {_type_name(hint)}, got {value!r} ({type(value).__name__})"
            )
        kwargs[name] = converted
    return cls(**kwargs)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def from_dict(data: dict) -> Config:
    """A validated :class:`Config` from a nested mapping (missing keys take their defaults)."""
    cfg = _build(Config, data or {}, "")
    validate(cfg)
    return cfg


def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = d
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:  # a section the file did not mention; from_dict validates its name
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {key!r}: {'.'.join(parts[: i + 1])!r} is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"cm.beta=0.3"`` → ``("cm.beta", 0.3)``; the value is parsed as YAML (``null``, ``true``, lists...)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. cm.beta=0.3")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has no key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from None
    return key, value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file at ``path`` (if any), then ``key=value`` overrides."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        with open(p) as f:
            try:
                data = yaml.safe_load(f) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"config file {str(p)!r} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping at the top level")
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(data, key, value)
    return from_dict(data)


def validate(cfg: Config) -> None:
    """Range checks that types alone cannot express."""
    from .cm import CENTROID_RULES

    def need(cond: bool, key: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"config key {key!r} {msg}")

    need(cfg.cm.beta >= 0, "cm.beta", f"must be ≥ 0, got {cfg.cm.beta}")
    need(cfg.cm.centroids in CENTROID_RULES, "cm.centroids", f"must be one of {', '.join(CENTROID_RULES)}, got {cfg.cm.centroids!r}")
    need(0 <= cfg.cm.momentum < 1, "cm.momentum", f"must be in [0, 1), got {cfg.cm.momentum}")
    need(cfg.cm.temperature > 0, "cm.temperature", f"must be > 0, got {cfg.cm.temperature}")
    need(cfg.cm.features in ("reuse", "eval_pass"), "cm.features", f"must be 'reuse' or 'eval_pass', got {cfg.cm.features!r}")
    need(cfg.method.delta >= 0, "method.delta", f"must be ≥ 0, got {cfg.method.delta}")
    from .methods import METHODS

    need(cfg.method.name in METHODS, "method.name",
         f"must be one of {', '.join(sorted(METHODS))}, got {cfg.method.name!r}")
    need(cfg.method.name != "supercm", "method.name", "cannot be 'supercm': SuperCM is switched on by cm.beta > 0")
    for i, reg in enumerate(cfg.regularisers):
        key = f"regularisers[{i}]"
        need(reg.name in METHODS, key + ".name", f"must be one of {', '.join(sorted(METHODS))}, got {reg.name!r}")
        need(reg.name not in ("supercm", "supervised"), key + ".name",
             f"cannot be {reg.name!r}: SuperCM's weight is cm.beta, and 'supervised' adds no loss")
        need(reg.weight >= 0, key + ".weight", f"must be ≥ 0, got {reg.weight}")
        need(reg.rampup >= 0, key + ".rampup", f"must be ≥ 0, got {reg.rampup}")
    need(cfg.method.rampup >= 0, "method.rampup", f"must be ≥ 0, got {cfg.method.rampup}")
    need(cfg.optim.lr > 0, "optim.lr", f"must be > 0, got {cfg.optim.lr}")
    need(cfg.optim.name in ("adam", "sgd"), "optim.name", f"must be 'adam' or 'sgd', got {cfg.optim.name!r}")
    need(cfg.optim.schedule in ("step", "annealed"), "optim.schedule",
         f"must be 'step' or 'annealed', got {cfg.optim.schedule!r}")
    need(0 <= cfg.optim.momentum < 1, "optim.momentum", f"must be in [0, 1), got {cfg.optim.momentum}")
    need(cfg.optim.anneal_gamma >= 0, "optim.anneal_gamma", f"must be ≥ 0, got {cfg.optim.anneal_gamma}")
    need(cfg.optim.anneal_power >= 0, "optim.anneal_power", f"must be ≥ 0, got {cfg.optim.anneal_power}")
    need(cfg.optim.backbone_lr_mult > 0, "optim.backbone_lr_mult", f"must be > 0, got {cfg.optim.backbone_lr_mult}")
    need(cfg.data.target is None or cfg.train.batch_unlabeled >= 1, "train.batch_unlabeled",
         "must be ≥ 1 for domain adaptation (data.target is set): it is the target batch")
    need(cfg.optim.weight_decay >= 0, "optim.weight_decay", f"must be ≥ 0, got {cfg.optim.weight_decay}")
    need(cfg.train.iterations >= 1, "train.iterations", f"must be ≥ 1, got {cfg.train.iterations}")
    need(cfg.train.batch_labeled >= 1, "train.batch_labeled", f"must be ≥ 1, got {cfg.train.batch_labeled}")
    need(cfg.train.batch_unlabeled >= 0, "train.batch_unlabeled", f"must be ≥ 0, got {cfg.train.batch_unlabeled}")
    need(cfg.train.eval_every >= 1, "train.eval_every", f"must be ≥ 1, got {cfg.train.eval_every}")
    need(cfg.train.checkpoint_every >= 0, "train.checkpoint_every", f"must be ≥ 0, got {cfg.train.checkpoint_every}")
    need(cfg.train.log_every >= 1, "train.log_every", f"must be ≥ 1, got {cfg.train.log_every}")
    need(0 <= cfg.train.ema_decay < 1, "train.ema_decay", f"must be in [0, 1), got {cfg.train.ema_decay}")
    need(cfg.data.augment_draw in ("sample", "batch"), "data.augment_draw",
         f"must be 'sample' or 'batch', got {cfg.data.augment_draw!r}")
    need(cfg.data.augmentation is None or "draw" not in cfg.data.augmentation, "data.augmentation",
         "must not hold 'draw': set data.augment_draw instead")
    need(cfg.data.num_labeled >= 1, "data.num_labeled", f"must be ≥ 1, got {cfg.data.num_labeled}")
    need(cfg.data.num_validation >= 0, "data.num_validation", f"must be ≥ 0, got {cfg.data.num_validation}")
