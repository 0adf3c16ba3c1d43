"""Run configuration: pydantic models of the sections, YAML files and dotted ``key=value`` overrides.

Every key is validated by pydantic (strict types, ints accepted for floats, unknown keys refused,
ranges, choices, finite floats), and its first error is worded as one line that names the key:
``config key 'optim.lr' must be > 0 and finite, got inf``. So are the option dictionaries of the
dataset and the backbone (``data.options``, ``model.options``, ``data.augmentation``), against the
loader's or backbone's own parameters; the terms (``method``, ``regularisers``) are checked against
their registry by :func:`supercm.methods.check_terms`, which sits above this module. YAML is read
with :func:`yaml_load` only: the safe loader, plus the floats people write (``3e-4``, ``1e6``, which
YAML 1.1 reads as strings) and an error for a key given twice (YAML would keep the last silently).
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .cm import CENTROID_RULES
from .data import DATASETS
from .data.augment import DRAWS, Augment
from .models import BACKBONES
from .options import (
    BOUND_ERRORS,
    ConfigError,
    OptionSpec,
    check_options,
    choices_text,
    dataclass_specs,
    in_range,  # noqa: F401  (re-exported: supercm.config kept the option helpers' names)
    signature_specs,
    type_name,
)


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


#: train.precision: float32 throughout, or autocast to bfloat16 / float16 (with a gradient scaler).
PRECISIONS = ("fp32", "bf16", "fp16")

KNOWN_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _note(text: str) -> dict:
    """A field's extra words in its range message (``json_schema_extra``)."""
    return {"note": text}


class _Section(BaseModel):
    """A config section: strict types (ints accepted for floats), no unknown keys, finite floats."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)
    _key: ClassVar[str] = ""  # where the section sits in a Config, for the messages of one built by hand

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _config_error(exc, type(self), self._key) from None

    # Only a section built by hand comes here: validating a nested mapping builds the sections without
    # calling __init__ (the flag pydantic's own BaseModel.__init__ and RootModel.__init__ carry).
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]


class DataConfig(_Section):
    _key: ClassVar[str] = "data."
    name: str = "digits"  # a key of supercm.data.DATASETS (the source domain when target is set)
    target: str | None = None  # domain adaptation: the target dataset, whose labels are never read
    root: str | None = None  # None: $SUPERCM_DATA or ~/.cache/supercm/data
    num_labeled: int = Field(100, ge=1)  # total, class-balanced (domain adaptation: every source sample outside validation)
    num_validation: int = Field(200, ge=0)  # total, class-balanced, held out of train (domain adaptation: of the source)
    download: bool = False  # let torchvision download (needs the internet)
    augment: bool = True  # augment training batches (false: never)
    augmentation: dict | None = None  # {flip, crop_pad, noise_std}; None: the dataset's paper default
    augment_draw: Literal[DRAWS] = "sample"  # sample: flip/crop drawn per image; batch: one draw per batch (SPEC §5)
    options: dict = Field(default_factory=dict)  # extra loader keyword arguments


class ModelConfig(_Section):
    _key: ClassVar[str] = "model."
    backbone: str = "mlp"  # a key of supercm.models.BACKBONES
    options: dict = Field(default_factory=dict)  # backbone keyword arguments (width, depth, ...)


class CMConfig(_Section):
    _key: ClassVar[str] = "cm."
    beta: float = Field(0.0, ge=0)  # weight of L_CM; 0 turns SuperCM off (the baseline)
    centroids: Literal[CENTROID_RULES] = "paper"  # paper | mean | ema | learned
    momentum: float = Field(0.99, ge=0, lt=1)  # for centroids=ema
    temperature: float = Field(1.0, gt=0)
    alpha: float = Field(1.0, gt=0)  # Dirichlet prior; 1 (SuperCM) makes E4 vanish
    features: Literal["reuse", "eval_pass"] = "reuse"  # reuse: detached training features; eval_pass: extra eval-mode pass (authors' code)
    centroid_source: Literal["labeled", "labeled+pseudo"] = "labeled"  # labeled+pseudo: also the unlabeled rows the base method pseudo-labels
    rows: Literal["all", "labeled"] = "all"  # all: L_CM on the whole joined batch (the paper); labeled: the labeled/source rows only (an ablation)

    @model_validator(mode="after")
    def _pseudo_needs_reuse(self) -> "CMConfig":
        if self.centroid_source != "labeled" and self.features != "reuse":
            raise ConfigError("config key 'cm.centroid_source' 'labeled+pseudo' needs cm.features='reuse' (the "
                              "pseudo-labeled features are the training pass's)")
        return self


class MethodConfig(_Section):
    _key: ClassVar[str] = "method."
    name: str = "supervised"  # a key of supercm.methods.METHODS (checked there: supercm.methods.check_terms)
    delta: float = Field(1.0, ge=0)  # weight of the base method's unlabeled loss; 0 turns it off
    rampup: int = Field(0, ge=0)  # iterations of the ramp-up w(t) = exp(−5(1 − t/T)²); 0: w = 1
    options: dict = Field(default_factory=dict)  # method hyperparameters, validated by the method

    @field_validator("name")
    @classmethod
    def _not_supercm(cls, name: str) -> str:
        if name == "supercm":
            raise ValueError("cannot be 'supercm': SuperCM is switched on by cm.beta > 0")
        return name


class RegulariserConfig(_Section):
    """A term stacked on the base method (e.g. MCC or BNM on DANN); SuperCM's weight is cm.beta."""

    _key: ClassVar[str] = "regularisers[i]."
    name: str = ""  # a key of supercm.methods.METHODS
    weight: float = Field(1.0, ge=0)
    rampup: int = Field(0, ge=0)  # iterations of the ramp-up w(t); 0: constant weight
    options: dict = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _a_regulariser(cls, name: str) -> str:
        if name in ("supercm", "supervised"):
            raise ValueError(f"cannot be {name!r}: SuperCM's weight is cm.beta, and 'supervised' adds no loss")
        return name


