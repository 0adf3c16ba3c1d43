"""Run configuration: nested dataclasses, YAML files and dotted ``key=value`` overrides.

Every key is validated: an unknown key or a value of the wrong type is an error
that names the key; so are the option dictionaries (``data.options``,
``model.options``, ``method.options``), against the loader's, backbone's or
method's own parameters. YAML is read with :func:`yaml_load` only: the safe
loader, plus the floats people write (``3e-4``, ``1e6``, which YAML 1.1 reads as
strings) and an error for a key given twice (YAML would keep the last silently).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names the key."""


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that reads ``3e-4``/``1e6`` as floats and refuses duplicate keys."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            seen: dict = {}
            for key_node, _ in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                if key is not None and key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found duplicate key {key!r} (first given {seen[key]}); keep one of them",
                        key_node.start_mark,
                    )
                if key is not None:
                    seen[key] = f"on line {key_node.start_mark.line + 1}"
        return super().construct_mapping(node, deep=deep)


# A copy, so adding a resolver does not change yaml.SafeLoader's shared lists.
_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    """Parse YAML safely (no tags that build objects), with ``1e-6`` a float and duplicate keys an error."""
    return yaml.load(text, Loader=_Loader)


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
    centroid_source: str = "labeled"  # labeled | labeled+pseudo: also the unlabeled rows the base method pseudo-labels


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
    precision: str = "fp32"  # fp32 | bf16 | fp16: autocast dtype of the step (fp16 adds a gradient scaler)
    sync_batchnorm: bool = False  # data-parallel runs: BatchNorm statistics of the global batch (any backend)
    channels_last: bool = False  # image models: weights and the step's batches in NHWC memory layout
    compile: bool = False  # the step's model call through torch.compile (needs a C++ compiler on the CPU, triton on CUDA)
    find_unused_parameters: bool = False  # data-parallel: DistributedDataParallel's search for parameters without gradient
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
    if hint is list or origin in (list, tuple) or hint is tuple:
        return isinstance(value, (list, tuple)), value
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
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({' '.join(str(exc).split())})") from None
    return key, value


def read_yaml_file(path: str | Path) -> dict | None:
    """A config file's mapping (None when empty); every problem is a :class:`ConfigError` naming the file."""
    p = Path(path)
    try:
        text = p.read_text()
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(p)!r} is not text (not valid UTF-8)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(p)!r}: {exc.strerror or exc}") from None
    try:
        data = yaml_load(text)
    except yaml.YAMLError as exc:
        one_line = " ".join(str(exc).split())
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {one_line}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping at the top level")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file at ``path`` (if any), then ``key=value`` overrides."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        data = read_yaml_file(p) or {}
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(data, key, value)
    return from_dict(data)


_RANGE = re.compile(r"^\s*([\[(])\s*([^,]+?)\s*,\s*([^,]+?)\s*([\])])\s*$")


def in_range(value: float, interval: str) -> bool:
    """Whether ``value`` lies in ``interval``, written like ``"[0, 1)"`` or ``"(0, inf)"``; NaN never does."""
    m = _RANGE.match(interval)
    if m is None:
        raise ValueError(f"bad range {interval!r}; write it like '[0, 1)' or '(0, inf)'")
    lo, hi = float(m.group(2)), float(m.group(3))
    if isinstance(value, float) and math.isnan(value):
        return False
    above = value >= lo if m.group(1) == "[" else value > lo
    below = value <= hi if m.group(4) == "]" else value < hi
    return above and below


@dataclass(frozen=True)
class OptionSpec:
    """What one option accepts: a type annotation, an optional range (``"[0, 1)"``) and choices."""

    hint: Any = Any
    range: str | None = None
    choices: tuple | None = None