class OptimConfig(_Section):
    _key: ClassVar[str] = "optim."
    name: Literal["adam", "sgd"] = "adam"  # sgd: momentum, Nesterov (the domain-adaptation protocol)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd
    nesterov: bool = True  # sgd
    # step: × decay_factor at decay_at; annealed (tllib): × (1 + anneal_gamma·i)^(−anneal_power) every step;
    # progress (the DANN paper): × (1 + 10·p)^(−anneal_power), p = i / train.iterations, every step (anneal_gamma unused);
    # cosine (FixMatch, USB): × cos(7π·p/16), p = i / train.iterations, every step
    schedule: Literal["step", "annealed", "progress", "cosine"] = "step"
    decay_at: int | None = Field(None, ge=0, json_schema_extra=_note(" (or null: never)"))  # iteration at which lr is multiplied by decay_factor
    decay_factor: float = Field(0.2, gt=0, json_schema_extra=_note(" (the learning rate is multiplied by it)"))
    anneal_gamma: float = Field(0.001, ge=0)
    anneal_power: float = Field(0.75, ge=0)
    backbone_lr_mult: float = Field(1.0, gt=0)  # the backbone's lr relative to the head and the terms' modules (0.1 for a pretrained one)


class TrainConfig(_Section):
    _key: ClassVar[str] = "train."
    iterations: int = Field(1000, ge=1)
    batch_labeled: int = Field(50, ge=1)
    batch_unlabeled: int = Field(50, ge=0)
    eval_every: int = Field(100, ge=1)
    checkpoint_every: int = Field(0, ge=0)  # 0: only at the end
    log_every: int = Field(1, ge=1)  # write training metrics every N iterations
    ema_decay: float = Field(0.99, ge=0, lt=1)  # weight-EMA copy evaluated beside the model; 0 disables
    seed: int = Field(0, ge=0)
    device: str = Field("auto", pattern=KNOWN_DEVICE.pattern,
                        json_schema_extra={"rule": "auto, cpu, cuda, cuda:N or mps"})  # auto | cpu | cuda | cuda:N
    precision: Literal[PRECISIONS] = "fp32"  # fp32 | bf16 | fp16: autocast dtype of the step (fp16 adds a gradient scaler)
    sync_batchnorm: bool = False  # data-parallel runs: BatchNorm statistics of the global batch (any backend)
    channels_last: bool = False  # image models: weights and the step's batches in NHWC memory layout
    compile: bool = False  # the step's model call through torch.compile (needs a C++ compiler on the CPU, triton on CUDA)
    find_unused_parameters: bool = False  # data-parallel: DistributedDataParallel's search for parameters without gradient
    progress: bool = True
    tensorboard: bool = True  # write TensorBoard events when tensorboard is installed