def check_options(options: Any, specs: dict[str, OptionSpec], key: str, owner: str, fix: str = "") -> dict:
    """Names, types and ranges of an option dictionary; returns it with ints converted for floats.

    ``key`` is the config key holding the dictionary (``"method.options"``), ``owner`` what
    takes the options (``"method 'vat'"``); every error is a :class:`ConfigError` naming
    ``key.name``. Floats must be finite unless their range says ``inf``.
    """
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise ConfigError(f"config key {key!r} must be a mapping of option names to values, got {options!r}")
    unknown = sorted(set(options) - set(specs), key=str)
    if unknown:
        allowed = ", ".join(sorted(specs)) or "none"
        raise ConfigError(f"unknown option {key}.{unknown[0]} for {owner}; allowed: {allowed}{fix}")
    out = {}
    for name, value in options.items():
        spec = specs[name]
        ok, value = _type_ok(value, spec.hint) if spec.hint is not Any else (True, value)
        if not ok:
            raise ConfigError(
                f"option {key}.{name} for {owner} must be of type {_type_name(spec.hint)}, "
                f"got {value!r} ({type(value).__name__})"
            )
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if number and spec.range is not None and not in_range(value, spec.range):
            raise ConfigError(f"option {key}.{name} for {owner} must be in {spec.range}, got {value}")
        if isinstance(value, float) and spec.range is None and not math.isfinite(value):
            raise ConfigError(f"option {key}.{name} for {owner} must be a finite number, got {value}")
        if spec.choices is not None and value not in spec.choices:
            raise ConfigError(
                f"option {key}.{name} for {owner} must be one of {', '.join(map(str, spec.choices))}, got {value!r}"
            )
        out[name] = value
    return out


def dataclass_specs(cls: type) -> dict[str, OptionSpec]:
    """Option specs from a dataclass: field types, plus ``metadata={"range": ..., "choices": ...}``."""
    hints = typing.get_type_hints(cls)
    return {
        f.name: OptionSpec(hints.get(f.name, Any), f.metadata.get("range"), f.metadata.get("choices"))
        for f in dataclasses.fields(cls)
    }


def signature_specs(fn: Any, skip: tuple[str, ...] = (), ranges: dict[str, str] | None = None,
                    choices: dict[str, tuple] | None = None) -> dict[str, OptionSpec]:
    """Option specs from a function's (or class's) keyword parameters and their annotations, with the
    ranges and choices given for some of them."""
    target = fn.__init__ if isinstance(fn, type) else fn
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: check names only
        hints = {}
    ranges, choices = ranges or {}, choices or {}
    params = inspect.signature(target).parameters
    return {
        name: OptionSpec(hints.get(name, Any), ranges.get(name), choices.get(name))
        for name, p in params.items()
        if name not in ("self", *skip) and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.default is not p.empty
    }


#: train.precision: float32 throughout, or autocast to bfloat16 / float16 (with a gradient scaler).
PRECISIONS = ("fp32", "bf16", "fp16")

KNOWN_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def validate(cfg: Config) -> None:
    """Range checks that types alone cannot express, and the option dictionaries."""
    from .cm import CENTROID_RULES

    def need(cond: bool, key: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"config key {key!r} {msg}")

    def finite(x: float) -> bool:
        return math.isfinite(x)

    need(finite(cfg.cm.beta) and cfg.cm.beta >= 0, "cm.beta", f"must be ≥ 0 and finite, got {cfg.cm.beta}")
    need(cfg.cm.centroids in CENTROID_RULES, "cm.centroids", f"must be one of {', '.join(CENTROID_RULES)}, got {cfg.cm.centroids!r}")
    need(0 <= cfg.cm.momentum < 1, "cm.momentum", f"must be in [0, 1), got {cfg.cm.momentum}")
    need(finite(cfg.cm.temperature) and cfg.cm.temperature > 0, "cm.temperature",
         f"must be > 0 and finite, got {cfg.cm.temperature}")
    need(finite(cfg.cm.alpha) and cfg.cm.alpha > 0, "cm.alpha", f"must be > 0 and finite, got {cfg.cm.alpha}")
    need(cfg.cm.features in ("reuse", "eval_pass"), "cm.features", f"must be 'reuse' or 'eval_pass', got {cfg.cm.features!r}")
    need(cfg.cm.centroid_source in ("labeled", "labeled+pseudo"), "cm.centroid_source",
         f"must be 'labeled' or 'labeled+pseudo', got {cfg.cm.centroid_source!r}")
    need(cfg.cm.centroid_source == "labeled" or cfg.cm.features == "reuse", "cm.centroid_source",
         "'labeled+pseudo' needs cm.features='reuse' (the pseudo-labeled features are the training pass's)")
    need(finite(cfg.method.delta) and cfg.method.delta >= 0, "method.delta",
         f"must be ≥ 0 and finite, got {cfg.method.delta}")
    need(cfg.method.rampup >= 0, "method.rampup", f"must be ≥ 0, got {cfg.method.rampup}")
    need(finite(cfg.optim.lr) and cfg.optim.lr > 0, "optim.lr", f"must be > 0 and finite, got {cfg.optim.lr}")
    need(finite(cfg.optim.weight_decay) and cfg.optim.weight_decay >= 0, "optim.weight_decay",
         f"must be ≥ 0 and finite, got {cfg.optim.weight_decay}")
    need(cfg.optim.decay_at is None or cfg.optim.decay_at >= 0, "optim.decay_at",
         f"must be ≥ 0 (or null: never), got {cfg.optim.decay_at}")
    need(finite(cfg.optim.decay_factor) and cfg.optim.decay_factor > 0, "optim.decay_factor",
         f"must be > 0 and finite (the learning rate is multiplied by it), got {cfg.optim.decay_factor}")
    from .methods import METHODS

    need(cfg.method.name in METHODS, "method.name",
         f"must be one of {', '.join(sorted(METHODS))}, got {cfg.method.name!r}")
    need(cfg.method.name != "supercm", "method.name", "cannot be 'supercm': SuperCM is switched on by cm.beta > 0")
    from .methods import Term

    labelers = [n for n in (cfg.method.name, *(r.name for r in cfg.regularisers))
                if n in METHODS and METHODS[n].pseudo_labels is not Term.pseudo_labels]
    need(cfg.cm.centroid_source == "labeled" or bool(labelers), "cm.centroid_source",
         f"'labeled+pseudo' needs a base method or regulariser that pseudo-labels "
         f"({', '.join(sorted(n for n in METHODS if METHODS[n].pseudo_labels is not Term.pseudo_labels))}), "
         f"got method.name={cfg.method.name!r}")
    for i, reg in enumerate(cfg.regularisers):
        key = f"regularisers[{i}]"
        need(reg.name in METHODS, key + ".name", f"must be one of {', '.join(sorted(METHODS))}, got {reg.name!r}")
        need(reg.name not in ("supercm", "supervised"), key + ".name",
             f"cannot be {reg.name!r}: SuperCM's weight is cm.beta, and 'supervised' adds no loss")
        need(reg.weight >= 0, key + ".weight", f"must be ≥ 0, got {reg.weight}")
        need(reg.rampup >= 0, key + ".rampup", f"must be ≥ 0, got {reg.rampup}")
    need(cfg.optim.name in ("adam", "sgd"), "optim.name", f"must be 'adam' or 'sgd', got {cfg.optim.name!r}")
    need(cfg.optim.schedule in ("step", "annealed"), "optim.schedule",
         f"must be 'step' or 'annealed', got {cfg.optim.schedule!r}")
    need(0 <= cfg.optim.momentum < 1, "optim.momentum", f"must be in [0, 1), got {cfg.optim.momentum}")
    need(cfg.optim.anneal_gamma >= 0, "optim.anneal_gamma", f"must be ≥ 0, got {cfg.optim.anneal_gamma}")
    need(cfg.optim.anneal_power >= 0, "optim.anneal_power", f"must be ≥ 0, got {cfg.optim.anneal_power}")
    need(cfg.optim.backbone_lr_mult > 0, "optim.backbone_lr_mult", f"must be > 0, got {cfg.optim.backbone_lr_mult}")
    need(cfg.data.target is None or cfg.train.batch_unlabeled >= 1, "train.batch_unlabeled",
         "must be ≥ 1 for domain adaptation (data.target is set): it is the target batch")
    need(cfg.train.iterations >= 1, "train.iterations", f"must be ≥ 1, got {cfg.train.iterations}")
    need(cfg.train.batch_labeled >= 1, "train.batch_labeled", f"must be ≥ 1, got {cfg.train.batch_labeled}")
    need(cfg.train.batch_unlabeled >= 0, "train.batch_unlabeled", f"must be ≥ 0, got {cfg.train.batch_unlabeled}")
    need(cfg.train.eval_every >= 1, "train.eval_every", f"must be ≥ 1, got {cfg.train.eval_every}")
    need(cfg.train.checkpoint_every >= 0, "train.checkpoint_every", f"must be ≥ 0, got {cfg.train.checkpoint_every}")
    need(cfg.train.log_every >= 1, "train.log_every", f"must be ≥ 1, got {cfg.train.log_every}")
    need(0 <= cfg.train.ema_decay < 1, "train.ema_decay", f"must be in [0, 1), got {cfg.train.ema_decay}")
    need(cfg.train.seed >= 0, "train.seed", f"must be ≥ 0, got {cfg.train.seed}")
    need(cfg.train.precision in PRECISIONS, "train.precision",
         f"must be one of {', '.join(PRECISIONS)}, got {cfg.train.precision!r}")
    need(bool(KNOWN_DEVICE.match(cfg.train.device)), "train.device",
         f"must be auto, cpu, cuda, cuda:N or mps, got {cfg.train.device!r}")
    need(cfg.data.augment_draw in ("sample", "batch"), "data.augment_draw",
         f"must be 'sample' or 'batch', got {cfg.data.augment_draw!r}")
    need(cfg.data.augmentation is None or "draw" not in cfg.data.augmentation, "data.augmentation",
         "must not hold 'draw': set data.augment_draw instead")
    need(cfg.data.num_labeled >= 1, "data.num_labeled", f"must be ≥ 1, got {cfg.data.num_labeled}")
    need(cfg.data.num_validation >= 0, "data.num_validation", f"must be ≥ 0, got {cfg.data.num_validation}")
    _validate_options(cfg)