class Config(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    cm: CMConfig = Field(default_factory=CMConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    regularisers: list[RegulariserConfig] = Field(default_factory=list)  # stacked on the method, after SuperCM
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        """A plain nested dict, keys in the order above (config.yaml and the checkpoint's config hash)."""
        return self.model_dump()

    def replace(self, **dotted: Any) -> "Config":
        """A copy with dotted keys replaced, e.g. ``cfg.replace(**{"cm.beta": 0.5})``."""
        d = self.to_dict()
        for key, value in dotted.items():
            _set_dotted(d, key, value)
        return from_dict(d)

    @model_validator(mode="after")
    def _across_sections(self) -> "Config":
        """The rules that read more than one key, and the dataset's and backbone's options."""
        if self.data.target is not None and self.train.batch_unlabeled < 1:
            raise ConfigError("config key 'train.batch_unlabeled' must be ≥ 1 for domain adaptation "
                              "(data.target is set): it is the target batch")
        _check_data_options(self.data)
        _check_model_options(self.model)
        return self


def _check_data_options(data: DataConfig) -> None:
    # A name outside the registry is allowed here: a dataset object may be handed to the Trainer
    # directly (benchmarks do); load_dataset refuses an unknown name, before anything is written.
    loader = DATASETS.get(data.name) if data.name in DATASETS else None
    if loader is not None:
        specs = signature_specs(loader, skip=("root",), ranges=getattr(loader, "option_ranges", None),
                                choices=getattr(loader, "option_choices", None))
        check_options(data.options, {k: v for k, v in specs.items() if k != "download"},
                      "data.options", f"dataset {data.name!r}")
        if data.download and "download" not in specs:
            raise ConfigError(f"config key 'data.download' is true, but dataset {data.name!r} has nothing to "
                              f"download; set data.download=false")
    if data.augmentation is not None:
        if "draw" in data.augmentation:
            raise ConfigError("config key 'data.augmentation' must not hold 'draw': set data.augment_draw instead")
        ranges = {"crop_pad": "[0, inf)", "noise_std": "[0, inf)", "resized_crop": "[0, inf)"}
        aug = {k: OptionSpec(v.hint, ranges.get(k)) for k, v in dataclass_specs(Augment).items() if k != "draw"}
        check_options(data.augmentation, aug, "data.augmentation", "the augmentation")


def _check_model_options(model: ModelConfig) -> None:
    if model.backbone not in BACKBONES:
        raise ConfigError(f"config key 'model.backbone' must be {choices_text(list(BACKBONES))}, got {model.backbone!r}")
    factory = BACKBONES[model.backbone]
    check_options(
        model.options,
        signature_specs(factory, skip=("input_shape",), ranges=getattr(factory, "option_ranges", None)),
        "model.options", f"backbone {model.backbone!r}",
        fix="; the options may have been written for another backbone: set model.options too (e.g. model.options={})",
    )


def _config_error(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> ConfigError:
    """pydantic's first error (an unknown key first) as the project's one-line message naming the key."""
    errors = exc.errors()
    unknown = sorted((e for e in errors if e["type"] == "extra_forbidden"), key=lambda e: str(e["loc"]))
    error = (unknown or errors)[0]
    key, parent, field = "", model, None
    for item in error["loc"]:  # walk the models: the key as written, its section, its field
        if field is not None and parent is None:
            break  # a union arm's tag after a value's key
        key += f"[{item}]" if isinstance(item, int) else f"{'.' if key else ''}{item}"
        if isinstance(item, int):
            continue
        field = parent.model_fields.get(item) if parent is not None else None
        if field is None:
            break
        parent = _section_of(field.annotation)
    key, kind, value = prefix + key, error["type"], error["input"]
    if kind == "value_error" and isinstance(error["ctx"]["error"], ConfigError):
        return error["ctx"]["error"]
    if kind == "extra_forbidden":
        names = ", ".join(sorted(parent.model_fields))
        return ConfigError(f"unknown config key {key!r}; known keys here: {names}")
    if kind in ("model_type", "dict_type") and (field is None or _section_of(field.annotation)):
        return ConfigError(f"config section {key or '<root>'!r} must be a mapping, got {value!r}")
    if kind == "list_type" and field is not None and _section_of(field.annotation):
        return ConfigError(f"config key {key!r} must be a list of mappings, got {value!r}")
    if kind == "value_error":
        return ConfigError(f"config key {key!r} {error['ctx']['error']}")
    hint = field.annotation
    if kind in BOUND_ERRORS or kind == "string_pattern_mismatch":
        shown = repr(value) if isinstance(value, str) else float(value) if hint is float and type(value) is int else value
        return ConfigError(f"config key {key!r} must be {_rule(field)}, got {shown}")
    choices = typing.get_args(hint) if typing.get_origin(hint) is Literal else ()
    if kind == "literal_error" and isinstance(value, str):
        return ConfigError(f"config key {key!r} must be {choices_text(choices, pair=True)}, got {value!r}")
    name = type_name(type(choices[0])) if choices else type_name(hint)
    return ConfigError(f"config key {key!r} must be of type {name}, got {value!r} ({type(value).__name__})")


def _section_of(hint: Any) -> type[BaseModel] | None:
    """The section model of a field (``CMConfig``, or the items of ``list[RegulariserConfig]``), else None."""
    args = typing.get_args(hint)
    inner = args[0] if typing.get_origin(hint) is list and args else hint
    return inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None


def _rule(field: Any) -> str:
    """What a field's bounds ask, e.g. ``≥ 0 and finite``, ``in [0, 1)``, ``> 0 (the learning rate ...)``."""
    extra = field.json_schema_extra or {}
    if "rule" in extra:
        return extra["rule"]
    lo = next(((f"[{m.ge}", f"≥ {m.ge}") if isinstance(m, Ge) else (f"({m.gt}", f"> {m.gt}")
               for m in field.metadata if isinstance(m, (Ge, Gt))), None)
    hi = next((f"{m.le}]" if isinstance(m, Le) else f"{m.lt})" for m in field.metadata if isinstance(m, (Le, Lt))), None)
    if lo and hi:
        rule = f"in {lo[0]}, {hi}"
    else:
        rule = lo[1] + (" and finite" if field.annotation is float else "")
    return rule + extra.get("note", "")

def from_dict(data: dict | None) -> Config:
    """A validated :class:`Config` from a nested mapping (missing keys take their defaults).

    The terms' names and options are checked by :func:`supercm.methods.check_terms`."""
    try:
        return Config.model_validate(data or {})
    except ValidationError as exc:
        raise _config_error(exc, Config) from None


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