def _validate_options(cfg: Config) -> None:
    """``data.options``, ``model.options``, ``method.options`` and ``data.augmentation`` against their owners."""
    from .data import DATASETS
    from .data.augment import Augment
    from .methods import METHODS
    from .models import BACKBONES

    # A name outside the registry is allowed here: a dataset object may be handed to the Trainer
    # directly (benchmarks do); load_dataset refuses an unknown name, before anything is written.
    loader = DATASETS.get(cfg.data.name) if cfg.data.name in DATASETS else None
    if loader is not None:
        specs = signature_specs(loader, skip=("root",), ranges=getattr(loader, "option_ranges", None),
                                choices=getattr(loader, "option_choices", None))
        check_options(cfg.data.options, {k: v for k, v in specs.items() if k != "download"},
                      "data.options", f"dataset {cfg.data.name!r}")
        if cfg.data.download and "download" not in specs:
            raise ConfigError(f"config key 'data.download' is true, but dataset {cfg.data.name!r} has nothing to "
                              f"download; set data.download=false")
    if cfg.data.augmentation is not None:
        ranges = {"crop_pad": "[0, inf)", "noise_std": "[0, inf)", "resized_crop": "[0, inf)"}
        aug = {k: OptionSpec(v.hint, ranges.get(k)) for k, v in dataclass_specs(Augment).items() if k != "draw"}
        check_options(cfg.data.augmentation, aug, "data.augmentation", "the augmentation")

    if cfg.model.backbone not in BACKBONES:
        raise ConfigError(
            f"config key 'model.backbone' must be one of {', '.join(BACKBONES)}, got {cfg.model.backbone!r}"
        )
    factory = BACKBONES[cfg.model.backbone]
    check_options(
        cfg.model.options,
        signature_specs(factory, skip=("input_shape",), ranges=getattr(factory, "option_ranges", None)),
        "model.options", f"backbone {cfg.model.backbone!r}",
        fix="; the options may have been written for another backbone: set model.options too (e.g. model.options={})",
    )

    if cfg.method.name not in METHODS:
        raise ConfigError(f"config key 'method.name' must be one of {', '.join(sorted(METHODS))}, got {cfg.method.name!r}")
    METHODS[cfg.method.name].check_options(cfg.method.options)
    for reg in cfg.regularisers:
        METHODS[reg.name].check_options(reg.options)
